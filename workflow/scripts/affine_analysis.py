"""Rule affine_analysis: one GPT-2-style model on the held-out task sequences -> analysis.json."""

import json

import torch

from residual_dynamics.inputs import datasets
from residual_dynamics.inputs.models import load_model
from residual_dynamics.inputs.tasks import AffineTask, texts_to_sequences
from residual_dynamics.io.atomic import write_text_atomic
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.studies.affine import analysis as affine

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
settings = snakemake.params.settings

frame, _ = datasets.read_dataset(snakemake.input.dataset)
values = texts_to_sequences(frame["text"])
if settings["n_sequences"] is not None:
    values = values[: settings["n_sequences"]]
task = AffineTask.from_spec(snakemake.params.task, f"datasets.{settings['dataset']}.task")
loaded = load_model(
    snakemake.wildcards.model, snakemake.params.spec, settings["device"], with_head=True
)
result = affine.analyse_model(
    loaded.model.cpu(),
    loaded.tokenizer,
    values,
    bayes=task.bayes_accuracy(values[:200]),
    min_position=settings["min_position"],
)
result["model"] = snakemake.wildcards.model
result["source"] = loaded.source
write_text_atomic(snakemake.output.analysis, json.dumps(result))
