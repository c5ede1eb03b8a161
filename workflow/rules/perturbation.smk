# Perturbations that re-enter the model (Figure 4D): teleports in PC space, noise and swaps, per
# model and dataset (the PCA basis comes from that dataset's recording).


rule perturb:
    """Teleports, Gaussian noise and swaps at chosen layers; the rest of the model runs from the
    cached state at that layer."""
    input:
        store=rules.merge_shards.output.store,
        pca=rules.pca.output.pca,
        dataset=rules.prepare_dataset.output.parquet,
        model=model_files,
    output:
        perturbation=directory(
            f"{RESULTS}/reduction/{{model}}/{{dataset}}/perturbation.zarr"
        ),
    log:
        f"{RESULTS}/logs/perturb/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/perturb/{{model}}--{{dataset}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=8000,
    params:
        model=model_spec,
        settings=config["perturbation"],
        include_final=config["extraction"]["include_final"],
    script:
        "../scripts/perturb.py"
