"""Rule pca: global PCA of a store over all samples and sublayers (Figure 4A-4C), out of core."""

from residual_dynamics.analysis.cluster import job_client
from residual_dynamics.analysis.pca import pca_fit
from residual_dynamics.io.atomic import write_dataset_atomic
from residual_dynamics.io.logs import setup_logging


def main(sm) -> None:
    setup_logging(sm.log[0])
    settings = sm.params.settings
    with job_client(
        sm.threads, statistics=sm.params.statistics, dask=sm.params.dask, store=sm.input.store
    ):
        pca = pca_fit(
            sm.input.store,
            sublayers=sm.params.sublayers,
            n_components=settings["n_components"],
            n_projected=settings["n_projected"],
            read_at_components=settings["read_at"],
            per_sublayer=settings["per_sublayer"],
            block_rows=settings["block_rows"],
        )
    write_dataset_atomic(pca, sm.output.pca)


# Dask's worker processes are spawned and re-import this file: only the job's process runs it.
if __name__ == "__main__":
    main(snakemake)
