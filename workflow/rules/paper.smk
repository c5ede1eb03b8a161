# The paper's numbers and figures (the library's paper/ room): per recording, the summaries of
# Figures 1-2 and 3-4 that the report and the claims read, the panels of Figures 1-4, and the
# cross-model comparison. Needs the analysis stages (statistics, reduction, perturbation) above it.


rule summary:
    """The numbers of Figures 1 and 2, and of Figures 3 and 4, in two JSON files that the report
    and the claims read (one job: reading results is most of either's cost)."""
    input:
        means=rules.transition_statistics.output.means,
        stats=rules.transition_statistics.output.stats,
        mi=rules.mutual_information.output.mi,
        rotations=rules.rotations.output.rotations,
        pca=rules.pca.output.pca,
        cae=model_analysis(config["cae"], rules.train_cae.output.cae),
        perturbation=model_analysis(
            config["perturbation"], rules.perturb.output.perturbation
        ),
    output:
        summary=f"{RESULTS}/summaries/{{model}}/{{dataset}}/summary.json",
        reduction=f"{RESULTS}/summaries/{{model}}/{{dataset}}/reduction_summary.json",
    log:
        f"{RESULTS}/logs/summary/{{model}}/{{dataset}}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/summary.py"


rule claims:
    """Every claim's verdict on every recording, as a contrast with its controls (untrained twin,
    negative-control recordings) with bootstrap intervals: results/report/claims.json.
    """
    input:
        summaries=per_recording(
            rules.summary.output.summary, RECORDINGS + CONTROL_RECORDINGS
        ),
        reductions=per_recording(
            rules.summary.output.reduction, RECORDINGS + CONTROL_RECORDINGS
        ),
    output:
        claims=f"{RESULTS}/report/claims.json",
    log:
        f"{RESULTS}/logs/claims.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        recordings=RECORDINGS,
        analysed=RECORDINGS + CONTROL_RECORDINGS,
        models=config["models"],
        datasets=config["datasets"],
    script:
        "../scripts/claims.py"


rule figures:
    """Figures 1-4 of one recording, every panel in one job (drawing is seconds; starting a
    Python with matplotlib is most of a job's cost): 1B-1H density, continuity, velocity and
    information; 2A-2C phase portraits and rotation counts; 3B-3D the CAE; 4A-4C PCA; 4D
    teleports and 4E recovery per layer.
    """
    input:
        means=rules.transition_statistics.output.means,
        stats=rules.transition_statistics.output.stats,
        mi=rules.mutual_information.output.mi,
        rotations=rules.rotations.output.rotations,
        pca=rules.pca.output.pca,
        cae=if_enabled(config["cae"], rules.train_cae.output.cae),
        perturbation=if_enabled(
            config["perturbation"], rules.perturb.output.perturbation
        ),
    output:
        **{panel: panel_file(panel) for panel in PANELS},
    log:
        f"{RESULTS}/logs/figures/{{model}}/{{dataset}}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        dpi=config["figures"]["dpi"],
        formats=config["figures"]["formats"],
        reading=config["statistics"]["correlation_reading"],
        label=lambda w: f"{w.model} on {w.dataset}",
    script:
        "../scripts/figures.py"


rule comparison_figure:
    """Across models: every recording's per-transition curves on one depth-normalised axis."""
    input:
        summaries=per_recording(rules.summary.output.summary),
    output:
        png=report(
            f"{RESULTS}/figures/comparison/curves.png",
            caption="../report/comparison.rst",
            category="Across models",
            labels={"panel": "per-transition curves, depth normalised"},
        ),
    log:
        f"{RESULTS}/logs/comparison_figure.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        recordings=RECORDINGS,
        models=config["models"],
        datasets=config["datasets"],
        dpi=config["figures"]["dpi"],
        formats=config["figures"]["formats"],
    script:
        "../scripts/comparison_figure.py"
