rule prepare_dataset:
    """Texts -> results/data/{dataset}.parquet: filtered, sampled with a seed, hashed."""
    input:
        parent=parent_dataset,
    output:
        parquet=f"{RESULTS}/data/{{dataset}}.parquet",
    params:
        spec=dataset_spec,
    log:
        f"{RESULTS}/logs/prepare_dataset/{{dataset}}.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/prepare_dataset.py"
