"""Rule train_cae: the compressing autoencoder of Figure 3, trained and evaluated on test samples.

Checkpoints are written every epoch beside the output, so a killed job resumes where it stopped.
"""

from pathlib import Path

import torch

from residual_dynamics.analysis.cae import CaeSettings, evaluate_cae, train_cae
from residual_dynamics.io.atomic import move_into_place, partial_path, write_dataset_atomic
from residual_dynamics.io.logs import setup_logging

sm = snakemake
setup_logging(sm.log[0])
torch.set_num_threads(sm.threads)
settings = CaeSettings(**{k: v for k, v in sm.params.settings.items() if k != "enabled"})
checkpoint = Path(sm.params.checkpoint)
trained = train_cae(sm.input.store, settings, sublayers=sm.params.sublayers, checkpoint=checkpoint)
result = evaluate_cae(sm.input.store, trained, settings)
tmp = partial_path(Path(sm.output.weights))
torch.save(
    {
        "model": trained.model.state_dict(),
        "widths": trained.model.widths,
        "mean": trained.normaliser.mean,
        "scale": trained.normaliser.scale,
    },
    tmp,
)
move_into_place(tmp, Path(sm.output.weights))
write_dataset_atomic(result, sm.output.cae)
checkpoint.unlink(missing_ok=True)
