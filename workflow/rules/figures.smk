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
        reading=config["statistics"]["correlation_reading"],
    script:
        "../scripts/figure_2.py"


rule comparison_figure:
    """Across models: every recording's per-transition curves on one depth-normalised axis."""
    input:
        summaries=per_recording(
            f"{RESULTS}/statistics/{{model}}/{{dataset}}/summary.json"
        ),
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
        config=config,
        dpi=config["figures"]["dpi"],
        formats=config["figures"]["formats"],
    script:
        "../scripts/comparison_figure.py"
