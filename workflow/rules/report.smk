PANELS = [
    "fig1b",
    "fig1c",
    "fig1d",
    "fig1e",
    "fig1f",
    "fig1g",
    "fig1h",
    "fig2a",
    "fig2b",
    "fig2c",
    *(["fig3b", "fig3c", "fig3d"] if config["cae"]["enabled"] else []),
    "fig4a",
    "fig4b",
    "fig4c",
    *(["fig4d", "fig4e"] if config["perturbation"]["enabled"] else []),
]


rule report:
    """One self-contained HTML page for every model and dataset."""
    input:
        stores=per_recording(f"{RESULTS}/activations/{{model}}/{{dataset}}.zarr"),
        means=per_recording(
            f"{RESULTS}/statistics/{{model}}/{{dataset}}/unit_means.zarr"
        ),
        summaries=per_recording(
            f"{RESULTS}/statistics/{{model}}/{{dataset}}/summary.json"
        ),
        reductions=per_recording(
            f"{RESULTS}/statistics/{{model}}/{{dataset}}/reduction_summary.json"
        ),
        figures=[
            per_recording(f"{RESULTS}/figures/{{model}}/{{dataset}}/{panel}.png")
            for panel in PANELS
        ],
        sections=REPORT_SECTIONS,
        comparison=rules.comparison_figure.output.png,
    output:
        html=f"{RESULTS}/report/index.html",
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        recordings=RECORDINGS,
        panels=PANELS,
        title=config["report"]["title"],
        config=config,
        benchmarks=f"{RESULTS}/benchmarks",
    script:
        "../scripts/report.py"
