"""Perturbations that re-enter the model (the paper's Figure 4D, and its future work).

A perturbation writes new vectors over the residual stream at the input of decoder layer l, at one
token position, and runs the rest of the model. ``Reentry`` runs the prompt once, keeping every
block's output; a perturbation at layer l then swaps blocks 0..l-1 for stand-ins that return the
cached output of block l-1 (expanded to the batch), so a batch of B perturbed copies costs only
the blocks from l on. A forward pre-hook on block l writes the vectors; the residual recorder,
hooked from layer l on, records what follows. Rows before layer l are the control's, by
construction (a test checks this against a full forward pass).

Recovery (analysis.recovery): per perturbed layer, how far the teleported points are from the
unperturbed trajectory ``horizon`` sublayers later, relative to how far they were sent
(``remaining``: 1 nothing recovered, 0 fully back), for the control prompt (Figure 4D's arrows) and
for a seeded sample of dataset texts (``teleport_texts``), whose per-text values decide the
claim with a bootstrap interval over texts (``recovery_summary``).
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import nn

from residual_dynamics.analysis.recovery import (  # noqa: F401 (re-exported)
    DEFAULT_REPLICATES,
    MEASURES,
    recovery_measures,
    recovery_summary,
)
from residual_dynamics.recording.hooks import ResidualRecorder, architecture_for, first_tensor

log = logging.getLogger(__name__)

PAPER_LAYERS = (0, 7, 15, 23, 31)  # of Llama 3.1 8B's 32


class PerturbationError(ValueError):
    """Bad perturbation settings for this model; the message names the key and the fix."""


def perturbation_layers(n_layers: int, layers="auto") -> list[int]:
    """The paper's layers scaled to the model's depth, or the configured ones checked."""
    if layers == "auto":
        return sorted({int(round(layer * (n_layers - 1) / 31)) for layer in PAPER_LAYERS})
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise PerturbationError(
            f"perturbation.layers: {bad} beyond the model's depth; it has {n_layers} layers "
            f"(0..{n_layers - 1}). Use indices below {n_layers}, or 'auto'"
        )
    if not layers:
        raise PerturbationError("perturbation.layers: empty; list at least one layer or 'auto'")
    return sorted(layers)


def teleport_grid(grid_size: int, grid_range) -> np.ndarray:
    """(grid_size^2, 2) points in PC1/PC2, PC1 varying fastest."""
    if grid_size < 1:
        raise PerturbationError(f"perturbation.grid_size: {grid_size}; the grid needs at least 1")
    low, high = float(grid_range[0]), float(grid_range[1])
    if not low < high:
        raise PerturbationError(
            f"perturbation.grid_range: [{low}, {high}] spans nothing; give r_min < r_max"
        )
    axis = np.linspace(low, high, grid_size)
    pc1, pc2 = np.meshgrid(axis, axis)
    return np.stack([pc1.ravel(), pc2.ravel()], axis=1)


def data_range(projection: np.ndarray) -> tuple[float, float]:
    """A symmetric range covering the data's trajectories in PC1/PC2 (rounded outwards)."""
    extent = float(np.nanmax(np.abs(projection[..., :2])))
    return (-extent, extent)


def expand_output(output, batch: int):
    """A kept block output (tensor or tuple, batch 1) expanded to ``batch`` rows."""
    if isinstance(output, torch.Tensor):
        return output.expand(batch, *output.shape[1:])
    first = output[0].expand(batch, *output[0].shape[1:])
    return type(output)((first, *output[1:]))


class CachedBlock(nn.Module):
    """Stands in for blocks before the perturbed one: returns the cached state, computes nothing."""

    def __init__(self, output, batch: int):
        super().__init__()
        self.output = output
        self.batch = batch

    def forward(self, *args, **kwargs):
        return expand_output(self.output, self.batch)


@dataclass
class Control:
    rows: torch.Tensor  # (S, D) float32 at the perturbed position, every recorded sublayer
    logits: torch.Tensor | None  # (V,) float32 for causal models


class Reentry:
    """Perturbations of one token sequence at one position, re-entering the model at a layer."""

    def __init__(self, model, ids, position: int = -1, include_final: bool = True):
        self.model = model
        self.device = next(model.parameters()).device
        self.ids = torch.as_tensor([list(ids)], device=self.device)
        self.position = position % self.ids.shape[1]
        self.include_final = include_final
        self.arch = architecture_for(model.config)
        self.blocks = operator.attrgetter(self.arch.layers)(model.base_model)
        self.names = ResidualRecorder(model, include_final).names
        # Next-token logits only where they mean something: a causal model loaded with its head.
        self.has_logits = self.arch.causal and model.get_output_embeddings() is not None
        self._outputs: list = [None] * len(self.blocks)
        handles = [
            block.register_forward_hook(self._keep_output(i)) for i, block in enumerate(self.blocks)
        ]
        try:
            rows, logits = self._forward(ResidualRecorder(model, include_final), batch=1)
        finally:
            for handle in handles:
                handle.remove()
        self.control = Control(rows[0], None if logits is None else logits[0])

    def _keep_output(self, index: int):
        def hook(_module, _args, output):
            self._outputs[index] = output

        return hook

    @torch.inference_mode()
    def _forward(self, recorder: ResidualRecorder, batch: int):
        ids = self.ids.expand(batch, -1)
        with recorder:
            recorder.set_selector(lambda h: h[:, self.position].float())
            out = self.model(input_ids=ids, use_cache=False)
            rows = recorder.take()
        logits = None
        if self.has_logits and getattr(out, "logits", None) is not None:
            logits = out.logits[:, self.position].float()
        return rows, logits

    def sublayer_index(self, layer: int) -> int:
        return self.names.index(f"attn{layer}")

    def run(
        self, layer: int, vectors: torch.Tensor, reuse_cache: bool = True, max_batch: int = 128
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, S, D) rows at the position and (B, V) logits after writing ``vectors`` (B, D) over
        the input of block ``layer``. ``reuse_cache=False`` runs every block (for checking)."""
        if not 0 <= layer < len(self.blocks):
            raise PerturbationError(
                f"perturbation.layers: {layer} beyond the model's depth ({len(self.blocks)} layers)"
            )
        rows, logits = [], []
        for start in range(0, len(vectors), max_batch):
            part = vectors[start : start + max_batch]
            r, lg = self._run_batch(layer, part, reuse_cache)
            rows.append(r)
            logits.append(lg)
        return torch.cat(rows), (None if logits[0] is None else torch.cat(logits))

    def _run_batch(self, layer: int, vectors: torch.Tensor, reuse_cache: bool):
        batch = len(vectors)
        vectors = vectors.to(self.device)

        def write(_module, args, kwargs):
            h = first_tensor(args, kwargs).clone()
            h[:, self.position] = vectors.to(h.dtype)
            if args:
                return (h, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}

        first = layer if reuse_cache else 0
        originals = list(self.blocks[:first])
        handle = self.blocks[layer].register_forward_pre_hook(write, with_kwargs=True, prepend=True)
        try:
            for i in range(first):
                self.blocks[i] = CachedBlock(self._outputs[layer - 1], batch)
            rows, logits = self._forward(
                ResidualRecorder(self.model, self.include_final, first_layer=first), batch
            )
        finally:
            handle.remove()
            for i, block in enumerate(originals):
                self.blocks[i] = block
        if first > 0:
            before = self.control.rows[: self.sublayer_index(first)]
            rows = torch.cat([before.expand(batch, -1, -1), rows], dim=1)
        return rows, logits


@dataclass
class PcaBasis:
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (2, D)
    sublayers: list[str]

    def to_model(self, z: np.ndarray) -> np.ndarray:
        return z @ self.components + self.mean

    def project(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.components.T


def perturb_sequence(
    reentry: Reentry,
    basis: PcaBasis,
    layers: list[int],
    grid: np.ndarray,
    horizon: int,
    noise_scales=(),
    noise_draws: int = 0,
    swap_states: dict[int, np.ndarray] | None = None,
    seed: int = 0,
) -> dict:
    """Teleports (and noise and swaps) at each layer; paths in PC1/PC2 and the measures."""
    keep = [reentry.names.index(n) for n in basis.sublayers]
    control = reentry.control.rows.cpu().numpy()[keep]
    rng = np.random.default_rng(seed)
    kinds = (
        ["teleport"] + [f"noise_{s:g}" for s in noise_scales] + (["swap"] if swap_states else [])
    )
    measures = np.full((len(kinds), len(layers), len(MEASURES)), np.nan)
    paths = np.full((len(layers), len(grid), len(keep), 2), np.nan, dtype=np.float32)
    for li, layer in enumerate(layers):
        start = basis.sublayers.index(f"attn{layer}")
        h = reentry.control.rows[reentry.sublayer_index(layer)].cpu().numpy()
        batches = {"teleport": basis.to_model(grid)}
        for scale in noise_scales:
            noise = rng.normal(size=(noise_draws, h.shape[0])) * scale * np.linalg.norm(h)
            batches[f"noise_{scale:g}"] = h + noise / np.sqrt(h.shape[0])
        if swap_states:
            batches["swap"] = swap_states[layer]
        for ki, kind in enumerate(kinds):
            rows, logits = reentry.run(layer, torch.as_tensor(batches[kind], dtype=torch.float32))
            rows = rows.cpu().numpy()[:, keep]
            values = recovery_measures(
                rows, control, start, horizon, basis.project, logits, reentry.control.logits
            )
            measures[ki, li] = [values[m] for m in MEASURES]
            if kind == "teleport":
                paths[li] = basis.project(rows)
    return {
        "kinds": kinds,
        "measures": measures,
        "paths": paths,
        "control_path": basis.project(control).astype(np.float32),
    }


def teleport_texts(
    model,
    sequences,
    basis: PcaBasis,
    layers: list[int],
    grid: np.ndarray,
    horizon: int,
    *,
    include_final: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """(n_texts, n_layers, n_measures) teleport measures of each token sequence: the ``grid``
    written over its own last token at each layer, measured against its own unperturbed states
    (per-text ``remaining`` distances: analysis.recovery)."""
    from tqdm.auto import tqdm

    out = np.full((len(sequences), len(layers), len(MEASURES)), np.nan)
    for i, seq in enumerate(
        tqdm(sequences, desc="teleports on dataset texts", disable=not progress)
    ):
        reentry = Reentry(model, seq, include_final=include_final)
        out[i] = perturb_sequence(reentry, basis, layers, grid, horizon)["measures"][0]
    return out


def perturbation_dataset(
    result: dict,
    layers: list[int],
    grid: np.ndarray,
    basis: PcaBasis,
    dataset_measures: np.ndarray | None,
    attrs: dict,
    text_ids=None,
) -> xr.Dataset:
    """The perturb rule's output. ``dataset_measures`` (text, layer, measure): the teleport
    measures of each dataset text (``text`` coordinate: ``text_ids``, else 0..n-1)."""
    coords = {}
    if dataset_measures is not None:
        n = len(dataset_measures)
        coords["text"] = np.arange(n) if text_ids is None else np.asarray(text_ids)
    data = {
        "measures": (("kind", "layer", "measure"), result["measures"]),
        "teleport_path": (("layer", "point", "sublayer", "pc"), result["paths"]),
        "control_path": (("sublayer", "pc"), result["control_path"]),
        "grid": (("point", "pc"), grid),
    }
    if dataset_measures is not None:
        data["dataset_measures"] = (("text", "layer", "measure"), dataset_measures)
    return xr.Dataset(
        data,
        coords={
            "kind": result["kinds"],
            "layer": layers,
            "measure": list(MEASURES),
            "sublayer": basis.sublayers,
            "pc": [1, 2],
            "point": np.arange(len(grid)),
            **coords,
        },
        attrs=attrs,
    )


def run_perturbations(
    *,
    model_name: str,
    model_spec: dict,
    store_path,
    pca: xr.Dataset,
    dataset_path,
    settings: dict,
    include_final: bool = True,
    progress: bool = True,
) -> xr.Dataset:
    """Everything the perturb rule does: the model, the PCA basis and the settings in, the
    perturbation dataset out. Raises PerturbationError before any work for bad settings."""
    from residual_dynamics.inputs import datasets as ds
    from residual_dynamics.inputs.models import context_window, load_model, model_location
    from residual_dynamics.io.store import open_store
    from residual_dynamics.recording.extract import dataset_token_ids, resolve_add_bos, tokenise

    names = list(pca["sublayer"].values)
    if settings["grid_range"] is None:
        grid_range = data_range(pca["projection"].values)
    else:
        grid_range = settings["grid_range"]
    grid = teleport_grid(settings["grid_size"], grid_range)
    from transformers import AutoConfig

    location, revision, _ = model_location(model_name, model_spec)
    config = AutoConfig.from_pretrained(
        location, revision=revision, trust_remote_code=model_spec.get("trust_remote_code", False)
    )
    layers = perturbation_layers(int(config.num_hidden_layers), settings["layers"])
    causal = architecture_for(config).causal
    loaded = load_model(model_name, model_spec, device=settings["device"], with_head=causal)
    model, tokenizer = loaded.model, loaded.tokenizer
    add_bos = resolve_add_bos(tokenizer, model_spec.get("add_bos", "auto"))
    max_tokens = context_window(model, tokenizer)
    basis = PcaBasis(
        mean=pca["mean"].values.astype(np.float64),
        components=pca["components"].values[:2].astype(np.float64),
        sublayers=names,
    )
    group = open_store(store_path)
    store_names = list(group.attrs["sublayers"])
    resid = group["resid"]
    rng = np.random.default_rng(settings["seed"])
    swap_states = None
    if settings["n_swaps"]:
        chosen = np.sort(
            rng.choice(resid.shape[0], min(settings["n_swaps"], resid.shape[0]), replace=False)
        )
        swap_states = {
            layer: np.asarray(
                resid.oindex[chosen, store_names.index(f"attn{layer}"), :], np.float64
            )
            for layer in layers
        }
    control_ids = tokenise(
        tokenizer,
        [settings["control_prompt"]],
        add_bos=add_bos,
        max_tokens=max_tokens,
        on_overflow="truncate",
        dataset="perturbation.control_prompt",
    ).ids[0]
    log.info(
        "teleports at layers %s, %d grid points over %s, control prompt of %d tokens",
        layers,
        len(grid),
        [round(float(x), 3) for x in grid_range],
        len(control_ids),
    )
    common = dict(layers=layers, grid=grid, horizon=settings["horizon"])
    result = perturb_sequence(
        Reentry(model, control_ids, include_final=include_final),
        basis,
        noise_scales=settings["noise_scales"],
        noise_draws=settings["noise_draws"],
        swap_states=swap_states,
        seed=settings["seed"],
        **common,
    )
    dataset_measures, text_ids = None, None
    text_grid_size = settings.get("dataset_grid_size") or settings["grid_size"]
    replicates = int(settings.get("bootstrap_replicates", DEFAULT_REPLICATES))
    if settings["n_dataset_samples"]:
        frame, _ = ds.read_dataset(dataset_path)
        # Its own draw (not after the swaps'): the same texts for a model and its twin.
        part = ds.seeded_sample(frame, settings["n_dataset_samples"], settings["seed"])
        text_ids = part["text_id"].to_numpy() if "text_id" in part else None
        ids = dataset_token_ids(
            tokenizer,
            part,
            add_bos=add_bos,
            max_tokens=max_tokens,
            on_overflow="truncate",
            dataset=str(dataset_path),
        ).ids
        log.info(
            "teleports on %d dataset texts, a %d x %d grid each",
            len(ids),
            text_grid_size,
            text_grid_size,
        )
        dataset_measures = teleport_texts(
            model,
            ids,
            basis,
            layers,
            teleport_grid(text_grid_size, grid_range),
            settings["horizon"],
            include_final=include_final,
            progress=progress,
        )
    attrs = {
        "model": model_name,
        "dataset": str(group.attrs.get("dataset")),
        "control_prompt": settings["control_prompt"],
        "control_tokens": len(control_ids),
        "horizon": settings["horizon"],
        "grid_range": [float(x) for x in grid_range],
        "grid_size": settings["grid_size"],
        "causal": bool(causal),
        "n_layers": int(config.num_hidden_layers),
        "dataset_grid_size": int(text_grid_size),
        "seed": int(settings["seed"]),
        "bootstrap_replicates": replicates,
    }
    return perturbation_dataset(
        result, layers, grid, basis, dataset_measures, attrs, text_ids=text_ids
    )
