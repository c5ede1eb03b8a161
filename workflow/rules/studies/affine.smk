# Affine recurrences in a small GPT (Bhargav & Gu, arXiv 2410.17438): copying in layer 0 and
# negative-similarity heads in the last layer, measured on held-out (a, b). Switched on with
# affine.enabled; adds one report section.
# Its config checks run in validate_config (studies/affine/config.py); its code is in
# workflow/residual_dynamics/studies/affine/ (analysis, verdicts, figures, section).
from residual_dynamics.studies.affine.figures import FIGURES as AFFINE_FIGURES

AFFINE = config["affine"]
AFFINE_DIR = f"{RESULTS}/affine"


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
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
    params:
        spec=model_spec,
        dataset=AFFINE["dataset"],
        task=lambda w: config["datasets"][AFFINE["dataset"]]["task"],
        n_sequences=AFFINE["n_sequences"],
        min_position=AFFINE["min_position"],
        device=AFFINE["device"],
    script:
        "../../scripts/affine_analysis.py"


rule affine_section:
    """The module's figures and report section (verdicts on the paper's two claims)."""
    input:
        analyses=expand(rules.affine_analysis.output.analysis, model=AFFINE["models"]),
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
        verdicts=f"{AFFINE_DIR}/verdicts.json",
    log:
        f"{RESULTS}/logs/affine_section.log",
    conda:
        "../../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        models=AFFINE["models"],
        formats=config["figures"]["formats"],
        dpi=config["figures"]["dpi"],
    script:
        "../../scripts/affine_section.py"


REPORT_SECTIONS += if_enabled(AFFINE, rules.affine_section.output.manifest)
