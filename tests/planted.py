"""Planted recordings with a known answer for the verdicts: white noise, Gaussian random walks
(constant and growing steps), and trajectories where claims are true by construction (an
expanding map: each step along the state), written as activation stores of the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from residual_dynamics.io.store import create_store, finalise, temporary_path


def sublayer_names(n_layers: int) -> list[str]:
    names = []
    for layer in range(n_layers):
        names += [f"attn{layer}", f"mlp{layer}"]
    return [*names, "final"]


def write_planted(path: Path, resid: np.ndarray, model: str, dataset: str) -> Path:
    n, s, d = resid.shape
    tmp = temporary_path(path)
    group = create_store(
        tmp,
        n,
        sublayer_names((s - 1) // 2),
        d,
        "float32",
        n,
        {"model": model, "dataset": dataset, "planted": True},
    )
    group["resid"][:] = resid.astype(np.float32)
    finalise(tmp, path)
    return path


def white_noise(rng, n, s, d) -> np.ndarray:
    return rng.normal(size=(n, s, d))


def random_walk(rng, n, s, d, step_sd, start_sd: float = 5.0) -> np.ndarray:
    """x_0 ~ N(0, start_sd²); x_{l+1} = x_l + N(0, step_sd[l]²): memoryless increments."""
    steps = rng.normal(size=(n, s, d)) * np.asarray(step_sd)[None, :, None]
    steps[:, 0] = rng.normal(0, start_sd, (n, d))
    return np.cumsum(steps, axis=1)


def expanding(rng, n, s, d, a: float = 1.3, sigma: float = 0.1) -> np.ndarray:
    """x_{l+1} = a x_l + N(0, sigma²): every step along the state (a > 1), so consecutive
    sublayers correlate beyond what a walk with the same step sizes gives, correlation and cosine
    rise with depth, and the steps grow (velocity peaks last)."""
    x = np.empty((n, s, d))
    x[:, 0] = rng.normal(size=(n, d))
    for layer in range(1, s):
        x[:, layer] = a * x[:, layer - 1] + rng.normal(0, sigma, (n, d))
    return x


def shrinking_walk(rng, n, s, d) -> np.ndarray:
    """A walk whose steps shrink with depth: its velocity peaks at the first transition."""
    return random_walk(rng, n, s, d, np.linspace(2.0, 0.2, s), start_sd=1.0)
