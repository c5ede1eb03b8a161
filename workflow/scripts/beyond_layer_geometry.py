"""Rule layer_geometry: CKA between sublayers, intrinsic dimension and participation ratio, read
out of core from the store with Dask."""

from residual_dynamics.analysis.cluster import job_client
from residual_dynamics.analysis.layer_geometry import layer_geometry
from residual_dynamics.io.atomic import write_dataset_atomic
from residual_dynamics.io.logs import setup_logging


def main(sm) -> None:
    setup_logging(sm.log[0])
    settings = sm.params.settings
    with job_client(
        sm.threads, statistics=sm.params.statistics, dask=sm.params.dask, store=sm.input.store
    ):
        geometry = layer_geometry(
            sm.input.store,
            sublayers=sm.params.sublayers,
            hsic=settings["cka"],
            max_samples=settings["max_samples"],
            seed=settings["seed"],
        )
    write_dataset_atomic(geometry, sm.output.geometry, text_as_object=True)


# Dask's worker processes are spawned and re-import this file as a module: only the job's own
# process runs it.
if __name__ == "__main__":
    main(snakemake)
