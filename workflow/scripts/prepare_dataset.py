"""Rule prepare_dataset: a dataset spec -> results/data/{dataset}.parquet."""

from residual_dynamics.inputs import datasets
from residual_dynamics.io.logs import setup_logging

setup_logging(snakemake.log[0])

name = snakemake.wildcards.dataset
spec = snakemake.params.spec
parent = datasets.read_dataset(snakemake.input.parent[0])[0] if snakemake.input.parent else None
frame = datasets.prepare_dataset(name, spec, parent=parent)
datasets.write_dataset(
    frame,
    snakemake.output.parquet,
    {
        "dataset": name,
        "spec": spec,
        "seed": spec["seed"],
        "texts_hash": datasets.texts_hash(frame["text"].tolist()),
    },
)
