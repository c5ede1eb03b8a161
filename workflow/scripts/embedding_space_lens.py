"""Rule embedding_space_lens: the model over a sample of texts -> logit lens, proximity to token
embeddings and the uniform-attention ablation, per position and sublayer (a Zarr group)."""

import os

import torch

from residual_dynamics.io.logs import setup_logging
from residual_dynamics.studies.embedding_space.arrays import write_arrays
from residual_dynamics.studies.embedding_space.lens import record_lens

setup_logging(snakemake.log[0])
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(snakemake.threads)

arrays, attrs = record_lens(
    model_name=snakemake.wildcards.model,
    model_spec=snakemake.params.spec,
    key=snakemake.params.config_key,
    dataset_name=snakemake.wildcards.dataset,
    dataset_path=snakemake.input.dataset,
    settings=snakemake.params.lens_settings,
)
write_arrays(snakemake.output.lens, arrays, attrs)
