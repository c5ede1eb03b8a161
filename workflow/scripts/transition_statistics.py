"""Rule transition_statistics: correlations, cosine and velocity across sublayers (Fig. 1C-1F)."""

from residual_dynamics.analysis.cluster import job_client
from residual_dynamics.analysis.transitions import transition_statistics
from residual_dynamics.io.atomic import write_dataset_atomic
from residual_dynamics.io.logs import setup_logging


def main(sm) -> None:
    setup_logging(sm.log[0])
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
