"""Rule transition_statistics: correlations, cosine and velocity across sublayers (Fig. 1C-1F)."""

from residual_dynamics.analysis.transitions import dask_client, transition_statistics
from residual_dynamics.io.atomic import write_dataset_atomic
from residual_dynamics.io.logs import setup_logging


def main(sm) -> None:
    setup_logging(sm.log[0])
    settings = sm.params.dask
    with dask_client(
        threads=sm.threads,
        address=settings["scheduler_address"],
        memory_limit=settings["memory_limit"],
        settings=sm.params.cluster,
    ):
        stats = transition_statistics(
            sm.input.store,
            sublayers=sm.params.sublayers,
            block_rows=settings["block_rows"],
        )
    write_dataset_atomic(stats, sm.output.stats)


# Dask's worker processes are spawned and re-import this file as a module: only the job's own
# process runs it.
if __name__ == "__main__":
    main(snakemake)
