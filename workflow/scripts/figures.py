"""Rule figures: every panel of Figures 1-4 of one recording (PNG plus the other configured
formats), in one job."""

import functools

from residual_dynamics.io.atomic import read_result
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.figures import recording_figures

setup_logging(snakemake.log[0])


# Each analysis read once, whole (the CAE's and the perturbations' inputs are one-path lists).
load = functools.cache(lambda name: read_result(snakemake.input[name]))
# The rule's params are the drawing settings (dpi, formats, reading, label).
recording_figures(load, outputs=dict(snakemake.output.items()), **dict(snakemake.params.items()))
