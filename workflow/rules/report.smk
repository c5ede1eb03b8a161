rule report:
    """One self-contained HTML page for every model and dataset."""
    input:
        stores=per_recording(f"{RESULTS}/activations/{{model}}/{{dataset}}.zarr"),
        means=per_recording(
            f"{RESULTS}/statistics/{{model}}/{{dataset}}/unit_means.zarr"
        ),
        fig1b=per_recording(
            f"{RESULTS}/figures/{{model}}/{{dataset}}/fig1b_mean_activation.png"
        ),
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
        title=config["report"]["title"],
        config=config,
        benchmarks=f"{RESULTS}/benchmarks",
    script:
        "../scripts/report.py"
