"""Layer similarity and dimension: CKA against a plain reference, its invariances, TwoNN on known
manifolds embedded in 100 dimensions, the participation ratio on known spectra, and the store's
out-of-core Dask path against the in-memory estimators."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from residual_dynamics.analysis.cluster import dask_client
from residual_dynamics.analysis.layer_geometry import (
    layer_geometry,
    linear_cka,
    participation_ratio,
    two_nn_dimension,
)
from residual_dynamics.io.store import create_store, finalise, temporary_path


def write_store(path, resid: np.ndarray, names: list[str], chunk_rows: int):
    tmp = temporary_path(path)
    group = create_store(tmp, resid.shape[0], names, resid.shape[2], "float32", chunk_rows, {})
    group["resid"][:] = resid
    finalise(tmp, path)
    return path


def reference_cka(x, y, unbiased: bool) -> float:
    """Textbook forms on the raw (uncentred) Gram matrices: tr(KHLH) (Gretton et al. 2005) and
    Song et al. (2012), eq. 5, with the diagonals zeroed."""
    n = len(x)

    def hsic(k, ell):
        if not unbiased:
            h = np.eye(n) - np.ones((n, n)) / n
            return np.trace(k @ h @ ell @ h) / (n - 1) ** 2
        kt, lt = k - np.diag(np.diag(k)), ell - np.diag(np.diag(ell))
        one = np.ones(n)
        return (
            np.trace(kt @ lt)
            + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ kt @ lt @ one
        ) / (n * (n - 3))

    k, ell = x @ x.T, y @ y.T
    return hsic(k, ell) / np.sqrt(hsic(k, k) * hsic(ell, ell))


@pytest.fixture(scope="module")
def related():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12)) + 5.0  # an offset: the estimators must centre
    y = np.tanh(x @ rng.normal(size=(12, 8))) + 0.5 * rng.normal(size=(60, 8))
    return x, y


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_cka_equals_the_plain_reference(related, estimator):
    x, y = related
    expected = reference_cka(x, y, unbiased=estimator == "unbiased")
    assert 0.1 < expected < 0.99
    assert linear_cka(x, y, estimator) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_cka_is_invariant_to_rotation_and_isotropic_scaling(related, estimator):
    x, y = related
    q = ortho_group.rvs(x.shape[1], random_state=1)
    base = linear_cka(x, y, estimator)
    assert linear_cka(3.7 * x @ q, y, estimator) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, 0.01 * y @ ortho_group.rvs(8, random_state=2), estimator) == (
        pytest.approx(base, rel=1e-10)
    )
    assert linear_cka(x, 3.7 * x @ q, estimator) == pytest.approx(1.0, abs=1e-12)
    # Not invariant to what it should not be: an anisotropic rescaling changes it.
    stretch = np.diag(np.geomspace(0.05, 20, x.shape[1]))
    assert abs(linear_cka(x @ stretch, y, estimator) - base) > 0.01


def test_independent_noise_unbiased_near_zero_biased_inflated():
    rng = np.random.default_rng(3)
    n, d = 200, 500
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    unbiased, biased = linear_cka(x, y, "unbiased"), linear_cka(x, y, "biased")
    assert abs(unbiased) < 0.02
    # The biased estimator's floor is about d / (n + d): why 'auto' picks the unbiased one.
    assert biased == pytest.approx(d / (n + d), abs=0.03)


def test_participation_ratio_is_analytic_on_diagonal_spectra():
    for k in (1, 3, 17):
        cov = np.diag(np.r_[np.full(k, 2.5), np.zeros(10)])
        assert participation_ratio(np.linalg.eigvalsh(cov)) == pytest.approx(k, rel=1e-12)
    values = np.array([4.0, 1.0, 1.0, 0.25])
    assert participation_ratio(values) == pytest.approx(6.25**2 / 18.0625)


def exact_covariance_rows(rng, n, variances, d):
    """n rows whose sample covariance is exactly diag(variances) in d units (rest zero)."""
    basis = np.linalg.qr(np.c_[np.ones(n), rng.normal(size=(n, len(variances)))])[0][:, 1:]
    rows = np.zeros((n, d))
    rows[:, : len(variances)] = basis * np.sqrt(np.asarray(variances) * (n - 1))
    return rows + 3.0


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    """Sublayers with known answers: related, identical, independent, an exactly diagonal
    covariance, planted duplicate rows and a final row that 'paper' drops."""
    rng = np.random.default_rng(7)
    n, d = 90, 16
    names = ["attn0", "mlp0", "attn1", "mlp1", "attn2", "mlp2", "final"]
    base = rng.normal(size=(n, d))
    resid = np.empty((n, len(names), d))
    resid[:, 0] = np.round(base @ rng.normal(size=(d, d)), 0)  # coarse values
    resid[rng.choice(np.arange(12, n), 12, replace=False), 0] = resid[:12, 0]  # exact duplicates
    resid[:, 1] = base @ ortho_group.rvs(d, random_state=4) * 2.0  # = attn2 up to rotation
    resid[:, 2] = base
    resid[:, 3] = rng.normal(size=(n, d))  # independent of everything
    resid[:, 4] = exact_covariance_rows(rng, n, [3.0, 3.0, 3.0, 3.0, 1.0], d)
    resid[:, 5] = base + 0.3 * rng.normal(size=(n, d)) + 40.0
    resid[:, 6] = np.nan  # a broken final row: must be dropped by 'paper', not poison the rest
    resid = resid.astype(np.float32)
    path = write_store(tmp_path_factory.mktemp("geometry") / "m.zarr", resid, names, 8)
    return path, resid[:, :-1].astype(np.float64), names[:-1]


def test_store_path_equals_in_memory_estimators(mixed_store):
    path, x, names = mixed_store
    with dask_client({}, threads=2, memory_limit="1GiB"):
        geometry = layer_geometry(path, block_rows=16)  # 6 blocks: 21 tiles, ragged last block
    assert list(geometry["sublayer"].values) == names
    assert geometry.attrs["cka_estimator"] == "unbiased HSIC"
    s = len(names)
    for estimator in ("biased", "unbiased"):
        expected = np.array(
            [[linear_cka(x[:, i], x[:, j], estimator) for j in range(s)] for i in range(s)]
        )
        np.testing.assert_allclose(geometry[f"cka_{estimator}"].values, expected, atol=1e-10)
    np.testing.assert_array_equal(geometry["cka"].values, geometry["cka_unbiased"].values)
    cka = geometry["cka"].values
    assert cka[1, 2] == pytest.approx(1.0, abs=1e-9)  # identical up to rotation and scale
    assert np.diag(cka) == pytest.approx(1.0, abs=1e-12)
    assert abs(cka[3, 2]) < 0.1  # independent noise
    assert cka[5, 2] > 0.8
    for j in range(s):
        spectrum = np.linalg.eigvalsh(np.cov(x[:, j].T))
        assert geometry["participation_ratio"].values[j] == pytest.approx(
            participation_ratio(spectrum), rel=1e-9
        )
        twonn = two_nn_dimension(x[:, j].astype(np.float32))
        assert geometry["intrinsic_dimension"].values[j] == pytest.approx(twonn["fit"], rel=1e-9)
        assert geometry["intrinsic_dimension_mle"].values[j] == pytest.approx(
            twonn["mle"], rel=1e-9
        )
        assert geometry["n_duplicates"].values[j] == twonn["n_duplicates"]
    assert geometry["participation_ratio"].values[4] == pytest.approx(13**2 / 37, rel=1e-9)
    assert geometry["n_duplicates"].values[0] >= 10
    assert geometry["n_duplicates"].values[1:].sum() == 0


def test_subsample_is_seeded_and_matches_its_rows(mixed_store):
    path, x, _ = mixed_store
    first = layer_geometry(path, max_samples=40, seed=5, hsic="biased", block_rows=16)
    again = layer_geometry(path, max_samples=40, seed=5, hsic="biased", block_rows=7)
    other = layer_geometry(path, max_samples=40, seed=6, hsic="biased")
    rows = first["row"].values
    assert len(rows) == 40 and np.array_equal(rows, again["row"].values)
    assert not np.array_equal(rows, other["row"].values)
    np.testing.assert_allclose(first["cka"].values, again["cka"].values, atol=1e-12)
    np.testing.assert_array_equal(first["cka"].values, first["cka_biased"].values)
    assert first["cka"].values[2, 5] == pytest.approx(
        linear_cka(x[rows, 2], x[rows, 5], "biased"), rel=1e-10
    )


def test_non_finite_samples_are_left_out_whole(tmp_path):
    rng = np.random.default_rng(2)
    resid = rng.normal(size=(30, 3, 6)).astype(np.float32)
    resid[4, 1, 2] = np.nan  # finite in sublayers 0 and 2: their sums must drop it too
    path = write_store(tmp_path / "n.zarr", resid, ["attn0", "mlp0", "attn1"], 8)
    geometry = layer_geometry(path, sublayers="all", block_rows=8)
    kept = np.delete(resid, 4, axis=0).astype(np.float64)
    assert geometry.attrs["n_samples"] == 29
    assert geometry["cka"].values[0, 2] == pytest.approx(
        linear_cka(kept[:, 0], kept[:, 2]), rel=1e-10
    )


def manifolds(rng, n):
    """Known manifolds embedded in 100 dimensions, one per sublayer, with their dimensions."""
    square = rng.uniform(size=(n, 2)) @ rng.normal(size=(2, 100))
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
    roll = np.c_[t * np.cos(t), 21 * rng.uniform(size=n), t * np.sin(t)]
    roll = roll @ np.linalg.qr(rng.normal(size=(100, 3)))[0].T
    # 5-D manifolds without faces: a uniform 5-cube's faces pull TwoNN down (~4.65 at this N), a
    # flat 5-torus's curvature pushes it up (~5.2, with a spread of 0.2 over seeds).
    gaussian = rng.normal(size=(n, 5)) @ rng.normal(size=(5, 100))
    sphere = rng.normal(size=(n, 6))
    sphere = sphere / np.linalg.norm(sphere, axis=1, keepdims=True)
    sphere = sphere @ np.linalg.qr(rng.normal(size=(100, 6)))[0].T
    noise = rng.normal(size=(n, 100))
    return {
        "square": (square, 2),
        "swiss_roll": (roll, 2),
        "gaussian5": (gaussian, 5),
        "sphere5": (sphere, 5),
        "noise100": (noise, 100),
    }


def test_two_nn_recovers_manifold_dimensions_through_the_store(tmp_path):
    found = manifolds(np.random.default_rng(11), 2000)
    names = list(found)
    resid = np.stack([found[k][0] for k in names], axis=1).astype(np.float32)
    path = write_store(tmp_path / "manifolds.zarr", resid, names, 250)
    geometry = layer_geometry(path, sublayers="all", max_samples=None)
    estimates = dict(zip(names, geometry["intrinsic_dimension"].values, strict=True))
    print({k: round(float(v), 3) for k, v in estimates.items()})
    print(dict(zip(names, np.round(geometry["intrinsic_dimension_mle"].values, 3), strict=True)))
    for name in ("square", "swiss_roll", "gaussian5", "sphere5"):
        assert estimates[name] == pytest.approx(found[name][1], rel=0.10), name
    # A full-dimensional cloud must not pass as low-dimensional (TwoNN saturates well below 100).
    assert estimates["noise100"] > 30


def test_two_nn_collapses_duplicates_instead_of_dividing_by_zero():
    rng = np.random.default_rng(5)
    points = rng.uniform(size=(800, 3)) @ rng.normal(size=(3, 100))
    repeated = np.concatenate([points, points[:200], points[:50]])
    clean, doubled = two_nn_dimension(points), two_nn_dimension(repeated)
    assert doubled["n_duplicates"] == 250 and doubled["n_zero_distance"] == 0
    assert doubled["fit"] == pytest.approx(clean["fit"], rel=1e-12)
    assert np.isfinite(doubled["mle"])
    # Near-duplicates below the tolerance are counted and left out, not given mu = inf.
    near = np.concatenate([points, points[:30] * (1 + 1e-9)])
    nudged = two_nn_dimension(near)
    assert nudged["n_zero_distance"] == 60 and np.isfinite(nudged["fit"])


def test_debiased_participation_ratio_recovers_an_isotropic_width(tmp_path):
    rng = np.random.default_rng(9)
    n, d = 120, 80
    resid = rng.normal(size=(n, 2, d)).astype(np.float32)
    path = write_store(tmp_path / "iso.zarr", resid, ["attn0", "mlp0"], 32)
    geometry = layer_geometry(path, sublayers="all")
    plug_in = geometry["participation_ratio"].values
    debiased = geometry["participation_ratio_debiased"].values
    # The plug-in value is pulled to about n d / (n + d) = 48; the debiased one is near d.
    assert plug_in == pytest.approx(n * d / (n + d), rel=0.1)
    assert debiased == pytest.approx(d, rel=0.1)


def test_random_walk_cka_is_one_over_steps(tmp_path):
    """h_k = sum of k + 1 independent steps: population CKA(h_0, h_k) = 1 / (k + 1). The unbiased
    estimate finds it; the biased one is pulled up by the d / (N + d) floor (the design's random
    walk control)."""
    rng = np.random.default_rng(4)
    n, s, d = 400, 4, 200
    resid = np.cumsum(rng.normal(size=(n, s, d)), axis=1).astype(np.float32)
    path = write_store(tmp_path / "walk.zarr", resid, [f"attn{i}" for i in range(s)], 100)
    geometry = layer_geometry(path, sublayers="all")
    expected = 1.0 / np.arange(1, s + 1)
    np.testing.assert_allclose(geometry["cka_unbiased"].values[0], expected, atol=0.03)
    assert (geometry["cka_biased"].values[0, 1:] > expected[1:] + 0.1).all()
