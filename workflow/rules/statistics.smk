rule transition_statistics:
    """Mean activation per unit and sublayer (Figure 1B), then per-unit correlations, per-sample
    cosine and velocity (Figures 1C-1F) in one Dask pass: one job, one start-up, per store.
    """
    input:
        store=rules.merge_shards.output.store,
    output:
        means=directory(f"{RESULTS}/statistics/{{model}}/{{dataset}}/unit_means.zarr"),
        stats=directory(f"{RESULTS}/statistics/{{model}}/{{dataset}}/transitions.zarr"),
    log:
        f"{RESULTS}/logs/transition_statistics/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/transition_statistics/{{model}}--{{dataset}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=8000,
    params:
        sublayers=config["analysis"]["sublayers"],
        statistics=config["statistics"],
        dask=config["dask"],
        verdicts=config["verdicts"],
    script:
        "../scripts/transition_statistics.py"


rule mutual_information:
    """Per-unit mutual information between consecutive sublayers (Figures 1G, 1H): KDE, copula
    KDE, Gaussian-copula MI and KSG, with per-pair flags (constant, saturated, outlier).
    """
    input:
        store=rules.merge_shards.output.store,
    output:
        mi=directory(
            f"{RESULTS}/statistics/{{model}}/{{dataset}}/mutual_information.zarr"
        ),
    log:
        f"{RESULTS}/logs/mutual_information/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/mutual_information/{{model}}--{{dataset}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=8000,
    params:
        sublayers=config["analysis"]["sublayers"],
        settings=config["mutual_information"],
        verdicts=config["verdicts"],
    script:
        "../scripts/mutual_information.py"


rule rotations:
    """Rotation counts of each unit's phase portrait against the pair-shuffle and surrogate
    nulls (Figure 2)."""
    input:
        means=rules.transition_statistics.output.means,
    output:
        rotations=directory(
            f"{RESULTS}/statistics/{{model}}/{{dataset}}/rotations.zarr"
        ),
    log:
        f"{RESULTS}/logs/rotations/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/rotations/{{model}}--{{dataset}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        settings=config["rotations"],
    script:
        "../scripts/rotations.py"
