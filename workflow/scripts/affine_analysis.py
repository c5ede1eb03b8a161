"""Rule affine_analysis: one GPT-2-style model on the held-out task sequences -> analysis.json."""

import torch

from residual_dynamics.inputs import datasets
from residual_dynamics.inputs.models import load_model
from residual_dynamics.inputs.tasks import AffineTask, texts_to_sequences
from residual_dynamics.io.atomic import write_json
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.studies.affine import analysis as affine

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params = snakemake.params

frame, _ = datasets.read_dataset(snakemake.input.dataset)
values = texts_to_sequences(frame["text"])
if params.n_sequences is not None:
    values = values[: params.n_sequences]
task = AffineTask.from_spec(params.task, f"datasets.{params.dataset}.task")
loaded = load_model(snakemake.wildcards.model, params.spec, params.device, with_head=True)
result = affine.analyse_model(
    loaded.model.cpu(),
    loaded.tokenizer,
    values,
    bayes=task.bayes_accuracy(values[:200]),
    min_position=params.min_position,
)
result["model"] = snakemake.wildcards.model
result["source"] = loaded.source
write_json(snakemake.output.analysis, result, indent=None)
