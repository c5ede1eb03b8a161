# Affine recurrences in a small GPT (Bhargav & Gu, arXiv 2410.17438): copying in layer 0 and
# negative-similarity heads in the last layer, measured on held-out (a, b). Switched on with
# affine.enabled; adds one report section.
# Its config checks run in validate_config (studies/affine/config.py).
AFFINE = config["affine"]
AFFINE_MODELS = AFFINE["models"] if AFFINE["enabled"] else []

AFFINE_DIR = f"{RESULTS}/affine"
AFFINE_FIGURES = ["accuracy", "offsets", "lens", "similarity", "ablation"]


rule affine_analysis:
    """One model on the held-out task sequences: accuracy per position, layer-0 copying,
    last-layer negative similarity, ablations -> a JSON of numbers."""
    input:
        model=model_files,
        dataset=lambda w: f"{RESULTS}/data/{AFFINE['dataset']}.parquet",
    output:
        analysis=f"{AFFINE_DIR}/{{model}}/analysis.json",
    log:
        f"{RESULTS}/logs/affine_analysis/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/affine_analysis/{{model}}.tsv"
    conda:
        "../../../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        spec=model_spec,
        settings=AFFINE,
        task=lambda w: config["datasets"][AFFINE["dataset"]]["task"],
    script:
        "../../scripts/affine_analysis.py"


rule affine_section:
    """The module's figures and report section (verdicts on the paper's two claims)."""
    input:
        analyses=expand(f"{AFFINE_DIR}/{{model}}/analysis.json", model=AFFINE_MODELS),
    output:
        **{
            key: report(
                f"{AFFINE_DIR}/figures/{key}.png",
                caption=f"../../report/affine_{key}.rst",
                category="Affine recurrences",
                labels={"figure": key},
            )
            for key in AFFINE_FIGURES
        },
        manifest=f"{AFFINE_DIR}/section.json",
    log:
        f"{RESULTS}/logs/affine_section.log",
    conda:
        "../../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        models=AFFINE["models"],
        figures=AFFINE_FIGURES,
        formats=config["figures"]["formats"],
        dpi=config["figures"]["dpi"],
    script:
        "../../scripts/affine_section.py"


REPORT_SECTIONS += if_enabled(AFFINE, rules.affine_section.output.manifest)
