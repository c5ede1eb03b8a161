"""Rule extract_activations: one shard of a dataset through one model -> a shard store."""

import os

import torch

from residual_dynamics.extract import record_activations
from residual_dynamics.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
# Models come from packages, local paths or the user's Hub cache; never block on the network here.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(snakemake.threads)  # noqa: F821

record_activations(
    model_name=snakemake.wildcards.model,  # noqa: F821
    model_spec=snakemake.params.spec,  # noqa: F821
    dataset_name=snakemake.wildcards.dataset,  # noqa: F821
    dataset_path=snakemake.input.dataset,  # noqa: F821
    out_path=snakemake.output.store,  # noqa: F821
    extraction=snakemake.params.extraction,  # noqa: F821
    shard=int(snakemake.wildcards.shard),  # noqa: F821
    n_shards=snakemake.params.n_shards,  # noqa: F821
)
