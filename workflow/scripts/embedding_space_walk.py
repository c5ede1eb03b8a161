"""Rule embedding_space_walk: the encoding walk (attention and MLP steps, path length,
displacement) of every row of an activation store."""

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.studies.embedding_space.arrays import write_arrays
from residual_dynamics.studies.embedding_space.walk import store_walk

setup_logging(snakemake.log[0])
arrays, attrs = store_walk(snakemake.input.store)
write_arrays(snakemake.output.walk, arrays, attrs)
