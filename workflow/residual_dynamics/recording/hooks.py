"""Where the residual stream is read in each architecture family.

The paper records, per decoder layer l, the residual stream at the input of the pre-attention
norm (``attn{l}``) and at the input of the pre-MLP norm (``mlp{l}``), interleaved as
attn0, mlp0, attn1, ... . Every family is one row of ``ARCHITECTURES``: where its blocks live
and which module's *input* is the pre-MLP state. Adding a family is adding a row.

Points are read with forward pre-hooks (the input of a module), so nothing about the model's own
forward changes, and the selected token positions are gathered on the device inside the hook so
full (batch, seq, d) tensors are never kept.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import nn

from residual_dynamics.recording.architectures import (  # noqa: F401 (re-exported)
    ARCHITECTURES,
    Architecture,
    UnsupportedArchitectureError,
    architecture_for,
    sublayer_names,
)


def first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    return kwargs["hidden_states"]


def _output_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


class ResidualRecorder:
    """Context manager that records the residual stream at every sublayer of a model.

    ``select`` maps a (batch, seq, d) tensor to the rows to keep, shape (rows, d); it runs on the
    device inside the hook. After a forward pass, ``take()`` returns (rows, n_sublayers, d).
    """

    def __init__(self, model: nn.Module, include_final: bool = True, first_layer: int = 0):
        self.model = model
        base = model.base_model
        self.arch = architecture_for(model.config)
        self.layers = operator.attrgetter(self.arch.layers)(base)
        self.include_final = include_final
        self.names = sublayer_names(len(self.layers), self.arch, include_final)
        # Re-entering the model at a layer: only the points from that layer on are recorded,
        # and take() returns those rows (names[self.first_index:]).
        self.first_layer = first_layer
        self.first_index = first_layer * (1 if self.arch.mid is None else 2)
        self._select: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._captured: list[torch.Tensor | None] = [None] * len(self.names)
        self._handles: list = []

    def _pre_hook(self, index: int):
        def hook(_module, args, kwargs):
            self._captured[index] = self._select(first_tensor(args, kwargs))

        return hook

    def _post_hook(self, index: int):
        def hook(_module, _args, _kwargs, output):
            self._captured[index] = self._select(_output_tensor(output))

        return hook

    def __enter__(self) -> ResidualRecorder:
        index = self.first_index
        for block in self.layers[self.first_layer :]:
            self._handles.append(
                block.register_forward_pre_hook(self._pre_hook(index), with_kwargs=True)
            )
            index += 1
            if self.arch.mid is not None:
                mid = operator.attrgetter(self.arch.mid)(block)
                self._handles.append(
                    mid.register_forward_pre_hook(self._pre_hook(index), with_kwargs=True)
                )
                index += 1
        if self.include_final:
            # The residual stream after the last block: the block's output (the input of the
            # final norm in pre-norm models).
            self._handles.append(
                self.layers[-1].register_forward_hook(self._post_hook(index), with_kwargs=True)
            )
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def set_selector(self, select: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._select = select
        self._captured = [None] * len(self.names)

    def take(self) -> torch.Tensor:
        captured = self._captured[self.first_index :]
        names = self.names[self.first_index :]
        missing = [n for n, t in zip(names, captured, strict=True) if t is None]
        if missing:
            raise RuntimeError(
                f"hook points not reached in the forward pass: {missing[:4]}; the architecture "
                "row in hooks.ARCHITECTURES does not match this model"
            )
        stacked = torch.stack(captured, dim=1)  # type: ignore[arg-type]
        self._captured = [None] * len(self.names)
        return stacked


def architecture_attrs(model) -> dict:
    """What a store records of the model's architecture (its attributes)."""
    arch = architecture_for(model.config)
    return {
        "architecture": model.config.model_type,
        "norm": arch.norm,
        "architecture_note": arch.note,
        "n_layers": int(model.config.num_hidden_layers),
        "d_model": int(model.config.hidden_size),
    }
