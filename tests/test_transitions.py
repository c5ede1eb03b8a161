"""Figure 1C-1F statistics against plain numpy on a small store, read through Dask."""

from __future__ import annotations

import numpy as np
import pytest

from residual_dynamics.analysis.cluster import dask_client
from residual_dynamics.analysis.transitions import (
    correlation_histograms,
    transition_kind,
    transition_statistics,
)
from residual_dynamics.io.store import create_store, finalise, temporary_path

NAMES = ["attn0", "mlp0", "attn1", "mlp1", "attn2", "mlp2", "final"]


def write_store(path, resid: np.ndarray, chunk_rows: int):
    tmp = temporary_path(path)
    group = create_store(tmp, resid.shape[0], NAMES, resid.shape[2], "float32", chunk_rows, {})
    group["resid"][:] = resid
    finalise(tmp, path)
    return path


@pytest.fixture
def small_store(tmp_path):
    rng = np.random.default_rng(0)
    n, s, d = 53, len(NAMES), 9
    # A drifting stream: each sublayer = previous + noise, with a large offset so naive moments
    # would lose precision.
    steps = rng.normal(size=(n, s, d)) * np.linspace(0.2, 1.5, s)[None, :, None]
    resid = (np.cumsum(steps, axis=1) + 50.0).astype(np.float32)
    resid[:, :, 4] = 3.0  # a constant unit: correlations must come out NaN, not crash
    return write_store(tmp_path / "s.zarr", resid, chunk_rows=8), resid


def test_statistics_equal_plain_numpy(small_store):
    path, resid = small_store
    stats = transition_statistics(path, sublayers="paper", block_rows=16)
    x = resid[:, :-1, :].astype(np.float64)  # 'paper' drops the final row
    s = x.shape[1]
    for t in range(s - 1):
        for u in range(x.shape[2]):
            if u == 4:
                assert np.isnan(stats["r"].values[t, u])
                continue
            expected = np.corrcoef(x[:, t, u], x[:, t + 1, u])[0, 1]
            assert stats["r"].values[t, u] == pytest.approx(expected, abs=1e-5)
    for first in range(s):
        for m in range(s):
            expected = np.corrcoef(x[:, first, 0], x[:, m, 0])[0, 1]
            assert stats["r_pairs"].values[first, m, 0] == pytest.approx(expected, abs=1e-5)
    a, b = x[:, :-1, :], x[:, 1:, :]
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    np.testing.assert_allclose(stats["cosine"].values, cosine, rtol=1e-5)
    np.testing.assert_allclose(stats["velocity"].values, np.linalg.norm(b - a, axis=-1), rtol=1e-5)
    assert stats["constant_unit"].values[:, 4].all()
    assert list(stats["transition_kind"].values) == ["within", "cross"] * 2 + ["within"]


def test_same_numbers_on_a_local_dask_cluster(small_store):
    path, _ = small_store
    plain = transition_statistics(path, block_rows=8)
    with dask_client({}, threads=2, memory_limit="1GiB"):
        clustered = transition_statistics(path, block_rows=8)
    np.testing.assert_allclose(clustered["r"].values, plain["r"].values, equal_nan=True)
    np.testing.assert_array_equal(clustered["velocity"].values, plain["velocity"].values)


def test_non_finite_values_drop_the_row_for_that_unit_only(tmp_path):
    rng = np.random.default_rng(1)
    resid = rng.normal(size=(30, len(NAMES), 5)).astype(np.float32)
    resid[7, 2, 1] = np.nan
    path = write_store(tmp_path / "n.zarr", resid, chunk_rows=10)
    stats = transition_statistics(path)
    x = resid[:, :-1, :].astype(np.float64)
    hit = np.delete(x, 7, axis=0)
    assert stats["r"].values[0, 1] == pytest.approx(
        np.corrcoef(hit[:, 0, 1], hit[:, 1, 1])[0, 1], abs=1e-5
    )
    assert stats["r"].values[0, 0] == pytest.approx(
        np.corrcoef(x[:, 0, 0], x[:, 1, 0])[0, 1], abs=1e-5
    )
    assert stats["n_finite"].values.tolist() == [30, 29, 30, 30, 30]
    assert stats.attrs["n_finite_samples"] == 29


def test_tiles_over_units_give_the_same_numbers(small_store):
    """Tiny tiles (one unit wide) must add up to the one-tile answer."""
    path, _ = small_store
    whole = transition_statistics(path, block_rows=64)
    tiled = transition_statistics(path, block_rows=8, tile_mib=1e-4)
    for name in ("r", "r_pairs", "cosine", "velocity"):
        np.testing.assert_allclose(
            tiled[name].values, whole[name].values, rtol=1e-5, equal_nan=True
        )


def test_transition_kinds_follow_the_paper():
    assert transition_kind(["attn0", "mlp0", "attn1", "mlp1"]) == ["within", "cross", "within"]
    # Parallel-block models have only attn points: every transition crosses a layer.
    assert transition_kind(["attn0", "attn1", "attn2"]) == ["cross", "cross"]


def test_correlation_histograms_count_each_reading():
    s, d = 5, 3
    r = np.full((s, s, d), 0.95)
    hist_t = correlation_histograms(r, "transitions", bins=10)
    hist_a = correlation_histograms(r, "all_pairs", bins=10)
    assert hist_t.sum(axis=1).tolist() == [s - 1] * d
    assert hist_a.sum(axis=1).tolist() == [s * (s - 1) // 2] * d
    assert hist_t[:, 9].tolist() == [s - 1] * d
