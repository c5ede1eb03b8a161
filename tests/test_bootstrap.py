"""The bootstrap over texts: replicates equal plain numpy on resampled texts, the plan is shared
(paired) across recordings of the same texts, and 95 % intervals cover a known truth."""

from __future__ import annotations

import numpy as np
from test_transitions import small_store, write_store  # noqa: F401  (fixture)

from residual_dynamics.analysis.bootstrap import (
    interval,
    resample_indices,
    text_weights,
    weighted_curves,
)
from residual_dynamics.analysis.transitions import transition_statistics


def test_weights_are_a_seeded_multinomial_plan_shared_by_recordings_of_the_same_texts():
    w = text_weights(40, 25, seed=3)
    assert w.shape == (25, 40) and (w.sum(axis=1) == 40).all()
    np.testing.assert_array_equal(w, text_weights(40, 25, seed=3))
    assert not np.array_equal(w, text_weights(40, 25, seed=4))
    idx = resample_indices(40, 25, seed=3)
    for b in range(25):
        np.testing.assert_array_equal(np.bincount(idx[b], minlength=40), w[b])


def test_replicates_equal_plain_numpy_on_the_resampled_texts(small_store):  # noqa: F811
    path, resid = small_store
    stats = transition_statistics(path, block_rows=16, bootstrap=12, seed=5)
    x = resid[:, :-1, :].astype(np.float64)
    idx = resample_indices(x.shape[0], 12, seed=5)
    for b in range(12):
        xb = x[idx[b]]
        r = [
            np.nanmean(
                [
                    np.corrcoef(xb[:, t, u], xb[:, t + 1, u])[0, 1]
                    for u in range(x.shape[2])
                    if u != 4  # the constant unit
                ]
            )
            for t in range(x.shape[1] - 1)
        ]
        np.testing.assert_allclose(stats["r_boot"].values[b], r, atol=2e-5)
        a, c = xb[:, :-1, :], xb[:, 1:, :]
        cosine = (a * c).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(c, axis=-1))
        np.testing.assert_allclose(stats["cosine_boot"].values[b], cosine.mean(0), rtol=1e-5)
        velocity = np.linalg.norm(c - a, axis=-1).mean(0)
        np.testing.assert_allclose(stats["velocity_boot"].values[b], velocity, rtol=1e-5)
    # no bootstrap asked: none written, the point estimates unchanged
    plain = transition_statistics(path, block_rows=16)
    assert "r_boot" not in plain
    np.testing.assert_array_equal(plain["r"].values, stats["r"].values)


def test_weighted_curves_leave_out_non_finite_rows():
    values = np.array([[1.0, np.nan], [3.0, 4.0], [5.0, 6.0]])
    w = np.array([[1, 1, 1], [0, 2, 1]])
    np.testing.assert_allclose(weighted_curves(values, w), [[3.0, 5.0], [11 / 3, 14 / 3]])


def test_95_percent_intervals_of_the_correlation_cover_the_truth_in_200_replications(tmp_path):
    """A known answer: 6 units whose consecutive sublayers correlate at exactly rho = 0.6 in the
    population, with long tails (Student t, 5 degrees of freedom: the kind of unit a residual
    stream has); the mean correlation's interval from the whole pipeline (a store, Dask moments)
    must contain 0.6 in >= 90 % of 200 seeded replications."""
    rho, n, d = 0.6, 120, 6
    covered = 0
    for rep in range(200):
        rng = np.random.default_rng(rep)
        z = rng.standard_t(5, size=(n, 2, d))
        x0 = z[:, 0]
        x1 = rho * x0 + np.sqrt(1 - rho**2) * z[:, 1]
        resid = np.stack([x0, x1, x1], axis=1).astype(np.float32)  # 3 sublayers, 'all' reading
        path = write_store(tmp_path / f"{rep}.zarr", np.pad(resid, ((0, 0), (0, 4), (0, 0))), 40)
        stats = transition_statistics(path, sublayers="all", bootstrap=200, seed=rep)
        low, high = interval(stats["r_boot"].values[:, 0])
        covered += low <= rho <= high
    assert covered >= 180, f"{covered} of 200 intervals contain rho"


def test_95_percent_intervals_of_a_mean_curve_cover_the_truth_in_200_replications():
    """Per-sample values with a known mean (log-normal: skewed, as velocities are): the weighted
    curve's interval contains the true mean exp(1/2) in >= 90 % of 200 replications."""
    truth, covered = np.exp(0.5), 0
    for rep in range(200):
        values = np.random.default_rng(1000 + rep).lognormal(size=(150, 1))
        low, high = interval(weighted_curves(values, text_weights(150, 400, seed=rep))[:, 0])
        covered += low <= truth <= high
    assert covered >= 180, f"{covered} of 200 intervals contain the mean"
