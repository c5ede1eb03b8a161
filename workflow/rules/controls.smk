# Negative-control recordings (the verdicts' nulls): stores of the same shape synthesised from a
# recorded store (analysis/controls.py), named {dataset}--{control}. The statistics, MI, rotation
# and PCA rules analyse them as they do recordings; paper.smk's claims rule contrasts each claim
# with them.


rule control_store:
    """A matched random walk (or constant-step walk, or white noise) made from a recorded store:
    each unit's start and step statistics kept, the dynamics destroyed."""
    input:
        store=f"{RESULTS}/activations/{{model}}/{{dataset}}.zarr",
    output:
        store=directory(
            f"{RESULTS}/activations/{{model}}/{{dataset}}--{{control}}.zarr"
        ),
    log:
        f"{RESULTS}/logs/control_store/{{model}}/{{dataset}}--{{control}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/control_store/{{model}}--{{dataset}}--{{control}}.tsv"
    wildcard_constraints:
        dataset=RECORDED_DATASET,
        control="random_walk|constant_walk|white_noise",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        seed=config["verdicts"]["seed"],
    script:
        "../scripts/control_store.py"
