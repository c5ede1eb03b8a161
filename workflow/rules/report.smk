rule report:
    """One self-contained HTML page for every model and dataset."""
    input:
        **{
            panel: per_recording(
                f"{RESULTS}/figures/{{model}}/{{dataset}}/{panel}.png"
            )
            for panel in PANELS
        },
        stores=per_recording(rules.merge_shards.output.store),
        means=per_recording(rules.transition_statistics.output.means),
        summaries=per_recording(rules.summary.output.summary),
        reductions=per_recording(rules.summary.output.reduction),
        # The negative-control recordings' summaries, for the controls tables.
        control_summaries=per_recording(
            rules.summary.output.summary, CONTROL_RECORDINGS
        ),
        control_reductions=per_recording(
            rules.summary.output.reduction, CONTROL_RECORDINGS
        ),
        claims=rules.claims.output.claims,
        # One named input per panel (fig1b, ...), each listing the recordings in RECORDINGS' order.
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
        control_recordings=CONTROL_RECORDINGS,
        panels=PANELS,
        title=config["report"]["title"],
        models=config["models"],
        datasets=config["datasets"],
        # The page shows the whole validated config (collapsed) beside the settings that shape
        # the numbers, so this rule is the one that takes all of it.
        run_config=config,
        benchmarks=f"{RESULTS}/benchmarks",
    script:
        "../scripts/report.py"
