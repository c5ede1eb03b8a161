"""Rule embedding_space_concepts: the HellaSwag concept-similarity test of one model."""

import os

import torch

from residual_dynamics.io.atomic import write_json
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.studies.embedding_space.concepts import run_concept_similarity

setup_logging(snakemake.log[0])
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(snakemake.threads)

result = run_concept_similarity(
    model_name=snakemake.wildcards.model,
    model_spec=snakemake.params.spec,
    key=snakemake.params.config_key,
    settings=snakemake.params.concept_settings,
    device=snakemake.params.device,
)
write_json(snakemake.output.json, result)
