# Beyond the paper (issue 18): layer similarity and dimension from the stores, Jacobians of the
# sublayer maps and Lyapunov exponents (the model again), layer deletion and swap (causal LMs), on
# every recording of `runs` beside its untrained twin. Switched on with beyond.enabled.
# Its config checks run in validate_config (beyond/config.py); its code is in
# workflow/residual_dynamics/beyond/ (plan, summary, figures, section) and analysis/
# (layer_geometry, jacobians, local_dynamics, layer_ablation).
from residual_dynamics.beyond import config as beyond_plan

BEYOND = config["beyond"]
BEYOND_PANELS = beyond_plan.FIGURES
BEYOND_DIR = f"{RESULTS}/beyond/{{model}}/{{dataset}}"
BEYOND_FIGURE_DIR = f"{RESULTS}/figures/{{model}}/{{dataset}}/beyond"
BEYOND_RECORDINGS = beyond_plan.beyond_recordings(config) if BEYOND["enabled"] else []
# Recordings drawn with their twin beside them: every one that is not another's untrained twin.
BEYOND_DRAWN = beyond_plan.figure_recordings(config) if BEYOND["enabled"] else []
# Models no wider than beyond.jacobians.max_d get the Jacobians; the others, with the reason.
BEYOND_LINEARISED, BEYOND_NOT_LINEARISED = (
    beyond_plan.dynamics_plan(config, Path.cwd()) if BEYOND["enabled"] else ([], {})
)
# Causal LMs with a head (from the spec or a local config.json); the others, with the reason.
BEYOND_ABLATED, BEYOND_NOT_ABLATED = (
    beyond_plan.ablation_plan(config, Path.cwd()) if BEYOND["enabled"] else ([], {})
)


rule layer_geometry:
    """Linear CKA between every pair of sublayers, TwoNN intrinsic dimension and participation
    ratio per sublayer, out of core from the store with Dask."""
    input:
        store=rules.merge_shards.output.store,
    output:
        geometry=directory(f"{BEYOND_DIR}/layer_geometry.zarr"),
    log:
        f"{RESULTS}/logs/layer_geometry/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/layer_geometry/{{model}}--{{dataset}}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
    params:
        sublayers=config["analysis"]["sublayers"],
        settings=BEYOND["geometry"],
        statistics=config["statistics"],
        dask=config["dask"],
    script:
        "../scripts/beyond_layer_geometry.py"


rule local_dynamics:
    """Jacobians of every sublayer map at the recorded token of a seeded sample of texts
    (singular values, eigenvalues, non-normality) and the texts' finite-time Lyapunov exponents,
    re-entering the model."""
    input:
        store=rules.merge_shards.output.store,
        dataset=rules.prepare_dataset.output.parquet,
        model=model_files,
    output:
        dynamics=directory(f"{BEYOND_DIR}/local_dynamics.zarr"),
    log:
        f"{RESULTS}/logs/local_dynamics/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/local_dynamics/{{model}}--{{dataset}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
    params:
        model=model_spec,
        settings=BEYOND["jacobians"],
        include_final=config["extraction"]["include_final"],
    script:
        "../scripts/beyond_local_dynamics.py"


rule layer_ablation:
    """Layer deletion and adjacent-layer swap of a causal LM: change in next-token loss and KL
    per layer on a seeded sample of the dataset's texts, with bootstrap intervals."""
    input:
        dataset=rules.prepare_dataset.output.parquet,
        model=model_files,
    output:
        ablation=directory(f"{BEYOND_DIR}/layer_ablation.zarr"),
    log:
        f"{RESULTS}/logs/layer_ablation/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/layer_ablation/{{model}}--{{dataset}}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
    params:
        model=model_spec,
        settings=BEYOND["ablation"],
    script:
        "../scripts/beyond_layer_ablation.py"


rule beyond_figures:
    """CKA, dimension, Jacobian spectra, Lyapunov exponents and layer ablation of one recording,
    its untrained twin beside it."""
    input:
        geometry=beyond_result(rules.layer_geometry.output.geometry),
        dynamics=beyond_result(rules.local_dynamics.output.dynamics, BEYOND_LINEARISED),
        ablation=beyond_result(rules.layer_ablation.output.ablation, BEYOND_ABLATED),
        # The untrained twin's, where it has one (beyond/config.py twin_of).
        twin_geometry=beyond_result(rules.layer_geometry.output.geometry, twin=True),
        twin_dynamics=beyond_result(
            rules.local_dynamics.output.dynamics, BEYOND_LINEARISED, twin=True
        ),
        twin_ablation=beyond_result(
            rules.layer_ablation.output.ablation, BEYOND_ABLATED, twin=True
        ),
    output:
        **{
            key: report(
                f"{BEYOND_FIGURE_DIR}/{key}.png",
                caption=f"../report/beyond_{key}.rst",
                category="Beyond the paper",
                subcategory="{model} · {dataset}",
                labels={"model": "{model}", "dataset": "{dataset}", "figure": key},
            )
            for key in BEYOND_PANELS
        },
    log:
        f"{RESULTS}/logs/beyond_figures/{{model}}/{{dataset}}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        twin=beyond_twin,
        # Why an analysis did not run, by "model on dataset" (the figure says it).
        not_linearised=BEYOND_NOT_LINEARISED,
        not_ablated=BEYOND_NOT_ABLATED,
        n_boot=BEYOND["jacobians"]["n_boot"],
        seed=BEYOND["jacobians"]["seed"],
        formats=config["figures"]["formats"],
        dpi=config["figures"]["dpi"],
    script:
        "../scripts/beyond_figures.py"


rule beyond_section:
    """The report section "Beyond the paper": captions with the measured numbers, a table of
    every recording, the verdicts on the claims it tests."""
    input:
        # Recording by recording (params.drawn's order), each with every panel.
        figures=[
            f"{BEYOND_FIGURE_DIR}/{key}.png".format(model=m, dataset=d)
            for m, d in BEYOND_DRAWN
            for key in BEYOND_PANELS
        ],
        geometry=pairs_of(rules.layer_geometry.output.geometry, BEYOND_RECORDINGS),
        dynamics=pairs_of(rules.local_dynamics.output.dynamics, BEYOND_LINEARISED),
        ablation=pairs_of(rules.layer_ablation.output.ablation, BEYOND_ABLATED),
    output:
        manifest=f"{RESULTS}/beyond/section.json",
        verdicts=f"{RESULTS}/beyond/verdicts.json",
    log:
        f"{RESULTS}/logs/beyond_section.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        recordings=BEYOND_RECORDINGS,
        linearised=BEYOND_LINEARISED,
        not_linearised=BEYOND_NOT_LINEARISED,
        ablated=BEYOND_ABLATED,
        not_ablated=BEYOND_NOT_ABLATED,
        drawn=[(m, d, beyond_plan.twin_of(config, m, d)) for m, d in BEYOND_DRAWN],
        panels=list(BEYOND_PANELS),
        n_boot=BEYOND["jacobians"]["n_boot"],
        seed=BEYOND["jacobians"]["seed"],
    script:
        "../scripts/beyond_section.py"


REPORT_SECTIONS += if_enabled(BEYOND, rules.beyond_section.output.manifest)
