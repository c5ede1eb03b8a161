"""Rule train_model: a `train:` model spec and its dataset -> results/models/{model}/."""

import os
from pathlib import Path

from residual_dynamics.inputs import datasets
from residual_dynamics.inputs.training import train_model
from residual_dynamics.io.logs import setup_logging

setup_logging(snakemake.log[0])
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

frame, _ = datasets.read_dataset(snakemake.input.data)
train_model(
    name=snakemake.wildcards.model,
    spec=snakemake.params.spec,
    data_spec=snakemake.params.data_spec,
    texts=frame["text"].tolist(),
    out_dir=Path(snakemake.output.model).parent,
    checkpoint_dir=snakemake.params.checkpoints,
    threads=snakemake.threads,
)
