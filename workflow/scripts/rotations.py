"""Rule rotations: rotation counts of unit phase portraits against nulls (Fig. 2)."""

from residual_dynamics.analysis.rotations import rotation_summary
from residual_dynamics.io.atomic import read_result, write_dataset_atomic
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.paper.summary import rotations_dataset

setup_logging(snakemake.log[0])
settings = snakemake.params.settings
means = read_result(snakemake.input.means)["mean"].values
result = rotation_summary(
    means,
    n_perm=settings["n_permutations"],
    n_surrogates=settings["n_surrogates"],
    seed=settings["seed"],
)
write_dataset_atomic(rotations_dataset(result), snakemake.output.rotations)
