"""The residual stream's local dynamics: Jacobians of the sublayer maps and finite-time Lyapunov
exponents along each text's trajectory, on any model the hook table supports.

The maps. The stream is recorded at attn0, mlp0, attn1, ..., final (``hooks.sublayer_names``).
Transition t maps the state at sublayer t to the state at sublayer t + 1 at one token position p,
with every other position's state at sublayer t held where the model put it: attn_l -> mlp_l is
the attention sublayer with its residual add, mlp_l -> attn_(l+1) the MLP sublayer with its add
(in parallel-block models each transition is one whole block). For a causal model the product of
the transitions' Jacobians is the Jacobian of the many-layer map at p (later positions never feed
back into p); for BERT each factor holds the other positions at their recorded states.

Re-entry, as ``analysis.perturbation.Reentry`` does it: the text runs once and every block's
output is kept; a map at layer l swaps blocks 0..l-1 for stand-ins that return the kept output of
block l - 1 (expanded to the batch), so it costs block l alone (the forward stops, by an
exception caught here, as soon as the target state is read). Its input is written at position p
by a forward pre-hook: on block l (attention sublayer), or on the module whose input is the
pre-MLP state (MLP sublayer). The latter write is in place: that tensor is also the skip
connection's, so the MLP sublayer's residual add sees the new state too (checked against each
family's own block in the tests). Rows carry independent copies of the text, so a block of B
Jacobian-vector products is one batched ``torch.func.jvp`` (``jacobians.Linearisation``).

One token, for causal models. Position p's state depends on earlier tokens only through their
keys and values, which no map changes. So the text's pass keeps them (:class:`PrefixCache`) and a
map runs token p alone through block l: 1/S of the work (the pydoc decoder's Jacobians, 4 texts:
25 s -> 8 s). Each map is checked once to pass through the recorded trajectory this way; a family
whose cache does more than keep the earlier keys fails that and runs the whole text, as BERT always
does, and as any model does under a transformers whose cache API differs (with a warning).

Forward-mode AD is not implemented for PyTorch's fused attention kernels, so the maps run with
transformers' eager attention (:func:`eager_attention`, restored afterwards). Products run in the
model's dtype: load it in float32 (float64 in the tests); bfloat16 Jacobians carry ~1e-2 errors.

What is measured per map, and the thresholds (J formed only for d <= ``FULL_MAX_D`` = 1024,
matrix-free above), are in ``analysis.jacobians``. :func:`local_dynamics` returns an xarray
Dataset over (text, transition, k).
"""

from __future__ import annotations

import inspect
import logging
import operator
import re
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
import xarray as xr
from transformers.cache_utils import DynamicCache

from residual_dynamics.analysis.jacobians import (
    FULL_MAX_D,
    Linearisation,
    MatrixMap,
    finite_time_lyapunov,
    local_measures,
)
from residual_dynamics.analysis.perturbation import CachedBlock
from residual_dynamics.recording.hooks import ResidualRecorder, architecture_for, first_tensor

PER_TRANSITION = (
    "spectral_radius",
    "complex_share",
    "rotation_angle_mean",
    "rotation_angle_max",
    "non_normality",
    "antisymmetric_share",
    "non_normality_update",
    "antisymmetric_share_update",
    "sigma_bottom_bound",
    "lanczos_residual",
)
PER_TRANSITION_K = ("sigma_top", "sigma_bottom", "eig_modulus", "eig_angle")
_log = logging.getLogger(__name__)


class PrefixCache(DynamicCache):
    """The keys and values of the text's tokens before p, for maps that run token p alone.

    Filled by one pass of the whole text, then :meth:`freeze` cuts every layer to the first p
    tokens; from then on :meth:`update` returns those keys and values with the new rows' own
    appended (the prefix expanded to the batch) and stores nothing, so any number of maps, and
    forward-mode AD through them, share one prefix."""

    frozen = False

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if not self.frozen:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        batch = key_states.shape[0]
        keys = layer.keys.expand(batch, *layer.keys.shape[1:])
        values = layer.values.expand(batch, *layer.values.shape[1:])
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)

    def freeze(self, length: int) -> None:
        for layer in self.layers:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
        self.frozen = True


class StopForward(Exception):
    """Raised in a hook once the target state is read: the rest of the model need not run."""


@contextmanager
def eager_attention(model):
    """Run the model with eager attention (forward-mode AD needs it), then restore its own.
    Models whose attention cannot be switched after loading (Falcon) keep theirs: if a
    Jacobian-vector product then fails, load them with ``attn_implementation="eager"``."""
    current = getattr(model.config, "_attn_implementation", None)
    can_switch = getattr(model, "_can_set_attn_implementation", lambda: True)
    if current in (None, "eager") or not can_switch():
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


def block_output_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def replace_first(args: tuple, kwargs: dict, h: torch.Tensor):
    """A forward pre-hook's return value that swaps the module's first input for ``h``."""
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def transition_names(names: Sequence[str]) -> list[str]:
    return [f"{a}->{b}" for a, b in zip(names[:-1], names[1:], strict=True)]


class SublayerMaps:
    """The sublayer maps of one token sequence at one position (module docstring).

    ``states``: (S, d) the recorded states at the position, in the model's dtype; ``map(t)``:
    the callable (B, d) -> (B, d) of transition t, whose value at ``states[t]`` is
    ``states[t + 1]``; ``linearisation(t)``: its Jacobian there, as a ``Linearisation``.
    """

    def __init__(self, model, ids, position: int = -1, include_final: bool = True):
        self.model = model
        self.device = next(model.parameters()).device
        self.ids = torch.as_tensor([list(ids)], device=self.device)
        self.position = position % self.ids.shape[1]
        self.arch = architecture_for(model.config)
        self.blocks = operator.attrgetter(self.arch.layers)(model.base_model)
        recorder = ResidualRecorder(model, include_final)
        self.names = recorder.names
        self.transitions = transition_names(self.names)
        if len(self.names) < 2:
            raise ValueError("a trajectory needs at least two recorded sublayers")
        self._outputs: list = [None] * len(self.blocks)
        # A causal model's maps at p need only token p: the earlier tokens' keys and values are
        # kept from the text's pass (PrefixCache), so a map runs one token through block l.
        self.prefix = PrefixCache() if self.arch.causal else None
        # The keyword the forward takes it by, read once (every map's pass passes it).
        forward = inspect.signature(model.forward).parameters
        self._cache_name = "cache" if "cache" in forward else "past_key_values"  # renamed in 5.x
        try:
            self._text_pass(include_final)
            if self.prefix is not None:
                self.prefix.freeze(self.position)
                self._check_prefix()
        except (AttributeError, TypeError, ValueError, RuntimeError) as error:
            if self.prefix is None:
                raise
            # A transformers whose cache API differs from the one this was written for.
            _log.warning("one-token maps unavailable (%s); the maps run the whole text", error)
            self.prefix = None
            self._text_pass(include_final)

    def _text_pass(self, include_final: bool) -> None:
        """The text once: the recorded states at p and every block's output (and, with the
        prefix, the keys and values of every token)."""
        recorder = ResidualRecorder(self.model, include_final)
        handles = [
            block.register_forward_hook(self._keep_output(i)) for i, block in enumerate(self.blocks)
        ]
        try:
            with torch.no_grad(), eager_attention(self.model), recorder:
                recorder.set_selector(lambda h: h[:, self.position].detach().clone())
                self.model(input_ids=self.ids, **self._cache_kwargs())
                self.states = recorder.take()[0]
        finally:
            for handle in handles:
                handle.remove()

    def _cache_kwargs(self) -> dict:
        if self.prefix is None:
            return {"use_cache": False}
        return {"use_cache": True, self._cache_name: self.prefix}

    def _check_prefix(self) -> None:
        """The one-token maps must pass through the recorded trajectory as the whole-text maps
        do: at every transition, the one-token map's value at the recorded state must equal the
        recorded next state to within a thousandth of the sublayer's own update (plus a rounding
        floor of 1e-5 of the state's norm; 3e-2 in 16-bit dtypes). A family whose cache does more
        than keep every earlier key (a sliding window, say) fails this, and its maps run over the
        whole text instead. The floor is relative to the norm, not to the largest unit, so that
        a massive activation does not hide a wrong map in the other units."""
        floor = 1e-5 if torch.finfo(self.states.dtype).bits >= 32 else 3e-2
        with torch.no_grad():
            for t in range(len(self.transitions)):
                x, want = self.states[t], self.states[t + 1]
                got = self.map(t)(x[None].clone())[0]
                bound = 1e-3 * float((want - x).norm()) + floor * float(want.norm())
                if not float((got - want).norm()) <= bound:
                    self.prefix = None
                    return

    def _keep_output(self, index: int):
        def hook(_module, _args, output):
            if isinstance(output, torch.Tensor):
                self._outputs[index] = output.detach()
            else:
                self._outputs[index] = type(output)((output[0].detach(), *output[1:]))

        return hook

    def _kept_output(self, index: int):
        """Block ``index``'s kept output: at position p alone when the maps run one token."""
        output = self._outputs[index]
        if self.prefix is None:
            return output
        at_p = slice(self.position, self.position + 1)
        if isinstance(output, torch.Tensor):
            return output[:, at_p]
        return type(output)((output[0][:, at_p], *output[1:]))

    def _source(self, t: int) -> tuple[str, int]:
        kind, layer = re.fullmatch(r"(attn|mlp)(\d+)", self.names[t]).groups()
        return kind, int(layer)

    def map(self, t: int):
        """Transition t as a callable on (B, d) rows, B independent copies of the text."""
        kind, layer = self._source(t)
        block = self.blocks[layer]
        mid = operator.attrgetter(self.arch.mid)(block) if self.arch.mid is not None else None
        p = 0 if self.prefix is not None else self.position  # the one token, or the text's p

        def fn(x: torch.Tensor) -> torch.Tensor:
            captured = {}

            def write_block_input(_module, args, kwargs):
                h = first_tensor(args, kwargs)
                at_p = torch.arange(h.shape[1], device=h.device) == p
                return replace_first(args, kwargs, torch.where(at_p[:, None], x[:, None], h))

            def write_mid_input(_module, args, kwargs):
                # In place: the same tensor is the MLP sublayer's skip connection.
                first_tensor(args, kwargs)[:, p] = x

            def read_mid_input(_module, args, kwargs):
                captured["y"] = first_tensor(args, kwargs)[:, p]
                raise StopForward

            def read_block_output(_module, _args, _kwargs, output):
                captured["y"] = block_output_tensor(output)[:, p]
                raise StopForward

            if kind == "attn":
                handles = [
                    block.register_forward_pre_hook(
                        write_block_input, with_kwargs=True, prepend=True
                    )
                ]
            else:
                handles = [
                    mid.register_forward_pre_hook(write_mid_input, with_kwargs=True, prepend=True)
                ]
            if kind == "attn" and mid is not None:
                handles.append(mid.register_forward_pre_hook(read_mid_input, with_kwargs=True))
            else:
                handles.append(block.register_forward_hook(read_block_output, with_kwargs=True))
            try:
                self._run_from(layer, len(x))
            finally:
                for handle in handles:
                    handle.remove()
            if "y" not in captured:
                raise RuntimeError(
                    f"transition {self.transitions[t]}: the target state was never reached; the "
                    "architecture row in hooks.ARCHITECTURES does not match this model"
                )
            return captured["y"]

        return fn

    def _run_from(self, layer: int, batch: int) -> None:
        originals = list(self.blocks[:layer])
        ids = self.ids
        if self.prefix is not None:
            ids = ids[:, self.position : self.position + 1]
        try:
            for i in range(layer):
                self.blocks[i] = CachedBlock(self._kept_output(layer - 1), batch)
            with eager_attention(self.model):
                self.model(input_ids=ids.expand(batch, -1), **self._cache_kwargs())
        except StopForward:
            pass
        finally:
            for i, block in enumerate(originals):
                self.blocks[i] = block

    def linearisation(self, t: int, batch: int = 32) -> Linearisation:
        return Linearisation(self.map(t), self.states[t], batched=True, batch=batch)


def text_dynamics(
    maps: SublayerMaps,
    k: int,
    *,
    full_max_d: int = FULL_MAX_D,
    probes: int = 32,
    frame: str = "product",
    seed: int = 0,
    batch: int = 32,
    tol: float | None = None,
) -> dict[str, np.ndarray]:
    """Every measure of one text's transitions, and its Lyapunov exponents, as arrays:
    (T,) or (T, k) per map, ``lyapunov`` (k,) and ``stretch`` (T, k). Where d <= full_max_d the
    formed Jacobians are kept for the exponents (T d^2 float64: 512 MiB at d = 1024, T = 64)."""
    ops = [maps.linearisation(t, batch) for t in range(len(maps.transitions))]
    if maps.states.shape[1] <= full_max_d:
        ops = [MatrixMap(op.matrix()) for op in ops]
    per_map = []
    for op in ops:
        per_map.append(
            local_measures(op, k, full_max_d=full_max_d, probes=probes, seed=seed, tol=tol)
        )
        op.release()  # one kept graph at a time
    lyapunov = finite_time_lyapunov(ops, k, frame=frame, seed=seed, tol=tol)
    out = {name: np.array([m[name] for m in per_map], float) for name in PER_TRANSITION}
    out |= {name: np.stack([m[name] for m in per_map]) for name in PER_TRANSITION_K}
    return out | {"lyapunov": lyapunov.exponents, "stretch": lyapunov.stretch}


def choose_texts(n_available: int, n: int, seed: int) -> np.ndarray:
    """A seeded sample of ``n`` text indices (all of them when there are fewer), sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_available, min(n, n_available), replace=False))


def summarise_lyapunov(dynamics: xr.Dataset, n_boot: int = 2000, seed: int = 0) -> xr.Dataset:
    """Adds the exponents' mean and standard deviation over texts and a seeded bootstrap 95 %
    interval of the mean (over texts), per k."""
    values = dynamics["lyapunov"].values  # (text, k)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    spread = values.std(axis=0, ddof=1) if len(values) > 1 else np.full(values.shape[1], np.nan)
    return dynamics.assign(
        lyapunov_mean=("k", values.mean(axis=0)),
        lyapunov_std=("k", spread),
        lyapunov_ci_low=("k", low),
        lyapunov_ci_high=("k", high),
    )


def local_dynamics(
    model,
    token_ids: Sequence[Sequence[int]],
    *,
    text_ids: Sequence | None = None,
    k: int = 8,
    position: int = -1,
    include_final: bool = True,
    full_max_d: int = FULL_MAX_D,
    probes: int = 32,
    frame: str = "product",
    seed: int = 0,
    batch: int = 32,
    tol: float | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Jacobian spectra of every sublayer map and Lyapunov exponents, per text, over (text,
    transition, k). ``position``: the token position (negative from the end; -1 is the store's
    ``last``). ``k``: how many singular values at each end, eigenvalues and exponents.
    ``full_max_d``: the largest d whose J is formed (module docstring of analysis.jacobians).
    ``probes``: Hutchinson probes for the matrix-free Frobenius ratios. ``frame``: where the
    Lyapunov frame starts ("product": exponents are (1/T) log sigma_i of the text's product of
    Jacobians; "random": the classic QR method from a seeded frame). ``tol``: block Lanczos
    residual tolerance (default from the model's dtype). ``batch``: copies of the text per pass.
    """
    from tqdm.auto import tqdm

    if not token_ids:
        raise ValueError("local_dynamics: no texts given")
    training = model.training
    model.eval()  # dropout off: the maps must be deterministic
    rows = []
    try:
        with eager_attention(model):
            for ids in tqdm(token_ids, desc="sublayer Jacobians", disable=not progress):
                maps = SublayerMaps(model, ids, position, include_final)
                rows.append(
                    text_dynamics(
                        maps,
                        k,
                        full_max_d=full_max_d,
                        probes=probes,
                        frame=frame,
                        seed=seed,
                        batch=batch,
                        tol=tol,
                    )
                )
    finally:
        model.train(training)
    d = int(maps.states.shape[1])
    k_used = rows[0]["sigma_top"].shape[1]
    data = {
        name: (("text", "transition"), np.stack([r[name] for r in rows])) for name in PER_TRANSITION
    }
    for name in (*PER_TRANSITION_K, "stretch"):
        data[name] = (("text", "transition", "k"), np.stack([r[name] for r in rows]))
    data["lyapunov"] = (("text", "k"), np.stack([r["lyapunov"] for r in rows]))
    sources, targets = maps.names[:-1], maps.names[1:]
    dynamics = xr.Dataset(
        data,
        coords={
            "text": list(text_ids) if text_ids is not None else np.arange(len(token_ids)),
            "transition": maps.transitions,
            "source": ("transition", sources),
            "target": ("transition", targets),
            "k": np.arange(1, k_used + 1),
        },
        attrs={
            "architecture": model.config.model_type,
            "norm": maps.arch.norm,
            "d_model": d,
            "dtype": str(maps.states.dtype).removeprefix("torch."),
            "position": position,
            "k": k_used,
            "method": "full" if d <= full_max_d else "matrix-free",
            "full_max_d": full_max_d,
            "probes": probes,
            "lyapunov_frame": frame,
            "seed": seed,
            "lyapunov_unit": "per transition (natural log)",
        },
    )
    return summarise_lyapunov(dynamics, seed=seed)


def store_position(positions) -> int:
    """The token position a store records that the Jacobians are taken at: the last token for
    positions 'last' and 'all', else the first listed position (negative: from the end)."""
    return -1 if isinstance(positions, str) else int(list(positions)[0])


def run_local_dynamics(
    *,
    model_name: str,
    model_spec: dict,
    store_path,
    dataset_path,
    settings: dict,
    include_final: bool = True,
    progress: bool = True,
) -> xr.Dataset:
    """What the local_dynamics rule does: a seeded sample of the dataset's texts, tokenised as
    the store's extraction did (its ``add_bos``, ``max_tokens`` and position rule), through
    :func:`local_dynamics` on the model loaded in ``settings["dtype"]``.

    ``settings``: the config's ``beyond.jacobians`` (n_texts, k, lyapunov_k, full_max_d, probes,
    batch, dtype, n_boot, device, seed). Singular values and eigenvalues keep ``k`` entries (dim
    ``k``), the exponents ``lyapunov_k`` (dim ``exponent``)."""
    from residual_dynamics.inputs import datasets as ds
    from residual_dynamics.inputs.models import load_model
    from residual_dynamics.io.store import open_store
    from residual_dynamics.recording.extract import dataset_token_ids

    attrs = dict(open_store(store_path).attrs)
    frame, meta = ds.read_dataset(dataset_path)
    frame = ds.seeded_sample(frame, settings["n_texts"], settings["seed"])
    loaded = load_model(model_name, {**model_spec, "dtype": settings["dtype"]}, settings["device"])
    tokens = dataset_token_ids(
        loaded.tokenizer,
        frame,
        add_bos=bool(attrs.get("add_bos", False)),
        max_tokens=int(attrs["max_tokens"]),
        on_overflow="truncate",
        dataset=str(dataset_path),
    )
    position = store_position(attrs.get("positions", "last"))
    keep = [i for i, ids in enumerate(tokens.ids) if -len(ids) <= position < len(ids)]
    if not keep:
        raise ValueError(
            f"{dataset_path}: no text has a token at position {position} (the store's positions "
            f"{attrs.get('positions')!r})"
        )
    k, lyapunov_k = settings["k"], settings["lyapunov_k"]
    result = local_dynamics(
        loaded.model,
        [tokens.ids[i] for i in keep],
        text_ids=frame["text_id"].to_numpy(np.int64)[keep],
        k=max(k, lyapunov_k),
        position=position,
        include_final=include_final,
        full_max_d=settings["full_max_d"],
        probes=settings["probes"],
        seed=settings["seed"],
        batch=settings["batch"],
        progress=progress,
    )
    # The exponents get their own dimension, so each kind keeps its own count.
    exponents = [v for v in result.data_vars if v.startswith("lyapunov") or v == "stretch"]
    lyapunov = summarise_lyapunov(
        result[["lyapunov", "stretch"]].isel(k=slice(0, lyapunov_k)),
        n_boot=settings["n_boot"],
        seed=settings["seed"],
    ).rename(k="exponent")
    spectra = result.drop_vars(exponents).isel(k=slice(0, k))
    result = xr.merge([spectra, lyapunov], combine_attrs="override")
    result.attrs.update(
        model=model_name,
        model_source=loaded.source,
        dataset=str(dataset_path),
        dataset_hash=str(meta.get("texts_hash")),
        n_texts=len(keep),
        k=result.sizes["k"],
        lyapunov_k=result.sizes["exponent"],
        n_boot=settings["n_boot"],
    )
    return result
