"""Rule merge_shards: shard stores -> one activation store."""

from pathlib import Path

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.io.store import merge_shards

setup_logging(snakemake.log[0])
merge_shards([Path(p) for p in snakemake.input.shards], Path(snakemake.output.store))
