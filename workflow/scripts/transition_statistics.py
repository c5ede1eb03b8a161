"""Rule transition_statistics: mean activation per unit and sublayer (Fig. 1B), then
correlations, cosine and velocity across sublayers (Fig. 1C-1F)."""

from residual_dynamics.analysis.cluster import job_client
from residual_dynamics.analysis.transitions import transition_statistics
from residual_dynamics.analysis.unit_means import unit_means
from residual_dynamics.io.atomic import write_dataset_atomic
from residual_dynamics.io.logs import setup_logging


def main(sm) -> None:
    setup_logging(sm.log[0])
    # First, and on the job's own threads: it refuses a store with non-finite values (naming the
    # store and how to redo it) before the Dask cluster starts.
    means = unit_means(sm.input.store, sublayers=sm.params.sublayers, threads=sm.threads)
    write_dataset_atomic(means, sm.output.means)
    with job_client(
        sm.threads, statistics=sm.params.statistics, dask=sm.params.dask, store=sm.input.store
    ):
        stats = transition_statistics(
            sm.input.store,
            sublayers=sm.params.sublayers,
            block_rows=sm.params.statistics["block_rows"],
            bootstrap=sm.params.verdicts["bootstrap"],
            seed=sm.params.verdicts["seed"],
        )
    write_dataset_atomic(stats, sm.output.stats)


# Dask's worker processes are spawned and re-import this file as a module: only the job's own
# process runs it.
if __name__ == "__main__":
    main(snakemake)
