# The paper's numbers and figures (the library's paper/ room): per recording, the summaries of
# Figures 1-2 and 3-4 that the report and the claims read, the panels of Figures 1-4, and the
# cross-model comparison. Needs the analysis stages (statistics, reduction, perturbation) above it.


rule summary:
    """The numbers of Figures 1 and 2 in one JSON, which the report reads."""
    input:
        means=rules.unit_means.output.means,
        stats=rules.transition_statistics.output.stats,
        mi=rules.mutual_information.output.mi,
        rotations=rules.rotations.output.rotations,
    output:
        summary=f"{RESULTS}/summaries/{{model}}/{{dataset}}/summary.json",
    log:
        f"{RESULTS}/logs/summary/{{model}}/{{dataset}}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/summary.py"


rule reduction_summary:
    """The numbers of Figures 3 and 4 in one JSON, which the report reads."""
    input:
        pca=rules.pca.output.pca,
        cae=model_analysis(config["cae"], rules.train_cae.output.cae),
        perturbation=model_analysis(
            config["perturbation"], rules.perturb.output.perturbation
        ),
    output:
        summary=f"{RESULTS}/summaries/{{model}}/{{dataset}}/reduction_summary.json",
    log:
        f"{RESULTS}/logs/reduction_summary/{{model}}/{{dataset}}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/reduction_summary.py"


rule claims:
    """Every claim's verdict on every recording, as a contrast with its controls (untrained twin,
    negative-control recordings) with bootstrap intervals: results/report/claims.json.
    """
    input:
        summaries=per_recording(
            rules.summary.output.summary, RECORDINGS + CONTROL_RECORDINGS
        ),
        reductions=per_recording(
            rules.reduction_summary.output.summary, RECORDINGS + CONTROL_RECORDINGS
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


rule figure_1:
    """Figure 1B-1H: density, continuity, velocity and information across sublayers."""
    input:
        means=rules.unit_means.output.means,
        stats=rules.transition_statistics.output.stats,
        mi=rules.mutual_information.output.mi,
    output:
        fig1b=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig1b.png",
            caption="../report/fig1b.rst",
            category="Figure 1",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "1B"},
        ),
        fig1c=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig1c.png",
            caption="../report/fig1c.rst",
            category="Figure 1",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "1C"},
        ),
        fig1d=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig1d.png",
            caption="../report/fig1d.rst",
            category="Figure 1",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "1D"},
        ),
        fig1e=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig1e.png",
            caption="../report/fig1e.rst",
            category="Figure 1",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "1E"},
        ),
        fig1f=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig1f.png",
            caption="../report/fig1f.rst",
            category="Figure 1",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "1F"},
        ),
        fig1g=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig1g.png",
            caption="../report/fig1g.rst",
            category="Figure 1",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "1G"},
        ),
        fig1h=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig1h.png",
            caption="../report/fig1h.rst",
            category="Figure 1",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "1H"},
        ),
    log:
        f"{RESULTS}/logs/figure_1/{{model}}/{{dataset}}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        dpi=config["figures"]["dpi"],
        formats=config["figures"]["formats"],
        reading=config["statistics"]["correlation_reading"],
    script:
        "../scripts/figure_1.py"


rule figure_2:
    """Figure 2A-2C: unit phase portraits and their rotation counts against nulls."""
    input:
        means=rules.unit_means.output.means,
        rotations=rules.rotations.output.rotations,
    output:
        fig2a=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig2a.png",
            caption="../report/fig2a.rst",
            category="Figure 2",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "2A"},
        ),
        fig2b=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig2b.png",
            caption="../report/fig2b.rst",
            category="Figure 2",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "2B"},
        ),
        fig2c=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig2c.png",
            caption="../report/fig2c.rst",
            category="Figure 2",
            subcategory="{model} · {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "2C"},
        ),
    log:
        f"{RESULTS}/logs/figure_2/{{model}}/{{dataset}}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        dpi=config["figures"]["dpi"],
        formats=config["figures"]["formats"],
    script:
        "../scripts/figure_2.py"


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
        label=lambda w: f"{w.model} on {w.dataset}",
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
        label=lambda w: f"{w.model} on {w.dataset}",
    script:
        "../scripts/figure_4.py"


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
        label=lambda w: f"{w.model} on {w.dataset}",
    script:
        "../scripts/figure_4d.py"


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
