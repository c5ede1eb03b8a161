"""Rule perturb: teleports, noise and swaps at chosen layers, re-entering the model (Figure 4D)."""

import logging

import torch

from residual_dynamics.analysis.perturbation import recovery_summary, run_perturbations
from residual_dynamics.io.atomic import read_result, write_dataset_atomic
from residual_dynamics.io.logs import setup_logging

sm = snakemake
setup_logging(sm.log[0])
torch.set_num_threads(sm.threads)
result = run_perturbations(
    model_name=sm.wildcards.model,
    model_spec=sm.params.model,
    store_path=sm.input.store,
    pca=read_result(sm.input.pca),
    dataset_path=sm.input.dataset,
    settings=sm.params.settings,
    include_final=sm.params.include_final,
)
write_dataset_atomic(result, sm.output.perturbation)
summary = recovery_summary(result)
remaining = summary["verdict"]["remaining"]
if remaining is not None and remaining["mid"] is not None:
    logging.getLogger("perturb").info(
        "remaining distance over %d texts: mid %.3f %s, lower edge %.3f (layer %d) %s, "
        "contrast %.3f %s; recovers %s, mid lower %s",
        summary["verdict"]["n_texts"],
        remaining["mid"],
        [round(x, 3) for x in remaining["mid_ci"]],
        remaining["edge"],
        remaining["edge_layer"],
        [round(x, 3) for x in remaining["edge_ci"]],
        remaining["contrast"],
        [round(x, 3) for x in remaining["contrast_ci"]],
        remaining["recovers"],
        remaining["mid_lower"],
    )
