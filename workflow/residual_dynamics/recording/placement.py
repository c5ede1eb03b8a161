"""Where a model's weights go: one device when they fit, else spread over the visible GPUs (and, at
worst, host memory) with ``device_map="auto"``."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def weight_bytes(name: str, spec: dict) -> int:
    """Bytes of the (base) model's weights in the spec's dtype, from its config alone: the model
    is built on the meta device, so nothing is downloaded but config.json and nothing allocated."""
    from transformers import AutoConfig, AutoModel

    from residual_dynamics.inputs.models import DTYPES, model_location

    location, revision, _ = model_location(name, spec)
    trust = spec.get("trust_remote_code", False)
    config = AutoConfig.from_pretrained(location, revision=revision, trust_remote_code=trust)
    with torch.device("meta"):
        model = AutoModel.from_config(
            config, dtype=DTYPES[spec.get("dtype", "float32")], trust_remote_code=trust
        )
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def fits_on_one_device(need_bytes: int, free_bytes: int, headroom: float = 0.8) -> bool:
    """Whether weights of ``need_bytes`` leave room for activations on a device with
    ``free_bytes`` free: they may take at most ``headroom`` of it."""
    return need_bytes <= headroom * free_bytes


def choose_device_map(name: str, spec: dict, requested: str = "auto") -> str | None:
    """``"auto"`` when extraction runs on a GPU and the model's weights do not fit on it (so
    accelerate spreads the layers over every visible GPU, then host memory); None otherwise, and
    the model is moved whole to the one device."""
    from residual_dynamics.inputs.models import resolve_device

    device = resolve_device(requested)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    need = weight_bytes(name, spec)
    if fits_on_one_device(need, free):
        return None
    log.info(
        "models.%s: %.1f GiB of weights do not fit on %s (%.1f GiB free): device_map='auto' "
        "over %d GPU(s)",
        name,
        need / 2**30,
        device,
        free / 2**30,
        torch.cuda.device_count(),
    )
    return "auto"
