# Movement through embedding space (related-analyses A, Singh arXiv 2308.10874): the logit lens
# and proximity to token embeddings per sublayer (the model run again over a sample of texts),
# the encoding walk (read from the activation stores), the uniform-attention ablation and the
# HellaSwag concept-similarity test. Switched on with embedding_space.enabled.
# Its config checks run in validate_config (studies/embedding_space/config.py); its code is in
# workflow/residual_dynamics/studies/embedding_space/ (lens, walk, arrays, concepts, summary,
# figures, section).
from residual_dynamics.studies.embedding_space import config as _embedding_space

EMBEDDING_SPACE = config["embedding_space"]
EMBEDDING_SPACE_PAIRS = (
    _embedding_space.module_pairs(config) if EMBEDDING_SPACE["enabled"] else []
)
EMBEDDING_SPACE_DIR = f"{RESULTS}/embedding_space"
EMBEDDING_SPACE_FIGURES = f"{RESULTS}/figures/{{model}}/{{dataset}}/embedding_space"


rule embedding_space_lens:
    """Logit lens, proximity to token embeddings and uniform-attention loss, per position."""
    input:
        dataset=rules.prepare_dataset.output.parquet,
        model=model_files,
    output:
        lens=directory(f"{EMBEDDING_SPACE_DIR}/{{model}}/{{dataset}}/lens.zarr"),
    log:
        f"{RESULTS}/logs/embedding_space_lens/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embedding_space_lens/{{model}}--{{dataset}}.tsv"
    conda:
        "../../../envs/torch.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
    params:
        spec=model_spec,
        config_key=lambda w: model_key(config, "embedding_space", w.model),
        lens_settings={
            key: EMBEDDING_SPACE[key]
            for key in (
                "n_texts",
                "seed",
                "device",
                "positions",
                "max_positions_per_text",
                "spearman_positions",
                "batch_size",
                "uniform_attention",
            )
        },
    script:
        "../../scripts/embedding_space_lens.py"


rule embedding_space_walk:
    """The encoding walk of every row of the activation store."""
    input:
        store=rules.merge_shards.output.store,
    output:
        walk=directory(f"{EMBEDDING_SPACE_DIR}/{{model}}/{{dataset}}/walk.zarr"),
    log:
        f"{RESULTS}/logs/embedding_space_walk/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embedding_space_walk/{{model}}--{{dataset}}.tsv"
    conda:
        "../../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../../scripts/embedding_space_walk.py"


rule embedding_space_figures:
    """True-token rank, proximity to token embeddings and the encoding walk, per recording."""
    input:
        lens=rules.embedding_space_lens.output.lens,
        walk=rules.embedding_space_walk.output.walk,
    output:
        rank=report(
            f"{EMBEDDING_SPACE_FIGURES}/rank.png",
            caption="../../report/embedding_space_rank.rst",
            category="Embedding space",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "figure": "rank"},
        ),
        proximity=report(
            f"{EMBEDDING_SPACE_FIGURES}/proximity.png",
            caption="../../report/embedding_space_proximity.rst",
            category="Embedding space",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "figure": "proximity"},
        ),
        walk=report(
            f"{EMBEDDING_SPACE_FIGURES}/walk.png",
            caption="../../report/embedding_space_walk.rst",
            category="Embedding space",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "figure": "walk"},
        ),
    log:
        f"{RESULTS}/logs/embedding_space_figures/{{model}}/{{dataset}}.log",
    conda:
        "../../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        label=lambda w: _embedding_space.model_label(config, w.model, w.dataset),
        formats=config["figures"]["formats"],
        dpi=config["figures"]["dpi"],
    script:
        "../../scripts/embedding_space_figures.py"


rule embedding_space_concepts:
    """HellaSwag concept similarity against the log-likelihood baseline, for one model."""
    input:
        model=model_files,
    output:
        json=f"{EMBEDDING_SPACE_DIR}/{{model}}/concept_similarity.json",
    log:
        f"{RESULTS}/logs/embedding_space_concepts/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embedding_space_concepts/{{model}}.tsv"
    conda:
        "../../../envs/torch.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
    params:
        spec=model_spec,
        config_key=lambda w: model_key(config, "embedding_space", w.model),
        concept_settings=EMBEDDING_SPACE["concept_similarity"],
        device=EMBEDDING_SPACE["device"],
    script:
        "../../scripts/embedding_space_concepts.py"


rule embedding_space_section:
    """The module's report section: tables, figures and captions with the reference's numbers."""
    input:
        # Each recording's results and figures, named <what>--<model>--<dataset>: the section
        # script looks them up by these names.
        **{
            f"{what}--{model}--{dataset}": expand(
                pattern, model=model, dataset=dataset
            )[0]
            for model, dataset in EMBEDDING_SPACE_PAIRS
            for what, pattern in (
                ("lens", rules.embedding_space_lens.output.lens),
                ("walk", rules.embedding_space_walk.output.walk),
                ("rank_png", rules.embedding_space_figures.output.rank),
                ("proximity_png", rules.embedding_space_figures.output.proximity),
                ("walk_png", rules.embedding_space_figures.output.walk),
            )
        },
        concepts=(
            expand(
                rules.embedding_space_concepts.output.json,
                model=EMBEDDING_SPACE["models"],
            )
            if EMBEDDING_SPACE["concept_similarity"]["enabled"]
            else []
        ),
    output:
        manifest=f"{EMBEDDING_SPACE_DIR}/section.json",
        summary=f"{EMBEDDING_SPACE_DIR}/summary.json",
    log:
        f"{RESULTS}/logs/embedding_space_section.log",
    conda:
        "../../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        pairs=EMBEDDING_SPACE_PAIRS,
    script:
        "../../scripts/embedding_space_section.py"


REPORT_SECTIONS += if_enabled(
    EMBEDDING_SPACE, rules.embedding_space_section.output.manifest
)
