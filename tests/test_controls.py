"""Negative-control stores: layout and attributes as the recording's, the statistics each control
keeps (within sampling error) and the dependence it destroys, determinism, atomic writes.

Sampling tolerances: the control's noise is drawn with exactly the recorded moments, so over n
samples a control's (ddof 0) step variance divided by the recorded one is chi2(n - 1) / n, a
mean differs from the recorded one by N(0, var / n), and the Pearson r of two independent series
is about N(0, 1 / n). Bounds are those distributions' quantiles at a family-wise error of 1e-6
(Bonferroni over every (transition, unit) checked): a correct control fails with probability
below 1e-6 whatever the seed, while the planted sources differ by far more (asserted first, so
each test can fail).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from residual_dynamics.analysis import controls
from residual_dynamics.analysis.controls import (
    CONTROL_DESCRIPTIONS,
    CONTROL_KINDS,
    source_moments,
    synthesise_control,
)
from residual_dynamics.io.store import (
    ROW_ARRAYS,
    create_store,
    finalise,
    open_store,
    temporary_path,
)

NAMES = ["attn0", "mlp0", "attn1", "mlp1", "attn2", "final"]
N, D = 4000, 8
ALPHA = 1e-6
ATTRS = {
    "model": "tiny-model",
    "dataset": "prose",
    "dataset_hash": "abc123",
    "seed": 7,
    "text_range": [0, 4000],
    "architecture": {"n_layers": 2},
}


def write_store(path, resid: np.ndarray, chunk_rows: int, attrs=None, dtype="float32"):
    tmp = temporary_path(path)
    n = resid.shape[0]
    group = create_store(
        tmp,
        n,
        NAMES[: resid.shape[1]],
        resid.shape[2],
        dtype,
        chunk_rows,
        attrs if attrs is not None else ATTRS,
    )
    group["resid"][:] = resid
    rng = np.random.default_rng(3)
    for name, kind in ROW_ARRAYS.items():
        group[name][:] = rng.integers(0, 2 if kind == "bool" else 1000, n).astype(kind)
    finalise(tmp, path)
    return path


def read(path) -> np.ndarray:
    return np.asarray(open_store(path)["resid"][:], dtype=np.float64)


def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r over samples (axis 0), per unit."""
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def variance_bounds(n: int, k: int) -> tuple[float, float]:
    """Bounds on (control variance / recorded variance) for k checks: chi2(n - 1) / n."""
    q = ALPHA / (2 * k)
    return stats.chi2.ppf(q, n - 1) / n, stats.chi2.isf(q, n - 1) / n


def z_bound(k: int) -> float:
    return stats.norm.isf(ALPHA / (2 * k))


@pytest.fixture(scope="module")
def contracting(tmp_path_factory):
    """Strongly state-dependent steps: x_{l+1} - c = -0.8 (x_l - c) + drift + noise, with a step
    size that changes with the transition and the unit."""
    rng = np.random.default_rng(0)
    scale = np.linspace(0.5, 2.0, D)
    sigma = [1.0, 0.4, 1.6, 0.5, 1.3]
    x = np.empty((N, len(NAMES), D))
    x[:, 0] = 20 + scale * rng.normal(size=(N, D))
    for i, s in enumerate(sigma):
        x[:, i + 1] = 20 - 0.8 * (x[:, i] - 20) + 0.1 * i + s * scale * rng.normal(size=(N, D))
    path = tmp_path_factory.mktemp("contracting") / "prose.zarr"
    return write_store(path, x.astype(np.float32), chunk_rows=500)


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """A plain random walk: consecutive sublayers strongly correlated."""
    rng = np.random.default_rng(1)
    scale = np.linspace(0.5, 2.0, D)
    x = 20 + np.cumsum(scale * rng.normal(size=(N, len(NAMES), D)), axis=1)
    path = tmp_path_factory.mktemp("drifting") / "prose.zarr"
    return write_store(path, x.astype(np.float32), chunk_rows=500)


@pytest.fixture(scope="module")
def made(contracting, drifting, tmp_path_factory):
    """Each kind of control, once (walks from the contracting store, white noise from the walk)."""
    out = tmp_path_factory.mktemp("controls")
    paths = {}
    for kind in CONTROL_KINDS:
        source = drifting if kind == "white_noise" else contracting
        paths[kind] = out / f"prose--{kind}.zarr"
        synthesise_control(source, paths[kind], kind, seed=5)
    return paths


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kind", CONTROL_KINDS)
def test_layout_arrays_and_attributes_are_the_recordings(tmp_path, kind, dtype):
    rng = np.random.default_rng(2)
    x = np.cumsum(rng.normal(size=(45, 5, 6)), axis=1)
    source = write_store(tmp_path / "m" / "prose.zarr", x, chunk_rows=8, dtype=dtype)
    out = tmp_path / "m" / f"prose--{kind}.zarr"
    synthesise_control(source, out, kind, seed=11, block_rows=16)
    src, ctl = open_store(source), open_store(out)
    for a, b in ((src["resid"], ctl["resid"]), *((src[n], ctl[n]) for n in ROW_ARRAYS)):
        assert (a.shape, a.chunks, a.dtype) == (b.shape, b.chunks, b.dtype)
        assert a.metadata.dimension_names == b.metadata.dimension_names
    for name in ROW_ARRAYS:
        np.testing.assert_array_equal(ctl[name][:], src[name][:])
    assert list(ctl["sublayer"][:]) == NAMES[:5]
    assert np.isfinite(ctl["resid"][:]).all()
    attrs, expected = dict(ctl.attrs), dict(src.attrs)
    assert attrs["control"] == kind
    assert attrs["control_of"] == {"model": "tiny-model", "dataset": "prose"}
    assert attrs["control_seed"] == 11
    assert attrs["control_description"] == CONTROL_DESCRIPTIONS[kind]
    assert attrs["dataset"] == f"prose--{kind}"
    assert attrs["model"] == "tiny-model"
    for key in controls.CONTROL_ATTRS:
        attrs.pop(key, None)
        expected.pop(key, None)
    assert attrs == expected  # sublayers, n_samples, store_dtype, hash, seed, text_range...
    assert not temporary_path(out).exists()
    opened = xr.open_zarr(out)
    assert opened["resid"].dims == ("sample", "sublayer", "unit")
    assert opened["resid"].dtype == np.dtype(dtype)
    assert list(opened["sublayer"].values) == NAMES[:5]


def test_a_recording_without_names_is_named_after_its_path(tmp_path):
    x = np.cumsum(np.random.default_rng(0).normal(size=(10, 3, 4)), axis=1)
    source = write_store(tmp_path / "gpt" / "texts.zarr", x, chunk_rows=4, attrs={})
    out = tmp_path / "gpt" / "texts--white_noise.zarr"
    synthesise_control(source, out, "white_noise")
    attrs = open_store(out).attrs
    assert attrs["control_of"] == {"model": "gpt", "dataset": "texts"}
    assert attrs["dataset"] == "texts--white_noise"


def test_random_walk_starts_from_the_recorded_first_sublayer(contracting, made):
    src = open_store(contracting)["resid"][:, 0]
    ctl = open_store(made["random_walk"])["resid"][:, 0]
    np.testing.assert_array_equal(ctl.view(np.uint32), src.view(np.uint32))


def test_random_walk_keeps_each_transitions_step_mean_and_variance(contracting, made):
    src, ctl = np.diff(read(contracting), axis=1), np.diff(read(made["random_walk"]), axis=1)
    k = src.shape[1] * D
    low, high = variance_bounds(N, k)
    ratio = ctl.var(axis=0) / src.var(axis=0)
    assert ((ratio > low) & (ratio < high)).all(), ratio
    # The step size really does change with the transition, so keeping it is checked.
    assert (src.var(0).max(0) / src.var(0).min(0) > 2).all()
    z = np.abs(ctl.mean(0) - src.mean(0)) / np.sqrt(src.var(0) / N)
    assert (z < z_bound(k)).all(), z


def test_random_walk_steps_are_independent_of_the_state_and_of_each_other(contracting, made):
    src, ctl = read(contracting), read(made["random_walk"])
    s = src.shape[1] - 1
    bound = z_bound(2 * s * D) / np.sqrt(N)
    for x, independent in ((src, False), (ctl, True)):
        steps = np.diff(x, axis=1)
        with_state = np.stack([corr(steps[:, i], x[:, i]) for i in range(s)])
        with_next = np.stack([corr(steps[:, i], steps[:, i + 1]) for i in range(s - 1)])
        if independent:
            assert (np.abs(with_state) < bound).all(), with_state
            assert (np.abs(with_next) < bound).all(), with_next
        else:  # the recording's steps depend on the state: the test can fail
            assert (with_state < -0.5).all() and (with_next < -0.5).all()


def test_constant_walk_has_each_units_average_step_at_every_transition(contracting, made):
    src = np.diff(read(contracting), axis=1)
    ctl = np.diff(read(made["constant_walk"]), axis=1)
    np.testing.assert_array_equal(read(made["constant_walk"])[:, 0], read(contracting)[:, 0])
    target_var, target_mean = src.var(0).mean(0), src.mean(0).mean(0)  # (unit,)
    k = src.shape[1] * D
    low, high = variance_bounds(N, k)
    ratio = ctl.var(0) / target_var
    assert ((ratio > low) & (ratio < high)).all(), ratio
    z = np.abs(ctl.mean(0) - target_mean) / np.sqrt(target_var / N)
    assert (z < z_bound(k)).all(), z
    # Constant across transitions, where the recording's is not (a max/min of 2.6).
    spread = ctl.var(0).max(0) / ctl.var(0).min(0)
    assert (spread < high / low).all() and (src.var(0).max(0) / src.var(0).min(0) > 2).all()


def test_white_noise_keeps_means_and_variances_and_no_dependence(drifting, made):
    src, ctl = read(drifting), read(made["white_noise"])
    s = src.shape[1]
    k = s * D
    low, high = variance_bounds(N, k)
    ratio = ctl.var(0) / src.var(0)
    assert ((ratio > low) & (ratio < high)).all(), ratio
    z = np.abs(ctl.mean(0) - src.mean(0)) / np.sqrt(src.var(0) / N)
    assert (z < z_bound(k)).all(), z
    bound = z_bound((s - 1) * D) / np.sqrt(N)
    r_ctl = np.stack([corr(ctl[:, i], ctl[:, i + 1]) for i in range(s - 1)])
    r_src = np.stack([corr(src[:, i], src[:, i + 1]) for i in range(s - 1)])
    assert (r_src > 0.6).all()
    assert (np.abs(r_ctl) < bound).all(), r_ctl


@pytest.fixture
def ragged(tmp_path):
    """203 rows in chunks of 16: the last chunk is partial."""
    x = np.cumsum(np.random.default_rng(4).normal(size=(203, 5, 7)), axis=1)
    return write_store(tmp_path / "r.zarr", x, chunk_rows=16)


@pytest.mark.parametrize("kind", CONTROL_KINDS)
def test_same_seed_same_bits_whatever_block_rows(ragged, tmp_path, kind):
    made = []
    for i, block_rows in enumerate([None, 16, 40, 48, 10_000, 1]):
        out = tmp_path / f"c{i}.zarr"
        synthesise_control(ragged, out, kind, seed=3, block_rows=block_rows)
        made.append(open_store(out)["resid"][:].view(np.uint32))
    for other in made[1:]:
        np.testing.assert_array_equal(other, made[0])
    synthesise_control(ragged, tmp_path / "d.zarr", kind, seed=4)
    different = open_store(tmp_path / "d.zarr")["resid"][:].view(np.uint32)
    # Every sublayer but a walk's recorded start differs.
    first = 1 if kind != "white_noise" else 0
    assert (different[:, first:] != made[0][:, first:]).mean() > 0.99


def test_an_interrupted_write_leaves_no_store_and_keeps_the_old_one(ragged, tmp_path, monkeypatch):
    out = tmp_path / "c.zarr"
    write = controls._write_rows
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("killed while writing")
        write(*args)

    monkeypatch.setattr(controls, "_write_rows", failing)
    with pytest.raises(RuntimeError, match="killed"):
        synthesise_control(ragged, out, "random_walk", seed=1)
    assert not out.exists() and not temporary_path(out).exists()

    monkeypatch.setattr(controls, "_write_rows", write)
    synthesise_control(ragged, out, "random_walk", seed=1)
    before = open_store(out)["resid"][:].view(np.uint32)
    calls.clear()
    monkeypatch.setattr(controls, "_write_rows", failing)
    with pytest.raises(RuntimeError, match="killed"):
        synthesise_control(ragged, out, "random_walk", seed=2)
    assert not temporary_path(out).exists()
    np.testing.assert_array_equal(open_store(out)["resid"][:].view(np.uint32), before)
    assert open_store(out).attrs["control_seed"] == 1


def test_non_finite_rows_are_left_out_per_unit_and_warned(tmp_path, caplog):
    rng = np.random.default_rng(6)
    x = np.cumsum(rng.normal(size=(60, 5, 6)), axis=1).astype(np.float32)
    x[7, 2, 1] = np.nan
    x[30, 0, 3] = np.inf
    x[:, 3, 5] = np.nan  # a unit with no usable row at all
    source = write_store(tmp_path / "n.zarr", x, chunk_rows=16)
    moments, _ = source_moments(open_store(source)["resid"], "random_walk", None)
    steps = np.diff(np.delete(x, 7, axis=0).astype(np.float64), axis=1)[:, :, 1]
    assert (moments.count[:, 1] == 59).all() and (moments.count[:, 5] == 0).all()
    np.testing.assert_allclose(moments.variance[:, 1], steps.var(0), rtol=1e-10)
    for kind in CONTROL_KINDS:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=controls.__name__):
            synthesise_control(source, tmp_path / f"{kind}.zarr", kind)
        text = caplog.text
        assert "62 non-finite values" in text and "62 (row, unit) pairs in 3 units" in text
        assert "1 units have no row finite" in text
        ctl = open_store(tmp_path / f"{kind}.zarr")["resid"][:]
        bad = np.zeros((60, 6), bool)
        bad[7, 1] = bad[30, 3] = True
        bad[:, 5] = True
        assert np.isnan(ctl.transpose(0, 2, 1)[bad]).all()  # every sublayer of those pairs
        assert np.isfinite(ctl.transpose(0, 2, 1)[~bad]).all()  # and nothing else


def test_unknown_kind_and_bad_seed_are_refused(ragged, tmp_path):
    with pytest.raises(ValueError, match="unknown control kind 'shuffle'"):
        synthesise_control(ragged, tmp_path / "c.zarr", "shuffle")
    with pytest.raises(ValueError, match="non-negative"):
        synthesise_control(ragged, tmp_path / "c.zarr", "random_walk", seed=-1)
    with pytest.raises(ValueError, match="cannot overwrite"):
        synthesise_control(ragged, ragged, "random_walk")
    assert not (tmp_path / "c.zarr").exists()


def test_every_kind_has_one_plain_sentence():
    assert tuple(CONTROL_DESCRIPTIONS) == CONTROL_KINDS
    for text in CONTROL_DESCRIPTIONS.values():
        assert text.endswith(".") and text.count(". ") == 0 and "keeps" in text
        assert "destroys" in text
