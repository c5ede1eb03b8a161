"""Rule summary: the numbers of Figures 1 and 2 (summary.json) and of Figures 3 and 4
(reduction_summary.json), each in one JSON."""

from residual_dynamics.io.atomic import read_result, write_json
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.summary import build_summary, reduction_summary

sm = snakemake
setup_logging(sm.log[0])
write_json(
    sm.output.summary,
    build_summary(
        read_result(sm.input.means),
        read_result(sm.input.stats),
        read_result(sm.input.mi),
        read_result(sm.input.rotations),
    ),
)
# The CAE's and the perturbations' inputs are one-path lists, empty for a control recording.
write_json(
    sm.output.reduction,
    reduction_summary(
        read_result(sm.input.pca),
        read_result(sm.input.cae),
        read_result(sm.input.perturbation),
    ),
)
