rule figure_mean_activation:
    """Figure 1B: mean activation per unit and sublayer."""
    input:
        means=rules.unit_means.output.means,
    output:
        png=report(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig1b_mean_activation.png",
            caption="../report/fig1b_mean_activation.rst",
            category="Figure 1",
            subcategory="{model}",
            labels={"model": "{model}", "dataset": "{dataset}", "panel": "1B"},
        ),
        svg=f"{RESULTS}/figures/{{model}}/{{dataset}}/fig1b_mean_activation.svg",
    log:
        f"{RESULTS}/logs/figure_mean_activation/{{model}}/{{dataset}}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        dpi=config["figures"]["dpi"],
    script:
        "../scripts/figure_mean_activation.py"
