# The reduced-dimensional half of the paper: global PCA (Figure 4A-4C) and the compressing
# autoencoder (Figure 3), per model and dataset.


rule pca:
    """Global PCA over all samples and sublayers, out of core with Dask (Figure 4A-4C)."""
    input:
        store=rules.merge_shards.output.store,
    output:
        pca=directory(f"{RESULTS}/reduction/{{model}}/{{dataset}}/pca.zarr"),
    log:
        f"{RESULTS}/logs/pca/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pca/{{model}}--{{dataset}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=8000,
    params:
        sublayers=config["analysis"]["sublayers"],
        settings=config["pca"],
        statistics=config["statistics"],
        dask=config["dask"],
    script:
        "../scripts/pca.py"


rule train_cae:
    """The compressing autoencoder (Figure 3): trained with early stopping, evaluated on held-out
    samples; resumes from its checkpoint when a job was killed."""
    input:
        store=rules.merge_shards.output.store,
    output:
        cae=directory(f"{RESULTS}/reduction/{{model}}/{{dataset}}/cae.zarr"),
        weights=f"{RESULTS}/reduction/{{model}}/{{dataset}}/cae.pt",
    log:
        f"{RESULTS}/logs/train_cae/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_cae/{{model}}--{{dataset}}.tsv"
    conda:
        "../../envs/torch.yaml"
    # One thread: the CAE's small matrices gain nothing from more on a CPU, and two threads
    # beside other jobs oversubscribe the cores (measured: 15x slower per epoch). On a GPU node
    # the profile may raise it.
    threads: 1
    resources:
        mem_mb=8000,
    params:
        sublayers=config["analysis"]["sublayers"],
        settings=config["cae"],
        checkpoint=f"{RESULTS}/reduction/{{model}}/{{dataset}}/cae_checkpoint.pt",
    script:
        "../scripts/train_cae.py"
