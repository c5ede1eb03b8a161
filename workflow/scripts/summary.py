"""Rule summary: the numbers of Figures 1 and 2 in one JSON."""

from residual_dynamics.io.atomic import read_result, write_json
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.summary import build_summary

setup_logging(snakemake.log[0])
summary = build_summary(
    read_result(snakemake.input.means),
    read_result(snakemake.input.stats),
    read_result(snakemake.input.mi),
    read_result(snakemake.input.rotations),
)
write_json(snakemake.output.summary, summary)
