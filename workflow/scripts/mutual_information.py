"""Rule mutual_information: per-unit MI (KDE, copula KDE, GCMI, KSG) between consecutive
sublayers, with per-pair flags (Fig. 1G, 1H)."""

import torch

from residual_dynamics.analysis.mutual_information import transition_mutual_information
from residual_dynamics.io.atomic import write_dataset_atomic
from residual_dynamics.io.logs import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
settings = snakemake.params.settings
mi = transition_mutual_information(
    snakemake.input.store,
    sublayers=snakemake.params.sublayers,
    estimator=settings["estimator"],
    grid=settings["grid"],
    bandwidth=settings["bandwidth"],
    pad=settings["pad"],
    n_samples=settings["n_samples"],
    ksg_units=settings["ksg_units"],
    gcmi_bias_correction=settings["gcmi_bias_correction"],
    outlier_z=settings["outlier_z"],
    outlier_nats=settings["outlier_nats"],
    device=settings["device"],
    seed=settings["seed"],
    bootstrap=snakemake.params.verdicts["mi_bootstrap"],
    bootstrap_units=snakemake.params.verdicts["mi_units"],
)
write_dataset_atomic(mi, snakemake.output.mi)
