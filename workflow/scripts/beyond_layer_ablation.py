"""Rule layer_ablation: layer deletion and adjacent swap of a causal LM, change in loss and KL per
layer with bootstrap intervals; a model that turns out not to be one is written as skipped."""

import logging

import torch

from residual_dynamics.analysis.layer_ablation import (
    LayerAblationError,
    run_layer_ablation,
    with_intervals,
)
from residual_dynamics.beyond.summary import skipped
from residual_dynamics.io.atomic import write_dataset_atomic
from residual_dynamics.io.logs import setup_logging

sm = snakemake
setup_logging(sm.log[0])
torch.set_num_threads(sm.threads)
settings = sm.params.settings
try:
    ablation = run_layer_ablation(
        model_name=sm.wildcards.model,
        model_spec=sm.params.model,
        dataset_path=sm.input.dataset,
        n_texts=settings["n_texts"],
        seed=settings["seed"],
        batch_size=settings["batch_size"],
        max_batch_tokens=settings["max_batch_tokens"],
        device=settings["device"],
    )
    ablation = with_intervals(ablation, settings["n_boot"], settings["seed"])
except LayerAblationError as error:
    # Only a Hub model's architecture is unknown before this job loads it (beyond/config.py).
    logging.getLogger(__name__).warning("layer ablation skipped: %s", error)
    ablation = skipped(str(error))
write_dataset_atomic(ablation, sm.output.ablation, text_as_object=True)
