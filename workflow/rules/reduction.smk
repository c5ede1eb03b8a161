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
    threads: 2
    resources:
        mem_mb=8000,
    params:
        sublayers=config["analysis"]["sublayers"],
        settings=config["pca"],
        dask=config["statistics"],
        cluster=config["dask"],
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


rule figure_3:
    """Figure 3B-3D: CAE latent trajectories, latent steps, reconstruction explained variance."""
    input:
        cae=rules.train_cae.output.cae,
    output:
        fig3b=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig3b.png",
            caption="../report/fig3b.rst",
            category="Figure 3",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "3B"},
        ),
        fig3c=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig3c.png",
            caption="../report/fig3c.rst",
            category="Figure 3",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "3C"},
        ),
        fig3d=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig3d.png",
            caption="../report/fig3d.rst",
            category="Figure 3",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "3D"},
        ),
    log:
        f"{RESULTS}/logs/figure_3/{{model}}/{{dataset}}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        dpi=config["figures"]["dpi"],
        formats=config["figures"]["formats"],
    script:
        "../scripts/figure_3.py"


rule figure_4:
    """Figure 4A-4C: trajectories in PC space and explained variance per sublayer."""
    input:
        pca=rules.pca.output.pca,
    output:
        fig4a=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig4a.png",
            caption="../report/fig4a.rst",
            category="Figure 4",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "4A"},
        ),
        fig4b=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig4b.png",
            caption="../report/fig4b.rst",
            category="Figure 4",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "4B"},
        ),
        fig4c=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig4c.png",
            caption="../report/fig4c.rst",
            category="Figure 4",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "4C"},
        ),
    log:
        f"{RESULTS}/logs/figure_4/{{model}}/{{dataset}}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        dpi=config["figures"]["dpi"],
        formats=config["figures"]["formats"],
    script:
        "../scripts/figure_4.py"
