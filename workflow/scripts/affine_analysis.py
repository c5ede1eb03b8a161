"""Rule affine_analysis: one GPT-2-style model on the held-out task sequences -> analysis.json."""

import numpy as np
import torch

from residual_dynamics.inputs import datasets
from residual_dynamics.inputs.models import load_model
from residual_dynamics.inputs.tasks import AffineTask, texts_to_sequences
from residual_dynamics.io.atomic import write_json
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.studies.affine import analysis as affine

setup_logging(snakemake.log[0])
params = snakemake.params

frame, _ = datasets.read_dataset(snakemake.input.dataset)
values = texts_to_sequences(frame["text"])
if params.n_sequences is not None:
    values = values[: params.n_sequences]
task = AffineTask.from_spec(params.task, f"datasets.{params.dataset}.task")
# Sequences of the training pairs (seeded apart from the dataset's): memorised or learnt?
train_values, _ = task.generate(task.split()[0], len(values), np.random.default_rng([7, 17]))
loaded = load_model(snakemake.wildcards.model, params.spec, params.device, with_head=True)
# A small model's matrices are too small to split over threads (config.schema.training_threads).
torch.set_num_threads(1 if loaded.model.config.n_embd <= 256 else snakemake.threads)
result = affine.analyse_model(
    loaded.model.cpu(),
    loaded.tokenizer,
    values,
    # Exact per sequence: the posterior over every (a, b) of the task's prior given the prefix.
    bayes=task.bayes_accuracy(values),
    min_position=params.min_position,
    train_values=train_values,
)
result["model"] = snakemake.wildcards.model
result["source"] = loaded.source
write_json(snakemake.output.analysis, result, indent=None)
