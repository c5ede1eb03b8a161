"""Rule reduction_summary: the numbers of Figures 3 and 4 in one JSON for the report."""

from residual_dynamics.io.atomic import read_result, write_json
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.summary import reduction_summary

sm = snakemake
setup_logging(sm.log[0])
write_json(
    sm.output.summary,
    reduction_summary(
        read_result(sm.input.pca),
        read_result(sm.input.cae),
        read_result(sm.input.perturbation),
    ),
)
