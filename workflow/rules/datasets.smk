rule prepare_dataset:
    """Texts -> results/data/{dataset}.parquet: filtered, sampled with a seed, hashed."""
    input:
        parent=parent_dataset,
    output:
        parquet=f"{RESULTS}/data/{{dataset}}.parquet",
    log:
        f"{RESULTS}/logs/prepare_dataset/{{dataset}}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        spec=dataset_spec,
    script:
        "../scripts/prepare_dataset.py"
