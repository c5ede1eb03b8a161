"""The paper's compressing autoencoder (Figure 3): every sublayer's residual vector is one sample.

Widths follow d_i = D r^i with r = (2/D)^(1/(k-1)), so the encoder narrows geometrically from D to
2 in k widths; the decoder mirrors it. Every layer is Linear -> LayerNorm -> ReLU except the last
of the encoder and of the decoder (plain Linear). MSE, Adam (lr 1e-3), at most 100 epochs, early
stopping on the validation loss with patience 10, keeping the best weights.

Samples (texts), not vectors, are split into train / validation / test, so a text's trajectory
never straddles the split. Training reads the store block by block: when the training set fits
``memory_gib`` it is read once and shuffled whole; otherwise each epoch streams the store's sample
blocks in a seeded order and shuffles within a block. Every epoch's order comes from
``(seed, epoch)``, so a run resumed from its checkpoint draws the same batches as one that never
stopped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from residual_dynamics.analysis.unit_means import analysed_sublayers
from residual_dynamics.io.atomic import move_into_place, partial_path
from residual_dynamics.io.checkpoints import load_tensors
from residual_dynamics.io.store import open_store

log = logging.getLogger(__name__)


def cae_widths(d_model: int, k: int = 10) -> list[int]:
    """d_i = D r^i, i = 0..k-1, r = (2/D)^(1/(k-1)), rounded: from D down to 2."""
    if k < 2:
        raise ValueError(f"cae.k must be at least 2 (got {k})")
    if d_model < 2:
        raise ValueError(f"the CAE needs at least 2 units (the model has d = {d_model})")
    r = (2.0 / d_model) ** (1.0 / (k - 1))
    return [max(2, int(round(d_model * r**i))) for i in range(k)]


def _stack(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:  # the last layer of each half is a plain Linear
            layers += [nn.LayerNorm(b), nn.ReLU()]
    return nn.Sequential(*layers)


class CompressingAutoencoder(nn.Module):
    def __init__(self, d_model: int, k: int = 10):
        super().__init__()
        self.widths = cae_widths(d_model, k)
        self.encoder = _stack(self.widths)
        self.decoder = _stack(self.widths[::-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)


@dataclass
class CaeSettings:
    k: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    max_epochs: int = 100
    patience: int = 10
    normalize: str = "standardize"  # 'standardize' (per unit, from training data) or 'none'
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    memory_gib: float = 4.0
    device: str = "cpu"


def split_samples(
    n: int, validation: float, test: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted train / validation / test sample indices, disjoint, drawn by sample."""
    if n < 3:
        raise ValueError(f"the CAE needs at least 3 samples to split (the store has {n})")
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test * n)))
    n_val = max(1, int(round(validation * n)))
    if n_test + n_val >= n:
        raise ValueError(
            f"cae.validation_fraction + cae.test_fraction leave no training samples out of {n}"
        )
    return (
        np.sort(order[n_test + n_val :]),
        np.sort(order[n_test : n_test + n_val]),
        np.sort(order[:n_test]),
    )


class SampleBlocks:
    """Vectors of chosen samples, read from the store one block of samples at a time."""

    def __init__(self, store_path, samples: np.ndarray, keep: list[int], memory_gib: float):
        group = open_store(store_path)
        self.resid = group["resid"]
        self.keep = slice(keep[0], keep[-1] + 1)
        self.n_sublayers = len(keep)
        chunk = self.resid.chunks[0]
        self.blocks = [
            samples[(samples >= s) & (samples < s + chunk)]
            for s in range(0, self.resid.shape[0], chunk)
        ]
        self.blocks = [b for b in self.blocks if len(b)]
        size = len(samples) * self.n_sublayers * self.resid.shape[2] * 4
        self.cached: torch.Tensor | None = None
        if size <= memory_gib * 2**30:
            self.cached = torch.cat([self._read(b) for b in self.blocks])

    def _read(self, samples: np.ndarray) -> torch.Tensor:
        x = np.asarray(self.resid[int(samples[0]) : int(samples[-1]) + 1, self.keep, :])
        x = x[samples - samples[0]]
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # (n, S, D)

    def __iter__(self):
        """(n, S, D) tensors in store order."""
        if self.cached is not None:
            yield self.cached
            return
        for block in self.blocks:
            yield self._read(block)

    def epoch(self, rng: np.random.Generator):
        """Blocks of vectors (rows, D) in a seeded order, rows shuffled within a block."""
        if self.cached is not None:
            parts = [self.cached]
        else:
            parts = (self._read(self.blocks[i]) for i in rng.permutation(len(self.blocks)))
        for part in parts:
            flat = part.reshape(-1, part.shape[-1])
            yield flat[torch.from_numpy(rng.permutation(len(flat)))]


@dataclass
class Normaliser:
    mean: torch.Tensor
    scale: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def fit_normaliser(blocks: SampleBlocks, how: str) -> Normaliser:
    if how not in ("standardize", "none"):
        raise ValueError(f"cae.normalize must be 'standardize' or 'none' (got {how!r})")
    d = blocks.resid.shape[2]
    if how == "none":
        return Normaliser(torch.zeros(d), torch.ones(d))
    total, sq, n = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), 0
    for part in blocks:
        flat = part.reshape(-1, d).double()
        total += flat.sum(0)
        sq += (flat**2).sum(0)
        n += len(flat)
    mean = total / n
    std = (sq / n - mean**2).clamp(min=0).sqrt()
    # Constant units stay constant (scale 1) instead of dividing by zero.
    std = torch.where(std > 1e-8 * (1 + mean.abs()), std, torch.ones_like(std))
    return Normaliser(mean.float(), std.float())


def _mean_loss(model, blocks: SampleBlocks, norm: Normaliser, device, batch: int) -> float:
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for part in blocks:
            flat = norm(part.reshape(-1, part.shape[-1]))
            for i in range(0, len(flat), batch):
                x = flat[i : i + batch].to(device)
                total += float(nn.functional.mse_loss(model(x)[1], x, reduction="sum"))
                n += x.numel()
    return total / max(n, 1)


@dataclass
class TrainedCae:
    model: CompressingAutoencoder
    normaliser: Normaliser
    history: dict
    best_epoch: int
    split: tuple[np.ndarray, np.ndarray, np.ndarray]
    keep: list[int]
    sublayers: list[str]


def train_cae(
    store_path,
    settings: CaeSettings,
    sublayers: str = "paper",
    checkpoint: Path | str | None = None,
    progress: bool = True,
) -> TrainedCae:
    """Train the CAE on a store; resumes from ``checkpoint`` when one is there."""
    from residual_dynamics.inputs.models import resolve_device

    device = resolve_device(settings.device)
    group = open_store(store_path)
    keep = analysed_sublayers(group, sublayers)
    names = [group.attrs["sublayers"][i] for i in keep]
    n, _, d = group["resid"].shape
    split = split_samples(n, settings.validation_fraction, settings.test_fraction, settings.seed)
    train = SampleBlocks(store_path, split[0], keep, settings.memory_gib)
    val = SampleBlocks(store_path, split[1], keep, settings.memory_gib)
    norm = fit_normaliser(train, settings.normalize)

    torch.manual_seed(settings.seed)
    model = CompressingAutoencoder(d, settings.k).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    history = {"train_loss": [], "val_loss": []}
    best = (math.inf, -1, {k: v.clone() for k, v in model.state_dict().items()})
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_tensors(checkpoint, map_location=device)
        if state["settings"] != asdict(settings):
            log.warning("checkpoint %s was written with other settings: starting over", checkpoint)
        else:
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            history = state["history"]
            best = (state["best_loss"], state["best_epoch"], state["best_model"])
            start = state["epoch"] + 1
            log.info("resumed CAE training from epoch %d (%s)", start, checkpoint)

    bar = tqdm(
        range(start, settings.max_epochs),
        desc="CAE",
        unit="epoch",
        disable=not progress,
        initial=start,
        total=settings.max_epochs,
    )
    for epoch in bar:
        if epoch - best[1] > settings.patience:
            break
        model.train()
        rng = np.random.default_rng([settings.seed, epoch])
        total, count = 0.0, 0
        for flat in train.epoch(rng):
            flat = norm(flat)
            for i in range(0, len(flat), settings.batch_size):
                x = flat[i : i + settings.batch_size].to(device)
                loss = nn.functional.mse_loss(model(x)[1], x)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(x)
                count += len(x)
        val_loss = _mean_loss(model, val, norm, device, settings.batch_size)
        history["train_loss"].append(total / max(count, 1))
        history["val_loss"].append(val_loss)
        if val_loss < best[0]:
            best = (val_loss, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        bar.set_postfix(train=f"{total / max(count, 1):.4f}", val=f"{val_loss:.4f}", best=best[1])
        log.info(
            "epoch %d: train %.5f, validation %.5f", epoch, history["train_loss"][-1], val_loss
        )
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint,
                {
                    "settings": asdict(settings),
                    "model": model.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "history": history,
                    "best_loss": best[0],
                    "best_epoch": best[1],
                    "best_model": best[2],
                    "epoch": epoch,
                },
            )
    model.load_state_dict(best[2])
    model.eval()
    return TrainedCae(model, norm, history, best[1], split, keep, names)


def _save_checkpoint(path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    torch.save(state, tmp)
    move_into_place(tmp, path)


def explained_variance(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """Per vector over its units: 1 - Var(x - x_hat) / Var(x) (scikit-learn's definition)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - np.var(x - x_hat, axis=-1) / np.var(x, axis=-1)


def evaluate_cae(store_path, trained: TrainedCae, settings: CaeSettings) -> xr.Dataset:
    """Latent trajectories, successive latent distances and reconstruction quality on the test
    samples, measured in the normalised space the CAE was trained in."""
    from residual_dynamics.inputs.models import resolve_device

    device = resolve_device(settings.device)
    test = SampleBlocks(store_path, trained.split[2], trained.keep, settings.memory_gib)
    latents, ev, pooled_err, pooled_sq, pooled_sum = [], [], 0.0, 0.0, 0.0
    n_vectors = 0
    trained.model.eval()
    with torch.no_grad():
        for part in test:
            n, s, d = part.shape
            x = trained.normaliser(part.reshape(-1, d))
            z, x_hat = trained.model(x.to(device))
            x, x_hat = x.numpy().reshape(n, s, d), x_hat.cpu().numpy().reshape(n, s, d)
            latents.append(z.cpu().numpy().reshape(n, s, -1))
            ev.append(explained_variance(x, x_hat))
            pooled_err = pooled_err + ((x - x_hat) ** 2).sum(axis=(0, 2))
            pooled_sq = pooled_sq + (x**2).sum(axis=(0, 2))
            pooled_sum = pooled_sum + x.sum(axis=0)
            n_vectors += n
    latent = np.concatenate(latents)
    ev_all = np.concatenate(ev)
    mean_x = pooled_sum / n_vectors  # (S, D)
    total = pooled_sq - n_vectors * (mean_x**2).sum(axis=1)
    r2 = 1.0 - pooled_err / total
    mean_traj = latent.mean(axis=0)
    names = trained.sublayers
    return xr.Dataset(
        {
            "latent": (("sample", "sublayer", "latent_dim"), latent.astype(np.float32)),
            "explained_variance": (("sample", "sublayer"), ev_all.astype(np.float32)),
            "r2": (("sublayer",), r2),
            "latent_step": (
                ("sample", "transition"),
                np.linalg.norm(np.diff(latent, axis=1), axis=-1).astype(np.float32),
            ),
            "mean_latent_step": (
                ("transition",),
                np.linalg.norm(np.diff(mean_traj, axis=0), axis=-1),
            ),
            "train_loss": (("epoch",), np.asarray(trained.history["train_loss"])),
            "val_loss": (("epoch",), np.asarray(trained.history["val_loss"])),
        },
        coords={
            "sample": trained.split[2],
            "sublayer": names,
            "transition": np.arange(len(names) - 1),
            "epoch": np.arange(len(trained.history["train_loss"])),
        },
        attrs={
            "widths": trained.model.widths,
            "best_epoch": trained.best_epoch,
            "n_train": len(trained.split[0]),
            "n_validation": len(trained.split[1]),
            "n_test": len(trained.split[2]),
            "best_val_loss": float(min(trained.history["val_loss"])),
            "space": f"normalised inputs ({settings.normalize})",
            **{f"setting_{k}": v for k, v in asdict(settings).items()},
        },
    )
