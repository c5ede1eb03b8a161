"""Write the small inputs of the `.test` run: a 3-layer Llama with random weights and its
word-level tokenizer (models/tiny_llama/) and 40 lines of text (data/texts.txt).

Both are committed, so `snakemake --directory .test --cores 2` needs nothing else; rerun this
(`python .test/make_inputs.py`) only to rebuild them. tests/test_workflow.py checks that the
committed texts and model config are what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from tiny_models import WORDS, save_tiny_model  # noqa: E402

MODEL = HERE / "models" / "tiny_llama"
TEXTS = HERE / "data" / "texts.txt"


def texts(n: int = 40, seed: int = 0) -> str:
    """``n`` lines of 6 to 13 words from the tiny tokenizer's vocabulary (seeded)."""
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(WORDS, size=rng.integers(6, 14))) for _ in range(n)]
    return "\n".join(lines) + "\n"


def main() -> int:
    save_tiny_model("llama", MODEL, n_layers=3)
    TEXTS.parent.mkdir(parents=True, exist_ok=True)
    TEXTS.write_text(texts())
    print(f"wrote {MODEL} and {TEXTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
