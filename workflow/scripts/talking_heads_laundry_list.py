"""Rule talking_heads_laundry_list: the Laundry List accuracy against N and the interventions on
the mover head (a Zarr dataset; marked skipped, with the reason, when the task cannot run)."""

import logging
import os

import torch

from residual_dynamics.inputs.models import context_window, load_model, load_tokenizer
from residual_dynamics.io.atomic import read_result, write_dataset_atomic
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.recording.extract import resolve_add_bos
from residual_dynamics.studies.talking_heads.laundry import (
    laundry_list_analysis,
    skipped_dataset,
    vocabulary_skip,
)
from residual_dynamics.studies.talking_heads.weights import check_gpt2

setup_logging(snakemake.log[0])
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(snakemake.threads)

name = snakemake.wildcards.model
laundry_list = snakemake.params.laundry_list
weights = read_result(snakemake.input.weights)
if not laundry_list["enabled"]:
    reason = "talking_heads.laundry_list.enabled is false"
    logging.getLogger(__name__).info("Laundry List skipped: %s", reason)
    result = skipped_dataset(name, reason)
else:
    # The tokenizer first: a task it cannot encode is skipped without loading the model.
    result = vocabulary_skip(load_tokenizer(name, snakemake.params.spec), name)
if result is None:
    loaded = load_model(name, snakemake.params.spec, device=snakemake.params.device, with_head=True)
    check_gpt2(loaded.model.config, snakemake.params.config_key)
    result = laundry_list_analysis(
        loaded.model,
        loaded.tokenizer,
        weights,
        laundry_list=laundry_list,
        interventions=snakemake.params.interventions,
        model_name=name,
        add_bos=resolve_add_bos(loaded.tokenizer, snakemake.params.spec.get("add_bos", "auto")),
        max_tokens=context_window(loaded.model, loaded.tokenizer),
    )
write_dataset_atomic(result, snakemake.output.laundry, text_as_object=True)
