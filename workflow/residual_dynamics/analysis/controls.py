"""Negative-control recordings: synthetic stores built from a recorded one, for the claims' nulls.

The residual stream accumulates increments by construction, so "correlated across sublayers" or
"cosine rising" hold for any process that sums steps. A control store keeps chosen statistics of
the recording and destroys the rest; every analysis that reads only the store (statistics, MI,
rotations, PCA) runs on it exactly as on a model, and a claim must beat it.

A control store has the recording's shape, dtype, chunking, sublayer names, per-sample arrays and
attributes, with ``control``, ``control_of``, ``control_seed``, ``control_description`` and
``control_versions`` added and ``dataset`` renamed ``<dataset>--<kind>`` (see
:func:`control_attrs`).

Out of core, in two passes over blocks of whole chunks of rows (all sublayers of a block of rows
is what is read at a time; at most a source block and two control blocks are held, about what
the extraction itself holds: 3 x 256 MiB at the paper's scale with 4 MiB chunks):
1. moments of the steps x_{l+1} - x_l (or of the values, for white noise) per sublayer and unit,
   in float64, per chunk (mean and sum of squared deviations), merged chunk by chunk in order;
2. the control, a block at a time (written by a background thread while the next is made), with
   Gaussian noise drawn from one generator per chunk of rows keyed on (seed, kind, chunk index). Both passes group rows by chunk, so the store
   is bit-identical for a seed whatever ``block_rows`` is.

Non-finite values follow :mod:`residual_dynamics.analysis.transitions`: a row counts for a unit
only when all its sublayers are finite. Such (row, unit) pairs are left out of the moments and are
NaN at every sublayer of the control, so the analyses drop the same pairs from both; a warning
gives the counts. A unit with no usable row is NaN throughout its control (warned, never silent).
"""

from __future__ import annotations

import logging
import shutil
import time
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from residual_dynamics.analysis.transitions import row_blocks
from residual_dynamics.io.store import (
    ROW_ARRAYS,
    StoreError,
    create_store,
    finalise,
    open_store,
    package_versions,
    temporary_path,
)

log = logging.getLogger(__name__)

CONTROL_KINDS = ("random_walk", "constant_walk", "white_noise")
CONTROL_DESCRIPTIONS: dict[str, str] = {
    "random_walk": (
        "Matched random walk: each unit starts from its recorded first-sublayer values and takes "
        "independent Gaussian steps with each transition's recorded mean and variance, which keeps "
        "the starts, the drift and how step size changes with depth but destroys any dependence "
        "of a step on the state or on earlier steps."
    ),
    "constant_walk": (
        "Constant-step random walk: as the matched random walk, but every transition of a unit "
        "has that unit's step mean and variance averaged over transitions, which keeps the starts "
        "and the overall step size but destroys the dynamics and any change of step size with "
        "depth."
    ),
    "white_noise": (
        "White noise: every sublayer and unit is drawn independently for each sample with its "
        "recorded mean and variance, which keeps each sublayer's per-unit mean and spread but "
        "destroys all dependence between sublayers."
    ),
}
# Attributes a control adds or replaces; everything else is the recording's.
CONTROL_ATTRS = (
    "control",
    "control_of",
    "control_seed",
    "control_description",
    "control_versions",
    "dataset",
)


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per (sublayer or transition, unit), float64."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> Moments:
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape))

    @classmethod
    def of(cls, values: Iterable[np.ndarray], usable: np.ndarray) -> Moments:
        """Moments of ``values`` (one (rows, units) float64 array per sublayer or transition,
        made one at a time) over the rows where ``usable`` (rows, units) is true."""
        count = usable.sum(axis=0, dtype=np.float64)
        every = bool(usable.all())  # the usual case: no masking to pay for
        means, m2s = [], []
        with np.errstate(invalid="ignore", divide="ignore"):
            for y in values:
                if every:
                    mean = y.sum(axis=0) / count
                    m2s.append(np.square(y - mean).sum(axis=0))
                else:
                    mean = np.where(count > 0, np.where(usable, y, 0.0).sum(axis=0) / count, 0.0)
                    m2s.append(np.square(np.where(usable, y - mean, 0.0)).sum(axis=0))
                means.append(mean)
        return cls(
            np.broadcast_to(count, (len(means), len(count))).copy(), np.stack(means), np.stack(m2s)
        )

    def merge(self, other: Moments) -> Moments:
        """Both sets of rows together (Chan et al.'s pairwise update: no cancellation)."""
        n = self.count + other.count
        with np.errstate(invalid="ignore", divide="ignore"):
            weight = np.where(n > 0, other.count / n, 0.0)
            delta = other.mean - self.mean
            mean = self.mean + delta * weight
            m2 = self.m2 + other.m2 + np.square(delta) * self.count * weight
        return Moments(n, mean, m2)

    @property
    def variance(self) -> np.ndarray:
        """Population variance (ddof 0, as in transitions.py); NaN where no row counted."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.m2 / self.count, np.nan)

    @property
    def mean_or_nan(self) -> np.ndarray:
        return np.where(self.count > 0, self.mean, np.nan)


@dataclass
class NonFinite:
    """What the source's non-finite values cost, for the warning."""

    cells: int = 0  # non-finite values in resid
    pairs: int = 0  # (row, unit) pairs left out: some sublayer of that unit non-finite
    units: np.ndarray | None = None  # per unit: rows left out

    def add(self, x: np.ndarray, usable: np.ndarray) -> None:
        lost = (~usable).sum(axis=0)
        self.units = lost if self.units is None else self.units + lost
        if lost.any():
            self.cells += int(x.size - np.isfinite(x).sum())
            self.pairs += int(lost.sum())


def control_attrs(source_attrs: dict, kind: str, seed: int, store_path: Path | str) -> dict:
    """The control's attributes: the recording's, with the control's own added and ``dataset``
    renamed ``<dataset>--<kind>`` (``model`` unchanged). A recording without ``model`` or
    ``dataset`` attributes is named after its path, results/activations/{model}/{dataset}.zarr."""
    store_path = Path(store_path)
    model = source_attrs.get("model") or store_path.parent.name
    dataset = source_attrs.get("dataset") or store_path.name.removesuffix(".zarr")
    return {
        **source_attrs,
        "control": kind,
        "control_of": {"model": model, "dataset": dataset},
        "control_seed": int(seed),
        "control_description": CONTROL_DESCRIPTIONS[kind],
        "control_versions": {
            k: v
            for k, v in package_versions().items()
            if k in ("residual-dynamics", "numpy", "zarr")
        },
        "dataset": f"{dataset}--{kind}",
        "model": model,
    }


def chunk_ranges(rows: tuple[int, int], chunk_rows: int) -> list[tuple[int, int, int]]:
    """(chunk index, start, stop) of the store's row chunks inside a block of whole chunks."""
    start, stop = rows
    return [(s // chunk_rows, s, min(stop, s + chunk_rows)) for s in range(start, stop, chunk_rows)]


def noise_generator(seed: int, kind: str, chunk: int) -> np.random.Generator:
    """The generator for one chunk of rows: keyed on the chunk's absolute index, so the noise does
    not depend on how chunks are grouped into blocks; the kind is in the key so that two controls
    of one recording share no noise."""
    key = (zlib.crc32(kind.encode()), int(chunk))
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


def source_moments(resid, kind: str, block_rows: int | None) -> tuple[Moments, NonFinite]:
    """Pass 1: moments of the steps (walks) or of the values (white noise) per sublayer and unit,
    per chunk, merged in chunk order (so the sums do not depend on ``block_rows``)."""
    n_rows, n_sub, d = resid.shape
    chunk_rows = resid.chunks[0]
    walk = kind != "white_noise"
    total = Moments.empty((n_sub - 1 if walk else n_sub, d))
    lost = NonFinite(units=np.zeros(d, dtype=np.int64))
    for block in row_blocks(n_rows, chunk_rows, block_rows):
        x = resid[block[0] : block[1]]
        for _, start, stop in chunk_ranges(block, chunk_rows):
            part = x[start - block[0] : stop - block[0]]
            usable = np.isfinite(part).all(axis=1)
            lost.add(part, usable)
            if walk:
                values = (part[:, i + 1].astype(np.float64) - part[:, i] for i in range(n_sub - 1))
            else:
                values = (part[:, i].astype(np.float64) for i in range(n_sub))
            total = total.merge(Moments.of(values, usable))
    return total, lost


def step_parameters(moments: Moments, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard deviation) of the noise per sublayer or transition and unit."""
    mean, variance = moments.mean_or_nan, moments.variance
    if kind == "constant_walk":
        # One step distribution per unit: the average over transitions of the step's mean and
        # variance (every transition counts the same rows of a unit, so a plain average).
        mean = np.broadcast_to(mean.mean(axis=0), mean.shape)
        variance = np.broadcast_to(variance.mean(axis=0), variance.shape)
    return mean, np.sqrt(variance)


def _write_rows(resid_out, rows: tuple[int, int], values: np.ndarray) -> None:
    """A block of rows, all sublayers, into the control store (whole chunks, encoded together)."""
    resid_out[rows[0] : rows[1]] = values


def control_block(
    x: np.ndarray,
    block: tuple[int, int],
    chunk_rows: int,
    kind: str,
    seed: int,
    mean: np.ndarray,
    sd: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Pass 2 for one block of rows ``x`` (rows, sublayers, units) of the source: the control's
    rows in the store's dtype, and how many values overflowed it (float16 tops out at 65504)."""
    out = np.empty_like(x)
    n_sub, d = x.shape[1:]
    usable = np.isfinite(x).all(axis=1)
    every = bool(usable.all())
    chunks = chunk_ranges(block, chunk_rows)
    rngs = [noise_generator(seed, kind, c) for c, _, _ in chunks]

    def noise() -> np.ndarray:
        # Per chunk, one draw per sublayer in sublayer order: the same numbers whatever the block.
        # float32 draws: twice as fast, and ample resolution for noise.
        return np.concatenate(
            [
                rng.standard_normal((stop - start, d), dtype=np.float32)
                for rng, (_, start, stop) in zip(rngs, chunks, strict=True)
            ]
        )

    def put(sublayer: int, values: np.ndarray) -> None:
        out[:, sublayer] = values if every else np.where(usable, values, np.nan)

    if kind == "white_noise":
        for i in range(n_sub):
            put(i, mean[i] + sd[i] * noise())
    else:
        # The walks start from the recorded first sublayer, exactly (no float64 round trip).
        put(0, x[:, 0])
        state = x[:, 0].astype(np.float64)
        for i in range(n_sub - 1):
            state += mean[i] + sd[i] * noise()
            put(i + 1, state)
    overflow = (
        0 if out.dtype.itemsize > 2 else int(np.count_nonzero(usable[:, None] & np.isinf(out)))
    )
    return out, overflow


def copy_row_arrays(source, group, n_rows: int) -> None:
    """The per-sample arrays (token counts, token ids, text ids...) as they are in the source;
    any other per-sample array the source holds is copied too."""
    for name in source.array_keys():
        if name in ("resid", "sublayer"):
            continue
        array = source[name]
        if name not in ROW_ARRAYS:
            if array.shape[:1] != (n_rows,):
                log.warning("array %r is not per sample (shape %s): not copied", name, array.shape)
                continue
            group.create_array(
                name,
                shape=array.shape,
                chunks=array.chunks,
                dtype=array.dtype,
                dimension_names=array.metadata.dimension_names,
            )
        group[name][...] = array[...]


def synthesise_control(
    store_path: Path | str,
    out_path: Path | str,
    kind: str,
    seed: int = 0,
    block_rows: int | None = None,
) -> None:
    """Write a negative-control store at ``out_path`` from the recorded store at ``store_path``.

    ``kind`` (see ``CONTROL_DESCRIPTIONS``):

    - ``random_walk``: each unit starts from its recorded first-sublayer values (per sample);
      x_{l+1} = x_l + e with e independent Gaussian whose mean and variance are, per transition l
      and unit, the recorded mean and variance (ddof 0) of the step x_{l+1} - x_l over samples.
      The drift is kept (the mean step), so the walk follows the recording's average trajectory;
      what it destroys is any dependence of a step on the state or on other steps.
    - ``constant_walk``: as ``random_walk`` with each unit's step mean and variance averaged over
      the transitions (the same step distribution at every depth; the drift is kept on average).
    - ``white_noise``: every (sublayer, unit) independent Gaussian over samples with the recorded
      mean and variance of that sublayer and unit.

    Same shape, dtype, chunking, sublayer names, per-sample arrays and attributes as the source
    (:func:`control_attrs`). Deterministic: the same seed gives a bit-identical store whatever
    ``block_rows`` (rows read at a time, rounded down to whole chunks; default one chunk).
    Written at a temporary path and renamed; on an error the temporary store is removed and
    ``out_path`` is left as it was.
    """
    if kind not in CONTROL_KINDS:
        raise ValueError(f"unknown control kind {kind!r}; one of {', '.join(CONTROL_KINDS)}")
    if int(seed) < 0 or int(seed) != seed:
        raise ValueError(f"control seed must be a non-negative integer, not {seed!r}")
    store_path, out_path = Path(store_path), Path(out_path)
    if out_path.resolve() == store_path.resolve():
        raise ValueError(f"a control cannot overwrite its recording ({store_path})")
    source = open_store(store_path)
    resid = source["resid"]
    n_rows, n_sub, d = resid.shape
    if n_sub < 2 and kind != "white_noise":
        raise StoreError(
            f"{store_path}: a walk needs at least two sublayers, the store has {n_sub}"
        )
    started = time.perf_counter()
    moments, lost = source_moments(resid, kind, block_rows)
    mean, sd = step_parameters(moments, kind)
    warn_non_finite(store_path, lost, n_rows, moments)
    log.info(
        "%s control of %s: moments of %d rows x %d sublayers x %d units in %.1f s",
        kind,
        store_path,
        n_rows,
        n_sub,
        d,
        time.perf_counter() - started,
    )

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(out_path)
    try:
        attrs = control_attrs(dict(source.attrs), kind, seed, store_path)
        group = create_store(
            tmp,
            n_rows,
            list(source.attrs["sublayers"]),
            d,
            str(resid.dtype),
            resid.chunks[0],
            attrs,
        )
        copy_row_arrays(source, group, n_rows)
        overflow = 0
        # One background writer (as in the extraction): block b is encoded and written while
        # block b + 1 is made, so at most two blocks of the control are held.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="control-writer") as writer:
            writing = None
            for block in row_blocks(n_rows, resid.chunks[0], block_rows):
                x = resid[block[0] : block[1]]
                out, over = control_block(x, block, resid.chunks[0], kind, int(seed), mean, sd)
                overflow += over
                del x
                if writing is not None:
                    writing.result()  # the previous block is written (and its errors raised)
                writing = writer.submit(_write_rows, group["resid"], block, out)
            if writing is not None:
                writing.result()
        if overflow:
            log.warning(
                "%d values of the %s control overflowed the store's dtype %s (written as inf)",
                overflow,
                kind,
                resid.dtype,
            )
        finalise(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "wrote %s (%s, seed %d) in %.1f s", out_path, kind, seed, time.perf_counter() - started
    )


def warn_non_finite(store_path, lost: NonFinite, n_rows: int, moments: Moments) -> None:
    """Say what non-finite source values cost the control: never silently."""
    if lost.pairs:
        units = np.flatnonzero(lost.units)
        log.warning(
            "%s: %d non-finite values in 'resid'; %d (row, unit) pairs in %d units (at most %d of "
            "%d rows per unit; units %s) are left out of the moments and are NaN in the control, "
            "as the analyses leave them out of the recording",
            store_path,
            lost.cells,
            lost.pairs,
            len(units),
            int(lost.units.max()),
            n_rows,
            ", ".join(map(str, units[:8])) + (" ..." if len(units) > 8 else ""),
        )
    empty = np.flatnonzero((moments.count == 0).all(axis=0))
    if n_rows and len(empty):
        log.warning(
            "%s: %d units have no row finite at every sublayer (units %s): they are NaN "
            "throughout the control",
            store_path,
            len(empty),
            ", ".join(map(str, empty[:8])) + (" ..." if len(empty) > 8 else ""),
        )
