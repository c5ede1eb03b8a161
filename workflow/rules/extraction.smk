rule extract_activations:
    """One shard of a dataset through one model -> a shard store (a Zarr group)."""
    input:
        dataset=rules.prepare_dataset.output.parquet,
        model=model_files,
    output:
        store=temp(
            directory(
                f"{RESULTS}/activations/{{model}}/{{dataset}}.shards/{{shard}}.zarr"
            )
        ),
    log:
        f"{RESULTS}/logs/extract_activations/{{model}}/{{dataset}}/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract_activations/{{model}}--{{dataset}}--{{shard}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=8000,
    params:
        spec=model_spec,
        extraction=config["extraction"],
        n_shards=config["extraction"]["n_shards"],
    script:
        "../scripts/extract_activations.py"


rule merge_shards:
    """Shard stores -> the activation store of the contract (chunk files hard-linked)."""
    input:
        shards=shard_stores,
    output:
        store=directory(f"{RESULTS}/activations/{{model}}/{{dataset}}.zarr"),
    log:
        f"{RESULTS}/logs/merge_shards/{{model}}/{{dataset}}.log",
    wildcard_constraints:
        # a recorded dataset: 'name--kind' stores are negative controls (controls.smk)
        dataset=RECORDED_DATASET,
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/merge_shards.py"
