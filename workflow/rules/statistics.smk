rule unit_means:
    """Mean activation per unit and sublayer over samples (Figure 1B), read lazily with Dask."""
    input:
        store=rules.merge_shards.output.store,
    output:
        means=directory(f"{RESULTS}/statistics/{{model}}/{{dataset}}/unit_means.zarr"),
    log:
        f"{RESULTS}/logs/unit_means/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/unit_means/{{model}}--{{dataset}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        sublayers=config["analysis"]["sublayers"],
    script:
        "../scripts/unit_means.py"
