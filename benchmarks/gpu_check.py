"""One-command check of the GPU path: extraction throughput of a Llama 3.1 8B-shaped model
against a bare forward, bf16 rows on the device against float32 on the CPU, MI, one CAE epoch,
one perturbation layer and a model split over GPU and CPU (see
residual_dynamics.recording.device_check for what each row compares and its tolerance).

    python benchmarks/gpu_check.py                          # CUDA, Llama 3.1 8B shape (< 8 min)
    python benchmarks/gpu_check.py --device cpu --shape tiny  # the smoke run the tests do

Prints a table; writes its rows as JSON to --out; exits 1 when a row FAILs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from residual_dynamics.recording.device_check import SHAPES, format_table, run_checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu (default cuda)")
    parser.add_argument("--shape", default="llama8b", choices=sorted(SHAPES))
    parser.add_argument("--only", nargs="*", help="run only these checks (by name)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/gpu_check.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = run_checks(args.device, args.shape, args.only)
    print(format_table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(r) for r in rows], indent=1, default=str))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
