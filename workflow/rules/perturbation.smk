# Perturbations that re-enter the model (Figure 4D): teleports in PC space, noise and swaps, per
# model and dataset (the PCA basis comes from that dataset's recording), and the summary of
# Figures 3 and 4 that the report reads.


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
    threads: 2
    resources:
        mem_mb=8000,
    params:
        model=model_spec,
        settings=config["perturbation"],
        include_final=config["extraction"]["include_final"],
    script:
        "../scripts/perturb.py"


rule figure_4d:
    """Figure 4D: where teleported points go; 4E: recovery per layer (beyond the paper)."""
    input:
        pca=rules.pca.output.pca,
        perturbation=rules.perturb.output.perturbation,
    output:
        fig4d=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig4d.png",
            caption="../report/fig4d.rst",
            category="Figure 4",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "4D"},
        ),
        fig4e=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig4e.png",
            caption="../report/fig4e.rst",
            category="Figure 4",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "4E"},
        ),
    log:
        f"{RESULTS}/logs/figure_4d/{{model}}/{{dataset}}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        dpi=config["figures"]["dpi"],
        formats=config["figures"]["formats"],
    script:
        "../scripts/figure_4d.py"


rule reduction_summary:
    """The numbers of Figures 3 and 4 in one JSON, which the report reads."""
    input:
        pca=rules.pca.output.pca,
        cae=if_enabled(config["cae"], rules.train_cae.output.cae),
        perturbation=if_enabled(
            config["perturbation"], rules.perturb.output.perturbation
        ),
    output:
        summary=f"{RESULTS}/statistics/{{model}}/{{dataset}}/reduction_summary.json",
    log:
        f"{RESULTS}/logs/reduction_summary/{{model}}/{{dataset}}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/reduction_summary.py"
