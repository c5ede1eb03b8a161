"""Rule perturb: teleports, noise and swaps at chosen layers, re-entering the model (Figure 4D)."""

import torch
import xarray as xr

from residual_dynamics.analysis.perturbation import run_perturbations
from residual_dynamics.io.atomic import write_dataset_atomic
from residual_dynamics.io.logs import setup_logging

sm = snakemake
setup_logging(sm.log[0])
torch.set_num_threads(sm.threads)
result = run_perturbations(
    model_name=sm.wildcards.model,
    model_spec=sm.params.model,
    store_path=sm.input.store,
    pca=xr.open_zarr(sm.input.pca).load(),
    dataset_path=sm.input.dataset,
    settings=sm.params.settings,
    include_final=sm.params.include_final,
)
write_dataset_atomic(result, sm.output.perturbation)
