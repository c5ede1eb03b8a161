"""Beyond the paper, wired: the config section and its checks, the plan (which recordings, which
are ablated, which twin is drawn), the verdicts on planted contrasts, the figures and the section
from small synthetic results, and the rules in the DAG (dry run) and in a real run on tiny models.
The analyses themselves are tested in test_layer_geometry, test_local_dynamics and
test_layer_ablation."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from residual_dynamics.analysis.layer_ablation import with_intervals
from residual_dynamics.beyond import config as plan
from residual_dynamics.beyond.figures import FIGURES, write_figures
from residual_dynamics.beyond.section import section_content
from residual_dynamics.beyond.summary import (
    NOT_SPECIFIC,
    Recording,
    claim_verdicts,
    dynamics_numbers,
    load_recording,
    median_band,
    null_directions,
    skipped,
    smallest_nonzero,
)
from residual_dynamics.config.schema import ConfigError, embedded_config
from residual_dynamics.config.validate import validate_config
from residual_dynamics.io.atomic import write_dataset_atomic
from residual_dynamics.report.page import read_section_manifest
from tiny_models import WORDS, save_tiny_model

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------ config and plan


def default_with(**beyond) -> dict:
    config = embedded_config()
    config["beyond"] = {**config["beyond"], **beyond}
    return config


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"jacobians": {"kk": 4}}, "'beyond.jacobians.kk' (did you mean 'k'?)"),
        ({"geometry": {"cka": "fast"}}, "beyond.geometry.cka: 'fast' is not allowed"),
        ({"ablation": {"n_texts": 0}}, "beyond.ablation.n_texts"),
        ({"jacobians": {"device": "gpu"}}, "beyond.jacobians.device"),
        ({"enabeld": True}, "'beyond.enabeld' (did you mean 'enabled'?)"),
    ],
)
def test_bad_keys_and_values_name_the_key(section, named):
    config = embedded_config()
    config["beyond"] = section
    with pytest.raises(ConfigError) as info:
        validate_config(config, REPO)
    assert named in str(info.value)


def test_cross_checks_name_the_key():
    with pytest.raises(ConfigError, match=r"beyond.jacobians.full_max_d: 8192 is greater than"):
        validate_config(default_with(jacobians={"full_max_d": 8192}), REPO)
    only_shuffled = default_with(include_shuffled=False, datasets=[])
    only_shuffled["runs"] = [{"models": ["minilm"], "datasets": ["pydoc_shuffled"]}]
    with pytest.raises(ConfigError, match=r"beyond.include_shuffled: false leaves no recording"):
        validate_config(only_shuffled, REPO)
    with pytest.raises(ConfigError, match=r"beyond.datasets\[1\]: 'pydocs' is recorded in no"):
        validate_config(default_with(datasets=["pydoc", "pydocs"]), REPO)
    # Switched off, the cross-checks are not run.
    off = default_with(enabled=False, datasets=["pydocs"])
    assert validate_config(off, REPO)["beyond"]["enabled"] is False


def test_schema_defaults_and_the_embedded_default():
    filled = validate_config(embedded_config(), REPO)
    beyond = filled["beyond"]
    assert beyond["enabled"] and not beyond["include_shuffled"]
    assert beyond["jacobians"]["full_max_d"] == 1024 and beyond["geometry"]["cka"] == "auto"
    assert beyond["jacobians"]["max_d"] == 256
    schema_only = validate_config({"runs": embedded_config()["runs"], **_names()}, REPO)
    assert schema_only["beyond"]["enabled"] is False
    assert schema_only["beyond"]["jacobians"]["n_texts"] == 100
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    assert paper["beyond"]["enabled"] and paper["beyond"]["jacobians"]["n_texts"] == 100
    assert paper["beyond"]["jacobians"]["full_max_d"] < 4096  # d = 4096: matrix-free
    assert paper["beyond"]["jacobians"]["max_d"] is None


def _names() -> dict:
    config = embedded_config()
    return {"models": config["models"], "datasets": config["datasets"]}


def test_the_plan_of_the_default_run():
    config = validate_config(embedded_config(), REPO)
    recordings = plan.beyond_recordings(config)
    assert ("minilm", "pydoc") in recordings and ("pydoc_llama", "pydoc_shuffled") not in recordings
    assert plan.twin_of(config, "pydoc_llama", "pydoc") == "pydoc_llama_untrained"
    assert plan.twin_of(config, "pydoc_llama_untrained", "pydoc") is None
    drawn = plan.figure_recordings(config)
    # beyond.datasets: [pydoc] in the default (the affine recordings join with `datasets: []`).
    assert drawn == [("minilm", "pydoc"), ("pydoc_llama", "pydoc")]
    ablated, not_ablated = plan.ablation_plan(config, REPO)
    assert ("pydoc_llama", "pydoc") in ablated and ("pydoc_llama_untrained", "pydoc") in ablated
    assert "not a causal LM" in not_ablated["minilm on pydoc"]
    assert set(not_ablated) == {"minilm on pydoc", "minilm_untrained on pydoc"}
    linearised, not_linearised = plan.dynamics_plan(config, REPO)
    assert ("pydoc_llama", "pydoc") in linearised and (
        "pydoc_llama_untrained",
        "pydoc",
    ) in linearised
    assert not_linearised["minilm on pydoc"] == (
        "d = 384 is wider than beyond.jacobians.max_d (256)"
    )
    config["beyond"]["jacobians"]["max_d"] = None
    assert plan.dynamics_plan(config, REPO)[1] == {}
    config["beyond"]["ablation"]["enabled"] = False
    ablated, not_ablated = plan.ablation_plan(config, REPO)
    assert ablated == [] and set(not_ablated.values()) == {plan.ABLATION_OFF}


def test_a_local_model_without_an_lm_head_is_not_ablated(tmp_path):
    bert = save_tiny_model("bert", tmp_path / "bert")
    assert "not a causal LM" in plan.ablation_skip_reason("b", {"path": str(bert)}, tmp_path)
    llama = save_tiny_model("llama", tmp_path / "llama")
    assert plan.ablation_skip_reason("l", {"path": str(llama)}, tmp_path) is None
    data = json.loads((llama / "config.json").read_text())
    data["architectures"] = ["LlamaModel"]
    (llama / "config.json").write_text(json.dumps(data))
    assert "without an LM head" in plan.ablation_skip_reason("l", {"path": str(llama)}, tmp_path)
    assert plan.ablation_skip_reason("h", {"hub": "org/model"}, tmp_path) is None  # its job tells


# ----------------------------------------------------------------- synthetic results, verdicts

SUBLAYERS = ["attn0", "mlp0", "attn1", "mlp1", "attn2", "mlp2"]


def synthetic_dynamics(n_texts=12, early=0.6, late=0.2, seed=0, d=16) -> xr.Dataset:
    """Per-text measures over 6 transitions with a planted early-minus-late contrast."""
    rng = np.random.default_rng(seed)
    names = [*SUBLAYERS, "final"]
    transitions = [f"{a}->{b}" for a, b in zip(names[:-1], names[1:], strict=True)]
    t, k = len(transitions), 4
    ramp = np.linspace(early, late, t)
    noise = lambda *shape: 0.02 * rng.standard_normal(shape)  # noqa: E731
    per = {
        "spectral_radius": 1.1 + noise(n_texts, t),
        "complex_share": 0.3 + noise(n_texts, t),
        "rotation_angle_mean": 0.2 + noise(n_texts, t),
        "rotation_angle_max": 0.9 + noise(n_texts, t),
        "non_normality": 0.1 + noise(n_texts, t),
        "antisymmetric_share": 0.05 + noise(n_texts, t),
        "non_normality_update": ramp + noise(n_texts, t),
        "antisymmetric_share_update": ramp / 2 + noise(n_texts, t),
        "sigma_bottom_bound": np.zeros((n_texts, t)),
        "lanczos_residual": np.zeros((n_texts, t)),
    }
    top = np.sort(1.0 + np.abs(rng.standard_normal((n_texts, t, k))), axis=-1)[..., ::-1]
    data = {name: (("text", "transition"), v) for name, v in per.items()}
    data |= {
        "sigma_top": (("text", "transition", "k"), top),
        "sigma_bottom": (("text", "transition", "k"), 0.5 + 0.1 * rng.random((n_texts, t, k))),
        "eig_modulus": (("text", "transition", "k"), top * 0.9),
        "eig_angle": (("text", "transition", "k"), rng.random((n_texts, t, k))),
        "lyapunov": (("text", "exponent"), np.sort(rng.normal(0.1, 0.05, (n_texts, 3)))[:, ::-1]),
    }
    ds = xr.Dataset(
        data,
        coords={
            "text": np.arange(n_texts),
            "transition": transitions,
            "source": ("transition", names[:-1]),
            "target": ("transition", names[1:]),
            "k": np.arange(1, k + 1),
            "exponent": np.arange(1, 4),
        },
        attrs={"d_model": d, "method": "full"},
    )
    lyap = ds["lyapunov"].values
    return ds.assign(
        lyapunov_mean=("exponent", lyap.mean(0)),
        lyapunov_ci_low=("exponent", lyap.mean(0) - 0.02),
        lyapunov_ci_high=("exponent", lyap.mean(0) + 0.02),
    )


def synthetic_geometry(seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    s = len(SUBLAYERS)
    cka = np.clip(1 - 0.1 * np.abs(np.subtract.outer(np.arange(s), np.arange(s))), 0, 1)
    return xr.Dataset(
        {
            "cka": (("sublayer", "sublayer_b"), cka),
            "intrinsic_dimension": ("sublayer", 5 + rng.random(s)),
            "participation_ratio": ("sublayer", 3 + rng.random(s)),
        },
        coords={"sublayer": SUBLAYERS, "sublayer_b": SUBLAYERS},
        attrs={"n_samples": 40, "cka_estimator": "unbiased HSIC"},
    )


def synthetic_ablation(seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    layers, texts = 3, 10
    counts = rng.integers(5, 20, texts)
    loss = 3 + 0.1 * rng.random((2, layers, texts))
    loss[1, -1] = np.nan  # no swap at the last layer
    intact = np.full(texts, 2.9)
    ablation = xr.Dataset(
        {
            "n_predictions": ("text", counts),
            "loss_intact": ("text", intact),
            "delta_loss_text": (("variant", "layer", "text"), loss - intact),
            "kl_text": (("variant", "layer", "text"), 0.1 + 0.0 * loss),
            "delta_loss": (("variant", "layer"), (loss - intact).mean(-1)),
            "kl": (("variant", "layer"), np.where(np.isnan(loss[..., 0]), np.nan, 0.1)),
            "loss_intact_mean": ((), 2.9),
        },
        coords={
            "variant": ["delete", "swap"],
            "layer": np.arange(layers),
            "text": np.arange(texts),
        },
    )
    return with_intervals(ablation, n_boot=200)


def test_median_band_covers_the_median_and_keeps_missing_columns_missing():
    values = np.random.default_rng(0).normal(size=(30, 3))
    values[:, 2] = np.nan
    band = median_band(values, n_boot=300)
    assert np.all(band["low"][:2] <= band["median"][:2])
    assert np.all(band["median"][:2] <= band["high"][:2])
    assert np.isnan(band["median"][2]) and np.isnan(band["high"][2])


def test_null_directions_are_not_contraction():
    """A post-norm map's two exact zeros (LayerNorm's mean and scale directions) are counted as
    null directions; the contraction is the smallest singular value above them."""
    dynamics = synthetic_dynamics()
    bottom = dynamics["sigma_bottom"].values.copy()
    assert null_directions(dynamics) == 0
    np.testing.assert_allclose(smallest_nonzero(dynamics), bottom.min(-1))
    bottom[..., :2] = 1e-12
    dynamics["sigma_bottom"] = (("text", "transition", "k"), bottom)
    assert null_directions(dynamics) == 2
    np.testing.assert_allclose(smallest_nonzero(dynamics), bottom[..., 2:].min(-1))


def test_verdicts_on_planted_contrasts():
    """Early maps planted more non-normal and rotational than late: reproduced against a twin
    without the contrast, not specific against a twin with it, not reproduced when absent."""
    trained = synthetic_dynamics(early=0.6, late=0.2)
    flat_twin = synthetic_dynamics(early=0.3, late=0.3, seed=1)
    same_twin = synthetic_dynamics(early=0.6, late=0.2)  # the same values: no difference
    assert {v["verdict"] for v in claim_verdicts(trained, flat_twin).values()} == {"reproduced"}
    assert {v["verdict"] for v in claim_verdicts(trained, same_twin).values()} == {NOT_SPECIFIC}
    flat = claim_verdicts(flat_twin, trained)
    assert {v["verdict"] for v in flat.values()} == {"not reproduced"}
    alone = claim_verdicts(trained, None)["non_normal_early"]
    assert alone["verdict"] == "not comparable" and alone["holds"] is True
    assert alone["value"] == pytest.approx(0.4 * 4 / 5, abs=0.03)  # thirds of 6 transitions


def test_figures_and_section_from_small_result_files(tmp_path):
    """Results written to Zarr and read back as the rules do; every figure drawn; the section's
    captions carry the numbers computed from the results."""
    paths = {}
    for name, dyn, geo in (("m", synthetic_dynamics(), synthetic_geometry()),
                           ("m_twin", synthetic_dynamics(early=0.3, late=0.3, seed=1), synthetic_geometry(1))):  # fmt: skip
        for kind, data in (("dynamics", dyn), ("geometry", geo)):
            paths[name, kind] = tmp_path / name / f"{kind}.zarr"
            write_dataset_atomic(data, paths[name, kind], text_as_object=True)
    write_dataset_atomic(synthetic_ablation(), tmp_path / "ablation.zarr", text_as_object=True)
    write_dataset_atomic(skipped("a BERT model is not a causal LM"), tmp_path / "skip.zarr")
    main = load_recording(
        "m", "texts", paths["m", "geometry"], paths["m", "dynamics"], tmp_path / "ablation.zarr"
    )
    twin = load_recording(
        "m_twin", "texts", paths["m_twin", "geometry"], paths["m_twin", "dynamics"],
        tmp_path / "skip.zarr",
    )  # fmt: skip
    assert main.ablated and not twin.ablated
    pngs = {key: tmp_path / "fig" / f"{key}.png" for key in FIGURES}
    write_figures(main, twin, {k: [p, p.with_suffix(".svg")] for k, p in pngs.items()}, dpi=40)
    assert all(p.stat().st_size > 1000 and p.with_suffix(".svg").exists() for p in pngs.values())
    # A matrix-free run (no eigenvalues) and a twin-less recording draw too.
    free = main.dynamics.copy()
    for name in ("spectral_radius", "complex_share"):
        free[name] = free[name] * np.nan
    alone = Recording("m", "texts", main.geometry, free, skipped("switched off"))
    write_figures(alone, None, {k: [tmp_path / "alone" / f"{k}.png"] for k in FIGURES}, dpi=40)
    bare = Recording("w", "texts", main.geometry, skipped("d = 384 is wider"), None)
    write_figures(bare, None, {k: [tmp_path / "bare" / f"{k}.png"] for k in FIGURES}, dpi=40)
    assert all((tmp_path / "bare" / f"{k}.png").exists() for k in FIGURES)

    unlinearised = Recording("w", "texts", main.geometry, skipped("d = 384 is wider"), None)
    content = section_content(
        {("m", "texts"): main, ("m_twin", "texts"): twin, ("w", "texts"): unlinearised},
        [("m", "texts", "m_twin"), ("w", "texts", None)],
        {key: {k: str(p) for k, p in pngs.items()} for key in (("m", "texts"), ("w", "texts"))},
        n_boot=200,
    )
    verdicts = content.pop("verdicts")
    assert [v["verdict"] for v in verdicts] == ["reproduced", "reproduced"]
    assert [v["claim"] for v in verdicts] == ["non_normal_early", "rotational_early"]
    numbers = dynamics_numbers(main.dynamics, n_boot=200)
    captions = {
        f.figure_id.split("--")[-1]: f.caption
        for f in content["figures"]
        if f.figure_id.startswith("m--")
    }
    assert set(captions) == set(FIGURES)
    # Without Jacobians or ablation: only its CKA and dimension figures, and a note says why.
    assert [f.figure_id for f in content["figures"] if f.figure_id.startswith("w--")] == [
        "w--texts--cka",
        "w--texts--dimension",
    ]
    assert any("Lyapunov exponents not run on: w on texts (d = 384" in n for n in content["notes"])
    assert f"{numbers['non_normality_early']:.2f} over the first third" in captions["spectra"]
    assert f"&lambda;<sub>1</sub> = {numbers['lyapunov_top']:.3f}" in captions["lyapunov"]
    assert "deleting layer" in captions["ablation"]
    assert any("swap not run on: m_twin on texts (a BERT model" in n for n in content["notes"])
    assert len(content["tables"][0].rows) == 3
    from residual_dynamics.report.page import write_section_manifest

    write_section_manifest(tmp_path / "section.json", **content)
    section = read_section_manifest(tmp_path / "section.json")
    assert section.title == "Beyond the paper" and len(section.figures) == 7


# -------------------------------------------------------------------------------------- rules


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
         str(workdir), *args],
        capture_output=True, text=True, env=ENV, timeout=timeout, cwd=REPO,
    )  # fmt: skip


def test_the_rules_are_in_the_dag_when_switched_on(tmp_path):
    """A dry run of the .test folder's config with the module on: every rule of the module is
    planned, the BERT model is not ablated, and the report reads the section."""
    on = tmp_path / "beyond.yaml"
    on.write_text(yaml.safe_dump({"beyond": {"enabled": True, "include_shuffled": True}}))
    target = "results/report/index.html"
    result = snakemake(
        REPO / ".test", "-n", "--nolock", target,
        "--configfile", str(REPO / ".test/config/config.yaml"), str(on),
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in output.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    # 4 recordings: tiny_llama on two datasets, its twin and minilm on one.
    assert counts["layer_geometry"] == 4 and counts["local_dynamics"] == 4
    assert counts["layer_ablation"] == 3  # minilm (BERT) is skipped
    assert counts["beyond_figures"] == 3 and counts["beyond_section"] == 1
    off = snakemake(
        REPO / ".test", "-n", "--nolock", target,
        "--configfile", str(REPO / ".test/config/config.yaml"),
    )  # fmt: skip
    assert off.returncode == 0 and "beyond_section" not in off.stdout + off.stderr


@pytest.mark.slow
def test_rules_end_to_end(tmp_path):
    """The module's rules in a real Snakemake run on tiny models up to the section: a Llama, its
    untrained twin and a BERT (not ablated, with the reason)."""
    llama = save_tiny_model("llama", tmp_path / "models" / "llama", n_layers=2)
    bert = save_tiny_model("bert", tmp_path / "models" / "bert", n_layers=2)
    rng = np.random.default_rng(0)
    texts = tmp_path / "texts.txt"
    texts.write_text(
        "\n".join(" ".join(rng.choice(WORDS, size=rng.integers(6, 14))) for _ in range(24))
    )
    config = {
        "models": {
            "llama": {"path": str(llama)},
            "llama_untrained": {"path": str(llama), "init": "random"},
            "bert": {"path": str(bert)},
        },
        "datasets": {"texts": {"file": {"path": str(texts)}, "min_chars": 10, "max_chars": 200}},
        "runs": [{"models": ["llama", "llama_untrained", "bert"], "datasets": ["texts"]}],
        "figures": {"dpi": 50, "formats": ["png"]},
        "beyond": {
            "enabled": True,
            "jacobians": {"n_texts": 3, "k": 3, "lyapunov_k": 2, "n_boot": 100, "device": "cpu"},
            "ablation": {"n_texts": 12, "n_boot": 100, "device": "cpu"},
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    target = "results/beyond/section.json"
    result = snakemake(
        tmp_path,
        "--cores",
        "2",
        "--max-threads",
        "1",
        target,
        "--configfile",
        str(tmp_path / "config.yaml"),
    )
    assert result.returncode == 0, result.stderr[-6000:]
    manifest = json.loads((tmp_path / target).read_text())
    # llama (its twin beside it): 5 panels; bert: 4 (not a causal LM, so no layer ablation).
    assert len(manifest["figures"]) == 9
    assert [row[0] for row in manifest["tables"][0]["rows"]] == ["llama", "llama_untrained", "bert"]
    assert any("bert on texts" in note and "causal LM" in note for note in manifest["notes"])
    dynamics = xr.open_zarr(tmp_path / "results/beyond/llama/texts/local_dynamics.zarr")
    assert dynamics.sizes["text"] == 3 and dynamics.sizes["k"] == 3
    assert dynamics.sizes["exponent"] == 2 and dynamics.attrs["method"] == "full"
    verdicts = json.loads((tmp_path / "results/beyond/verdicts.json").read_text())
    assert {v["twin"] for v in verdicts if v["model"] == "llama"} == {"llama_untrained"}
    assert copy.deepcopy(verdicts)  # plain JSON
