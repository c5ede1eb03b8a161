"""Rule control_store: a negative-control recording (matched random walk, constant-step walk or
white noise) synthesised from a recorded activation store."""

from residual_dynamics.analysis.controls import synthesise_control
from residual_dynamics.io.logs import setup_logging

setup_logging(snakemake.log[0])
synthesise_control(
    snakemake.input.store,
    snakemake.output.store,
    kind=snakemake.wildcards.control,
    seed=int(snakemake.params.seed),
    # Optional: rows read at a time (rounded to whole chunks); the store is the same either way.
    block_rows=getattr(snakemake.params, "block_rows", None),
)
