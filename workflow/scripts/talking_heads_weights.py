"""Rule talking_heads_weights: one GPT-2-style model's weights -> composition scores, SVD
components, their z-scores and p against the nulls (rotations, untrained twin), and the
mover/feeding heads (a Zarr dataset)."""

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
spec = snakemake.params.spec
nulls = snakemake.params.nulls
loaded = load_model(name, spec, device="cpu", with_head=False)
check_gpt2(loaded.model.config, snakemake.params.config_key)
twin = None
if nulls["untrained_twin"]:
    # The untrained twin as `init: random` draws it: same architecture, the model's initialiser.
    twin_spec = {**spec, "init": "random", "init_seed": nulls["twin_seed"]}
    twin = load_model(f"{name} (untrained twin)", twin_spec, device="cpu", with_head=False).model
start = time.perf_counter()
data = weights_analysis(
    loaded.model,
    name,
    fold=snakemake.params.fold,
    heads=snakemake.params.heads,
    nulls=nulls,
    twin=twin,
)
data.attrs["model_source"] = loaded.source
data.attrs["seconds"] = round(time.perf_counter() - start, 2)
write_dataset_atomic(data, snakemake.output.weights, text_as_object=True)
