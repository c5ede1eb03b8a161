"""PCA of the residual stream (Figure 4A-4C) against scikit-learn on a small store."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA
from test_transitions import NAMES, write_store

from residual_dynamics.analysis.pca import pca_fit, pca_summary


@pytest.fixture
def low_rank_store(tmp_path):
    """A stream that drifts through a few directions, with a large offset and unit noise."""
    rng = np.random.default_rng(1)
    n, s, d = 61, len(NAMES), 24
    directions = rng.normal(size=(4, d))
    weights = np.cumsum(rng.normal(size=(n, s, 4)), axis=1) * np.array([5.0, 3.0, 2.0, 1.0])
    resid = (weights @ directions + rng.normal(scale=0.3, size=(n, s, d)) + 40.0).astype(np.float32)
    return write_store(tmp_path / "p.zarr", resid, chunk_rows=8), resid


def _principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    return np.linalg.svd(qa.T @ qb, compute_uv=False)


def test_global_pca_equals_scikit_learn(low_rank_store):
    path, resid = low_rank_store
    rows = resid[:, :-1, :].reshape(-1, resid.shape[2]).astype(np.float64)  # 'paper': no final
    reference = PCA(n_components=8, svd_solver="full").fit(rows)
    pca = pca_fit(path, n_components=8, n_projected=3, block_rows=16)
    np.testing.assert_allclose(
        pca["explained_variance_ratio"].values, reference.explained_variance_ratio_, rtol=1e-6
    )
    np.testing.assert_allclose(pca["mean"].values, reference.mean_, rtol=1e-6)
    # Same subspace for the leading components (cosines of principal angles all 1).
    cosines = _principal_angles(pca["components"].values[:4].T, reference.components_[:4].T)
    np.testing.assert_allclose(cosines, 1.0, atol=1e-6)
    # Projections equal scikit-learn's up to the sign of each component.
    ours = pca["projection"].values.reshape(-1, 3)
    theirs = reference.transform(rows)[:, :3]
    signs = np.sign((ours * theirs).sum(axis=0))
    np.testing.assert_allclose(ours, theirs * signs, rtol=1e-4, atol=1e-3)


def test_per_sublayer_curves_against_numpy(low_rank_store):
    path, resid = low_rank_store
    pca = pca_fit(path, n_components=6, per_sublayer=True, block_rows=16)
    v = pca["components"].values.T.astype(np.float64)
    for s in (0, 3, 5):
        x = resid[:, s, :].astype(np.float64)
        xc = x - x.mean(axis=0)
        total = (xc**2).sum()
        along = ((xc @ v) ** 2).sum(axis=0)
        np.testing.assert_allclose(
            pca["sublayer_cumulative"].values[s], np.cumsum(along) / total, rtol=1e-5
        )
        own = PCA(n_components=6).fit(x).explained_variance_ratio_
        np.testing.assert_allclose(
            pca["sublayer_cumulative_own"].values[s], np.cumsum(own), rtol=1e-5
        )
    # A sublayer's own PCA captures at least as much as any other basis with as many components.
    assert (pca["sublayer_cumulative_own"].values >= pca["sublayer_cumulative"].values - 1e-9).all()
    summary = pca_summary(pca, at=100)
    assert summary["n_components_at"] == 6 and 0 < summary["cumulative_at_last"] <= 1


@pytest.mark.parametrize("n_samples", [61, 17])
def test_per_sublayer_pca_equals_scikit_learn_on_both_routes(tmp_path, n_samples):
    """More samples than units: the D x D covariance route; fewer (the paper's 1000 texts at
    D = 4096): the N x N Gram route. A sample non-finite in one sublayer is left out of all."""
    rng = np.random.default_rng(3)
    s, d = len(NAMES), 24
    directions = rng.normal(size=(4, d))
    weights = np.cumsum(rng.normal(size=(n_samples, s, 4)), axis=1) * np.array([5.0, 3, 2, 1])
    resid = (weights @ directions + rng.normal(scale=0.3, size=(n_samples, s, d)) + 40.0).astype(
        np.float32
    )
    resid[3, 4, 0] = np.inf
    path = write_store(tmp_path / "w.zarr", resid, chunk_rows=8)
    pca = pca_fit(path, n_components=6, per_sublayer=True, block_rows=16)
    keep = np.arange(n_samples) != 3
    own = pca["sublayer_cumulative_own"].values
    assert own.shape == (s - 1, 6)  # 'paper': every sublayer but the final one
    for j in range(s - 1):
        reference = PCA(n_components=6, svd_solver="full").fit(resid[keep, j].astype(np.float64))
        np.testing.assert_allclose(
            own[j], np.cumsum(reference.explained_variance_ratio_), rtol=1e-6
        )


def test_samples_with_non_finite_values_are_left_out_whole(low_rank_store, tmp_path):
    _, resid = low_rank_store
    bad = resid.copy()
    bad[5, 2, 3] = np.nan
    path = write_store(tmp_path / "nan.zarr", bad, chunk_rows=8)
    pca = pca_fit(path, n_components=4, block_rows=16)
    keep = np.ones(len(bad), bool)
    keep[5] = False
    reference = PCA(n_components=4).fit(bad[keep, :-1].reshape(-1, bad.shape[2]).astype(float))
    np.testing.assert_allclose(
        pca["explained_variance_ratio"].values, reference.explained_variance_ratio_, rtol=1e-6
    )
    assert np.isnan(pca["projection"].values[5]).all() and pca.attrs["n_samples"] == len(bad) - 1


def test_figure_4c_reads_at_the_papers_share_of_the_width(low_rank_store):
    from residual_dynamics.analysis.pca import read_at

    assert read_at(4096) == 100 and read_at(384) == 9 and read_at(24) == 2 and read_at(24, 5) == 5
    path, _ = low_rank_store
    pca = pca_fit(path, n_components=8, block_rows=16)
    assert pca.attrs["read_at"] == 2
    summary = pca_summary(pca)
    assert summary["n_components_at"] == 2
    assert summary["cumulative_at_last"] == pytest.approx(pca["sublayer_cumulative"].values[-1, 1])
