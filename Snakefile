# The residual stream as a dynamical system: record activations of Hugging Face transformers layer
# by layer, analyse them, and reproduce the figures of "Transformer Dynamics" in one report.
# This file only wires: config, validation, the rule files, and the final targets.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# What `snakemake --report report.zip` says about the workflow, above the figures.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/extraction.smk"
# Negative-control recordings made from the stores: the nulls the claims are contrasted with.
include: "workflow/rules/controls.smk"
include: "workflow/rules/statistics.smk"
include: "workflow/rules/reduction.smk"
include: "workflow/rules/perturbation.smk"
# Summaries, claims and Figures 1-4 of the paper, from the analyses above.
include: "workflow/rules/paper.smk"
# Related studies: each switched on in config, each adding a report section.
include: "workflow/rules/studies/affine.smk"
include: "workflow/rules/studies/talking_heads.smk"
include: "workflow/rules/studies/embedding_space.smk"
# Beyond the paper: layer similarity, local dynamics (Jacobians, Lyapunov), layer deletion.
include: "workflow/rules/beyond.smk"
# Last: the report collects what the modules above registered in REPORT_SECTIONS.
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.report.output.html,
