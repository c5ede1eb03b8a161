"""Rule talking_heads_weights: one GPT-2-style model's weights -> composition scores, SVD
components and their z-scores, and the mover/feeding heads (a Zarr dataset)."""

import os
import time

import torch

from residual_dynamics.inputs.models import load_model
from residual_dynamics.io.atomic import write_dataset_atomic
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.studies.talking_heads.weights import check_gpt2, weights_analysis

setup_logging(snakemake.log[0])
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(snakemake.threads)

name = snakemake.wildcards.model
loaded = load_model(name, snakemake.params.spec, device="cpu", with_head=False)
check_gpt2(loaded.model.config, snakemake.params.config_key)
start = time.perf_counter()
data = weights_analysis(
    loaded.model, name, fold_ln=snakemake.params.fold_ln, heads=snakemake.params.heads
)
data.attrs["model_source"] = loaded.source
data.attrs["seconds"] = round(time.perf_counter() - start, 2)
write_dataset_atomic(data, snakemake.output.weights, text_as_object=True)
