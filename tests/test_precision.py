"""bfloat16 models on the CPU: the rows equal float32's within bfloat16's rounding, and values
beyond float16's range never reach a float16 store silently.

The bound. bfloat16 keeps 8 significant bits, so one rounding changes a value by at most
u = 2^-8 of it (relative). Recording point k (k = 1 for attn0, 2 for mlp0, ..., the final norm
last) has been through k residual additions, each rounding the sum (<= u) and adding a branch
computed from bf16-rounded weights and inputs (a few roundings of the branch, which is no larger
than the stream). So the norm-wise relative error of a row at point k is at most about c * u * k;
we take c = 2, i.e. ``|x_bf16 - x_f32| / |x_f32| <= 2 * 2^-8 * k`` per row and point. Measured on
the tiny models the worst case is 0.5-1.2 u at k = 1 and grows like sqrt(k) (random rounding
signs: 2.5 u at k = 13 for a 6-layer Llama, 3.5 u at k = 5 for Gemma 2), so the bound holds with
at least a 1.6x margin and would catch a real error (a wrong dtype cast, a missed upcast, a
float16 overflow), which is of order 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_extract import extraction, texts, write_toy_dataset

from residual_dynamics.inputs.models import load_model
from residual_dynamics.io.store import open_store
from residual_dynamics.recording.extract import (
    ExtractionError,
    Extractor,
    pad_token_id,
    record_activations,
)
from tiny_models import save_tiny_model

U_BF16 = 2.0**-8


def bf16_tolerance(n_points: int) -> np.ndarray:
    """Allowed norm-wise relative error at recording points 1..n_points (see the module doc)."""
    return 2 * U_BF16 * np.arange(1, n_points + 1)


def relative_errors(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """(rows, points) |got - want| / |want| over the units."""
    return np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy.parquet", texts())


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny_model("llama", tmp_path_factory.mktemp("llama"), n_layers=4)


def record(model_dir: Path, dataset: Path, out: Path, dtype: str, **overrides) -> Path:
    return record_activations(
        model_name="tiny",
        model_spec={"path": str(model_dir), "dtype": dtype},
        dataset_name="toy",
        dataset_path=dataset,
        out_path=out,
        extraction=extraction(**overrides),
        progress=False,
    )


def test_bf16_extraction_gives_the_float32_store_within_bf16_rounding(llama_dir, dataset, tmp_path):
    full = open_store(record(llama_dir, dataset, tmp_path / "f32.zarr", "float32"))
    half = open_store(record(llama_dir, dataset, tmp_path / "bf16.zarr", "bfloat16"))
    assert half.attrs["dtype"] == "bfloat16" and half["resid"].dtype == np.float32  # upcast
    want, got = full["resid"][:], half["resid"][:]
    error = relative_errors(got, want)
    assert (error <= bf16_tolerance(want.shape[1])).all(), error.max(axis=0) / U_BF16
    # Not trivially equal: the bf16 forward really ran in bf16.
    assert error.max() > U_BF16 / 4
    for name in ("text_id", "token_id", "n_tokens", "token_position"):
        np.testing.assert_array_equal(half[name][:], full[name][:])


@pytest.mark.parametrize("family", ["gpt2", "gemma2", "bert"])
def test_bf16_rows_of_other_families_are_within_bf16_rounding(family, tmp_path):
    path = save_tiny_model(family, tmp_path / family, n_layers=3)
    rows = {}
    for dtype in ("float32", "bfloat16"):
        loaded = load_model(family, {"path": str(path), "dtype": dtype}, device="cpu")
        assert next(loaded.model.parameters()).dtype == getattr(torch, dtype)
        seqs = [loaded.tokenizer(t)["input_ids"] for t in texts()]
        extractor = Extractor(loaded.model, pad_token_id(loaded.tokenizer))
        rows[dtype] = extractor.run_batch(seqs, [[len(s) - 1] for s in seqs]).numpy()
    error = relative_errors(rows["bfloat16"], rows["float32"])
    assert (error <= bf16_tolerance(error.shape[1])).all(), error.max(axis=0) / U_BF16


def test_bf16_rows_beyond_float16_range_are_refused_by_a_float16_store(
    llama_dir, dataset, tmp_path
):
    """bf16 has float32's range, so a bf16 model can hand over rows a float16 store cannot hold:
    the store refuses them with the fix; a float32 store holds them."""
    loud = tmp_path / "loud"
    loaded = load_model("tiny", {"path": str(llama_dir)}, device="cpu")
    with torch.no_grad():
        loaded.model.get_input_embeddings().weight.mul_(1e7)  # |x| ~ 1e5 > 65504
    loaded.model.save_pretrained(loud)
    loaded.tokenizer.save_pretrained(loud)
    out = tmp_path / "half.zarr"
    with pytest.raises(ExtractionError, match="store_dtype: float32") as caught:
        record(loud, dataset, out, "bfloat16", store_dtype="float16")
    assert "beyond the range of extraction.store_dtype 'float16'" in str(caught.value)
    assert not out.exists()
    fixed = open_store(record(loud, dataset, tmp_path / "full.zarr", "bfloat16"))
    assert np.isfinite(fixed["resid"][:]).all() and np.abs(fixed["resid"][:]).max() > 65504
