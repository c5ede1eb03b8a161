"""The GPU check (benchmarks/gpu_check.py) runs on the CPU with tiny shapes, so it cannot rot
between the runs on a GPU: every row comes out, and every row that compares numbers agrees."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = (
    "extraction_throughput",
    "rows_bf16_vs_cpu_f32",
    "mi_kde",
    "cae_epoch",
    "perturbation_layer",
    "device_map_split",
)


def test_gpu_check_runs_on_cpu_with_tiny_shapes(tmp_path, capsys):
    main = runpy.run_path(str(REPO / "benchmarks" / "gpu_check.py"))["main"]
    out = tmp_path / "gpu_check.json"
    status = main(["--device", "cpu", "--shape", "tiny", "--out", str(out)])
    table = capsys.readouterr().out
    rows = {row["check"]: row for row in json.loads(out.read_text())}
    assert tuple(rows) == ROWS, table
    assert status == 0, table
    for name in ROWS[1:]:  # the agreement rows: within their stated tolerance
        assert rows[name]["status"] == "ok", (name, table)
        assert rows[name]["value"] == rows[name]["value"], (name, "NaN", table)
    # bf16 really differs from float32 (the comparison is not of a model with itself) ...
    assert 0 < rows["rows_bf16_vs_cpu_f32"]["value"] <= 1
    # ... and throughput is measured but not judged on a CPU with a tiny model.
    assert rows["extraction_throughput"]["status"] == "info"
    assert rows["extraction_throughput"]["value"] > 0
    for name in ROWS:
        assert name in table
