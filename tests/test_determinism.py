"""Bit-reproducibility of the Dask analyses: the same store gives the same bits every run.

Arrays the driver puts into a Dask graph reach a distributed worker deserialized inside a message
buffer, at an offset that changes between runs (often not a multiple of 8 bytes). NumPy's matmul
copies such an operand into an aligned C-ordered buffer but hands an aligned Fortran-ordered one
(eigenvectors from ``eigh``) to BLAS as it is, and the two BLAS kernels sum in different orders:
``sublayer_cumulative`` of two runs of ``pca_fit`` differed by 1 ulp. The tasks now copy what they
receive (``transitions.task_array``); these tests plant every alignment and layout directly, then
compare a real LocalCluster run with the in-process scheduler.
"""

from __future__ import annotations

import dask
import numpy as np
import pytest
from test_transitions import NAMES, write_store

from residual_dynamics.analysis.cluster import dask_client
from residual_dynamics.analysis.pca import _moments, _project, pca_fit
from residual_dynamics.analysis.transitions import (
    _tile,
    row_blocks,
    transition_statistics,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(7)
    n, s, d = 48, len(NAMES), 32
    resid = (np.cumsum(rng.normal(size=(n, s, d)), axis=1) + 20.0).astype(np.float32)
    return str(write_store(tmp_path_factory.mktemp("det") / "s.zarr", resid, chunk_rows=4))


def _placed(a: np.ndarray, offset: int, order: str) -> np.ndarray:
    """A copy of ``a`` in ``order`` starting ``offset`` bytes into a buffer, as a worker may
    receive it (offsets not a multiple of 8 leave it unaligned)."""
    a = np.array(a, order=order)
    raw = np.zeros(a.nbytes + 128, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64 + offset  # ``offset`` bytes past a 64-byte boundary
    out = np.ndarray(a.shape, a.dtype, buffer=raw[start : start + a.nbytes], strides=a.strides)
    out[...] = a
    assert out.ctypes.data % 64 == offset and out.flags[f"{order}_CONTIGUOUS"]
    return out


def _variants(a: np.ndarray):
    return [_placed(a, offset, order) for order in ("F", "C") for offset in (0, 3, 4, 8, 16, 40)]


def _flat(result) -> list[np.ndarray]:
    if isinstance(result, (list, tuple)):
        return [x for part in result for x in _flat(part)]
    return [np.asarray(result)]


def _same(results) -> bool:
    flat = [_flat(r) for r in results]
    return all(
        all(np.array_equal(x, y, equal_nan=True) for x, y in zip(flat[0], other, strict=True))
        for other in flat[1:]
    )


def test_projection_sums_ignore_basis_alignment_and_layout(store):
    rng = np.random.default_rng(0)
    # eigh returns Fortran-ordered eigenvectors; the driver slices the leading ones.
    basis = np.linalg.eigh(np.cov(rng.normal(size=(32, 200))))[1][:, ::-1][:, :8]
    mean = rng.normal(size=32) + 20.0
    rows = row_blocks(48, 4)
    for r in rows[:3]:
        sums = [_project(store, r, slice(0, 6), mean, b)[1] for b in _variants(basis)]
        assert _same(sums), f"rows {r}: partial sums depend on how the basis was stored"
        moved = [_project(store, r, slice(0, 6), m, basis)[1] for m in _variants(mean)]
        assert _same(moved)


def test_block_moments_ignore_shift_alignment(store):
    rng = np.random.default_rng(1)
    shift = rng.normal(size=32) + 20.0
    assert _same([_moments(store, (4, 8), slice(0, 6), s) for s in _variants(shift)])
    shift2 = rng.normal(size=(6, 32)) + 20.0
    tiles = [_tile(store, (4, 8), (3, 29), slice(0, 6), s) for s in _variants(shift2)]
    assert _same(tiles)


def test_local_cluster_gives_the_same_bits_as_the_in_process_scheduler(store):
    def run():
        t = transition_statistics(store, tile_mib=0.01, bootstrap=20)  # several unit tiles too
        p = pca_fit(store, n_components=8, per_sublayer=True)
        return {
            **{f"t.{k}": t[k].values for k in t.data_vars},
            **{k: p[k].values for k in p.data_vars},
        }

    with dask.config.set(scheduler="sync"):
        reference = run()
    with dask_client({"cluster": "local"}, threads=2, memory_limit="1GiB"):
        first, second = run(), run()
    # The worker as threads of this process (dask.worker_process: false, 'auto' on small stores).
    settings = {"cluster": "local", "worker_process": False}
    with dask_client(settings, threads=2, memory_limit="1GiB"):
        third = run()
    for key, value in reference.items():
        for other in (first, second, third):
            assert np.array_equal(value, other[key], equal_nan=True), key
