"""Rule local_dynamics: Jacobian spectra of the sublayer maps and Lyapunov exponents of a seeded
sample of texts, re-entering the model."""

import torch

from residual_dynamics.analysis.local_dynamics import run_local_dynamics
from residual_dynamics.beyond.config import too_wide
from residual_dynamics.beyond.summary import skipped
from residual_dynamics.io.atomic import write_dataset_atomic
from residual_dynamics.io.logs import setup_logging
from residual_dynamics.io.store import open_store

sm = snakemake
setup_logging(sm.log[0])
torch.set_num_threads(sm.threads)
settings = sm.params.settings
# A Hub model's width is known only from its store (the plan reads the others' configs).
reason = too_wide(open_store(sm.input.store).attrs.get("d_model"), settings["max_d"])
if reason is not None:
    dynamics = skipped(reason)
else:
    dynamics = run_local_dynamics(
        model_name=sm.wildcards.model,
        model_spec=sm.params.model,
        store_path=sm.input.store,
        dataset_path=sm.input.dataset,
        settings=settings,
        include_final=sm.params.include_final,
    )
write_dataset_atomic(dynamics, sm.output.dynamics, text_as_object=True)
