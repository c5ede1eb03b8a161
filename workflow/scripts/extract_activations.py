"""Rule extract_activations: one shard of a dataset through one model -> a shard store."""

import os

import torch

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.recording.extract import record_activations

setup_logging(snakemake.log[0])
# Models come from packages, local paths or the user's Hub cache; never block on the network here.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(snakemake.threads)

record_activations(
    model_name=snakemake.wildcards.model,
    model_spec=snakemake.params.spec,
    dataset_name=snakemake.wildcards.dataset,
    dataset_path=snakemake.input.dataset,
    out_path=snakemake.output.store,
    extraction=snakemake.params.extraction,
    shard=int(snakemake.wildcards.shard),
    n_shards=snakemake.params.n_shards,
)
