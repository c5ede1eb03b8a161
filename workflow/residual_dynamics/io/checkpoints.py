"""Loading checkpoint files that may not be ours: tensors and plain values only, never code.

A checkpoint is a pickle, and unpickling can run arbitrary code. Every checkpoint this workflow
reads goes through ``load_tensors``, which uses ``torch.load(weights_only=True)``: anything but
tensors, numbers, strings and containers of them is refused before it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path


class UntrustedCheckpointError(RuntimeError):
    """A checkpoint file holds more than tensors and plain values."""


def load_tensors(path: Path | str, map_location="cpu"):
    """The contents of a checkpoint written by this workflow; a clear error for anything else."""
    import torch

    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except pickle.UnpicklingError as error:
        raise UntrustedCheckpointError(
            f"{path} is not a checkpoint this workflow wrote: it holds objects other than tensors "
            "and plain values, and loading it could run code, so it was not loaded "
            f"({str(error).splitlines()[-1][:200]}). Delete the file and rerun: training starts "
            "over from the beginning."
        ) from None
