"""What the chunk checksum (Zarr v3's crc32c codec) costs the store's writer and its readers.

Two stores of the same float32 activations and chunking (one sublayer of 256 rows x 4096 units,
4 MiB, per chunk, as Llama 3.1 8B's would be): Zarr's default codecs (zstd) and the store's
(zstd then crc32c). The writer writes chunk-aligned row blocks as the extraction does; the readers
read every chunk through ``open_store`` (checked) or plain ``zarr.open_group`` (unchecked, the
earlier reader), whole and per sublayer as the statistics do. Medians of interleaved repeats.

    python benchmarks/bench_store_checksum.py [--rows 1024] [--sublayers 16] [--units 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from residual_dynamics.io.store import checksummed, create_store, finalise, open_store

OUT = Path(__file__).parent / "out" / "store_checksum.json"


def write(path: Path, x: np.ndarray, chunk_rows: int, checksum: bool) -> tuple[float, float]:
    """(wall, CPU) seconds to create and fill a store of ``x`` (chunk-aligned blocks), then finalise it."""
    import residual_dynamics.io.store as store

    names = [f"s{i}" for i in range(x.shape[1])]
    original = store.checksummed
    if not checksum:
        store.checksummed = lambda: [zarr.codecs.ZstdCodec(level=0, checksum=False)]
    try:
        started, cpu = time.perf_counter(), time.process_time()
        tmp = store.temporary_path(path)
        group = create_store(tmp, x.shape[0], names, x.shape[2], "float32", chunk_rows, {})
        resid = group["resid"]
        for start in range(0, x.shape[0], chunk_rows):
            resid[start : start + chunk_rows] = x[start : start + chunk_rows]
        finalise(tmp, path)
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        store.checksummed = original


def read(path: Path, checked: bool, per_sublayer: bool) -> tuple[float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    group = open_store(path) if checked else zarr.open_group(str(path), mode="r")
    resid = group["resid"]
    if per_sublayer:
        for j in range(resid.shape[1]):
            resid[:, j, :]
    else:
        resid[:]
    return time.perf_counter() - started, time.process_time() - cpu


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--sublayers", type=int, default=16)
    parser.add_argument("--units", type=int, default=4096)
    parser.add_argument("--chunk-rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    assert [c.to_dict()["name"] for c in checksummed()] == ["zstd", "crc32c"]
    rng = np.random.default_rng(0)
    # A drifting stream like a residual one (compresses about as little as real activations).
    x = np.cumsum(
        rng.normal(size=(args.rows, args.sublayers, args.units)), axis=1, dtype=np.float32
    )
    root = Path(tempfile.mkdtemp(prefix="bench-crc-"))
    times: dict[str, list[tuple[float, float]]] = {}
    try:
        for repeat in range(args.repeats):
            for checksum in (repeat % 2 == 0, repeat % 2 == 1):  # alternate which goes first
                tag = "crc32c" if checksum else "plain"
                path = root / f"{tag}.zarr"
                shutil.rmtree(path, ignore_errors=True)
                times.setdefault(f"write_{tag}", []).append(
                    write(path, x, args.chunk_rows, checksum)
                )
                for per in (False, True):
                    kind = "per_sublayer" if per else "whole"
                    times.setdefault(f"read_{kind}_{tag}", []).append(read(path, checksum, per))
        # Both stores hold the same numbers; the checked one refuses nothing.
        np.testing.assert_array_equal(open_store(root / "crc32c.zarr")["resid"][:], x)
        sizes = {
            tag: sum(f.stat().st_size for f in (root / f"{tag}.zarr" / "resid").rglob("*"))
            for tag in ("plain", "crc32c")
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mib = x.nbytes / 2**20
    # Wall time is what a job waits; CPU time (all threads) is steadier on a shared machine, and
    # the minimum over repeats is the least disturbed run.
    summary = {
        stat: {
            k: (statistics.median if stat.startswith("median") else min)(
                t[0 if stat.endswith("wall") else 1] for t in v
            )
            for k, v in times.items()
        }
        for stat in ("median_wall", "min_wall", "median_cpu", "min_cpu")
    }
    steps = ("write", "read_whole", "read_per_sublayer")
    result = {
        "shape": list(x.shape),
        "chunk_rows": args.chunk_rows,
        "mib": mib,
        "repeats": args.repeats,
        "load_average": os.getloadavg(),
        "times_s": times,
        **summary,
        "mib_per_s_median_wall": {k: mib / v for k, v in summary["median_wall"].items()},
        "ratio_crc32c_over_plain": {
            stat: {k: s[f"{k}_crc32c"] / s[f"{k}_plain"] for k in steps}
            for stat, s in summary.items()
        },
        "resid_bytes": sizes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("mib", "load_average", "ratio_crc32c_over_plain", "resid_bytes")
            },
            indent=1,
        )
    )
    return result


if __name__ == "__main__":
    main()
