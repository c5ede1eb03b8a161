# Talking Heads (related-analyses B, Merullo, Eickhoff & Pavlick arXiv 2406.09519): weights-only
# composition between heads and the SVD components of each OV, then the Laundry List task and
# interventions on the mover head. GPT-2-style models only. Switched on with talking_heads.enabled.
# Its config checks run in validate_config (studies/talking_heads/config.py); its code is in
# workflow/residual_dynamics/studies/talking_heads/ (one module per rule: weights, laundry,
# figures, section).
TALKING_HEADS = config["talking_heads"]
TALKING_HEADS_MODELS = TALKING_HEADS["models"] if TALKING_HEADS["enabled"] else []
TALKING_HEADS_DIR = f"{RESULTS}/talking_heads"
TALKING_HEADS_FIGURES = f"{RESULTS}/figures/{{model}}/talking_heads"


rule talking_heads_weights:
    """Weights only: composition scores of every head pair, SVD components of each OV scored
    against every later head with their nulls, and the mover/feeding heads."""
    input:
        model=model_files,
    output:
        weights=directory(f"{TALKING_HEADS_DIR}/{{model}}/weights.zarr"),
    log:
        f"{RESULTS}/logs/talking_heads_weights/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/talking_heads_weights/{{model}}.tsv"
    conda:
        "../../../envs/torch.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
    params:
        spec=model_spec,
        config_key=lambda w: model_key(config, "talking_heads", w.model),
        fold=TALKING_HEADS["fold"],
        heads=TALKING_HEADS["heads"],
        nulls=TALKING_HEADS["nulls"],
    script:
        "../../scripts/talking_heads_weights.py"


rule talking_heads_laundry_list:
    """The Laundry List accuracy against N, component removal, steering and the 3-D grid
    (skipped, with the reason, when the tokenizer lacks the object words)."""
    input:
        weights=rules.talking_heads_weights.output.weights,
        model=model_files,
    output:
        laundry=directory(f"{TALKING_HEADS_DIR}/{{model}}/laundry_list.zarr"),
    log:
        f"{RESULTS}/logs/talking_heads_laundry_list/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/talking_heads_laundry_list/{{model}}.tsv"
    conda:
        "../../../envs/torch.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
    params:
        spec=model_spec,
        config_key=lambda w: model_key(config, "talking_heads", w.model),
        device=TALKING_HEADS["device"],
        laundry_list=TALKING_HEADS["laundry_list"],
        interventions=TALKING_HEADS["interventions"],
    script:
        "../../scripts/talking_heads_laundry_list.py"


rule talking_heads_figures:
    """Composition heat maps, component scores, accuracy against N, interventions, 3-D grid."""
    input:
        weights=rules.talking_heads_weights.output.weights,
        laundry=rules.talking_heads_laundry_list.output.laundry,
    output:
        composition=report(
            f"{TALKING_HEADS_FIGURES}/composition.png",
            caption="../../report/talking_heads_composition.rst",
            category="Talking Heads",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "composition"},
        ),
        components=report(
            f"{TALKING_HEADS_FIGURES}/components.png",
            caption="../../report/talking_heads_components.rst",
            category="Talking Heads",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "components"},
        ),
        laundry=report(
            f"{TALKING_HEADS_FIGURES}/laundry.png",
            caption="../../report/talking_heads_laundry.rst",
            category="Talking Heads",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "laundry"},
        ),
        interventions=report(
            f"{TALKING_HEADS_FIGURES}/interventions.png",
            caption="../../report/talking_heads_interventions.rst",
            category="Talking Heads",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "interventions"},
        ),
        grid=report(
            f"{TALKING_HEADS_FIGURES}/grid.png",
            caption="../../report/talking_heads_grid.rst",
            category="Talking Heads",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "grid"},
        ),
    log:
        f"{RESULTS}/logs/talking_heads_figures/{{model}}.log",
    conda:
        "../../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        formats=config["figures"]["formats"],
        dpi=config["figures"]["dpi"],
    script:
        "../../scripts/talking_heads_figures.py"


rule talking_heads_section:
    """The module's report section: figures with the paper's numbers beside ours, tables."""
    input:
        weights=expand(
            rules.talking_heads_weights.output.weights, model=TALKING_HEADS_MODELS
        ),
        laundry_list=expand(
            rules.talking_heads_laundry_list.output.laundry, model=TALKING_HEADS_MODELS
        ),
        composition=expand(
            rules.talking_heads_figures.output.composition, model=TALKING_HEADS_MODELS
        ),
        components=expand(
            rules.talking_heads_figures.output.components, model=TALKING_HEADS_MODELS
        ),
        laundry=expand(
            rules.talking_heads_figures.output.laundry, model=TALKING_HEADS_MODELS
        ),
        interventions=expand(
            rules.talking_heads_figures.output.interventions,
            model=TALKING_HEADS_MODELS,
        ),
        grid=expand(rules.talking_heads_figures.output.grid, model=TALKING_HEADS_MODELS),
    output:
        manifest=f"{TALKING_HEADS_DIR}/section.json",
    log:
        f"{RESULTS}/logs/talking_heads_section.log",
    conda:
        "../../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        models=TALKING_HEADS_MODELS,
        n_outliers=TALKING_HEADS["n_outliers"],
    script:
        "../../scripts/talking_heads_section.py"


REPORT_SECTIONS += if_enabled(
    TALKING_HEADS, rules.talking_heads_section.output.manifest
)
