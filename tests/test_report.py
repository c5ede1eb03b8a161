"""The report page: built from stores, self-contained, and rendering has no side effects."""

from __future__ import annotations

import pytest

from residual_dynamics.io.store import create_store, finalise, temporary_path
from residual_dynamics.report.page import Section, render


def make_store(path, norm: str):
    tmp = temporary_path(path)
    create_store(tmp, 3, ["attn0", "mlp0"], 4, "float32", 3, {"model": "m", "norm": norm})
    finalise(tmp, path)
    return path


def test_render_twice_gives_the_same_page_and_leaves_sections_alone(tmp_path):
    sections = [
        Section("m", "d", make_store(tmp_path / "a.zarr", "post"), notes=["a note"]),
        Section("m", "e", make_store(tmp_path / "b.zarr", "pre")),
    ]
    first = render(sections, title="t", config={})
    second = render(sections, title="t", config={})
    assert first.count("class='note'") == second.count("class='note'") == 4
    assert [s.notes for s in sections] == [["a note"], []]
    assert "post-norm" in first and "a note" in first
    assert "http" not in first.split("<body>", 1)[1]  # nothing fetched at view time


def test_module_section_manifest_round_trips_and_renders_escaped(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from residual_dynamics.report.page import (
        Figure,
        Table,
        read_section_manifest,
        write_section_manifest,
    )

    png = tmp_path / "panel.png"
    fig, ax = plt.subplots(figsize=(1, 1))
    fig.savefig(png)
    plt.close(fig)
    manifest = tmp_path / "sections" / "study.json"
    write_section_manifest(
        manifest,
        title="A study",
        anchor="study",
        intro="what it shows",
        figures=[Figure(png, "Panel", "a caption", "p1")],
        tables=[Table("Scores <raw>", ["head", "score"], [["0.1", 0.25], ["1.2", float("nan")]])],
        notes=["a note"],
    )
    module = read_section_manifest(manifest)
    assert module.title == "A study" and module.figures[0].png == png
    page = render(
        [Section("m", "d", make_store(tmp_path / "a.zarr", "pre"))],
        title="t",
        config={},
        modules=[module],
    )
    assert "<h2 id='study'>A study</h2>" in page and "href='#study'" in page
    assert "Scores &lt;raw&gt;" in page  # table titles are escaped
    assert "<td>0.25</td>" in page and "<td>n/a</td>" in page
    assert page.count("data:image/png;base64,") == 1


def summary_with(correlation, cosine, velocity, mi, kinds=None, rotations=0.0, rho=0.5):
    """A summary.json as build_summary writes it, with chosen per-transition means."""
    kinds = kinds or ["within" if t % 2 == 0 else "cross" for t in range(len(correlation))]

    def by_kind(values):
        return {
            k: sum(v for v, kk in zip(values, kinds, strict=True) if kk == k)
            / max(1, kinds.count(k))
            for k in ("within", "cross")
        }

    return {
        "per_transition": {
            "correlation": correlation,
            "cosine": cosine,
            "velocity": velocity,
            "mi_kde": mi,
        },
        "by_kind": {"correlation": by_kind(correlation), "velocity": by_kind(velocity)},
        "correlation_rises_with_depth": rho,
        "rotations": {
            "nulls": {
                "ar1": {
                    "frac_beyond95": rotations,
                    "binom_p_beyond95": 1e-6 if rotations > 0.2 else 0.5,
                }
            }
        },
    }


def test_claims_read_the_paper_signatures_from_a_summary():
    from residual_dynamics.paper.claims import evaluate

    # The paper's shape: high, rising correlation (within > cross), cosine rising, velocity
    # peaking at the end and faster across layers, MI dropping after t0.
    paper_like = summary_with(
        correlation=[0.85, 0.82, 0.9, 0.88, 0.95],
        cosine=[0.5, 0.7, 0.9, 0.85, 0.99],
        velocity=[0.5, 2.0, 1.0, 5.0, 24.0],
        mi=[4.3, 2.7, 1.4, 1.0, 1.3],
        rotations=0.5,
    )
    got = evaluate(paper_like, None)
    assert got["corr_early"] == (0.85, True)
    assert got["corr_rises"] == (0.5, True)
    assert got["corr_within"][1] is True  # within (0.9) > cross (0.85)
    assert got["cosine_rises"][0] == pytest.approx((0.9 + 0.85 + 0.99) / 3 - 0.5)
    assert got["velocity_late"] == (1.0, True)
    # velocity within (0.5, 1, 24) mean 8.5 vs cross (2, 5) mean 3.5: within is faster here
    assert got["velocity_cross"] == (pytest.approx(5.0), False)
    # the median of the later transitions (1.35) against t0, not their minimum
    assert got["mi_drop"] == (pytest.approx(1.35 / 4.3), True)
    one_dip = summary_with(
        correlation=[0.85] * 5, cosine=[0.5] * 5, velocity=[1.0] * 5, mi=[4.3, 4.0, 1.0, 4.1, 4.2]
    )
    assert evaluate(one_dip, None)["mi_drop"] == (pytest.approx(4.05 / 4.3), False)
    assert got["rotations"] == (0.5, True)
    # Figures 3-4 switched off: not comparable, not a crash and not a pass.
    assert got["cae_ev_rises"] == (None, None) and got["teleports"] == (None, None)

    flat = summary_with(
        correlation=[0.3, 0.4, 0.2, 0.3, 0.1],
        cosine=[0.9, 0.5, 0.5, 0.5, 0.5],
        velocity=[9.0, 1.0, 1.0, 1.0, 1.0],
        mi=[1.0, 0.9, 0.8, 0.9, 1.0],
        rho=-0.4,
    )
    got = evaluate(
        flat,
        {"pca": {"cumulative_at_first": 0.5, "cumulative_at_last": 0.2, "later_need_fewer": False}},
    )
    assert [got[k][1] for k in ("corr_early", "corr_rises", "cosine_rises", "velocity_late")] == [
        False,
        False,
        False,
        False,
    ]
    assert got["mi_drop"][1] is False and got["rotations"][1] is False
    assert got["pca_later"] == (pytest.approx(-0.3), False)


def test_controls_are_the_untrained_twin_and_the_shuffled_texts_the_runs_record():
    from residual_dynamics.config.schema import recordings
    from residual_dynamics.paper.claims import controls_of

    config = {
        "models": {
            "m": {"package": "p"},
            "m_random": {"package": "p", "init": "random"},
            "other_random": {"package": "q", "init": "random"},
        },
        "datasets": {"d": {"builtin": "x"}, "d_shuf": {"variant_of": "d", "shuffle_tokens": True}},
        "runs": [{"models": ["m", "m_random", "other_random"], "datasets": ["d", "d_shuf"]}],
    }

    def controls(model, dataset):
        return controls_of(config["models"], config["datasets"], recordings(config), model, dataset)

    assert controls("m", "d") == {
        "untrained twin": ("m_random", "d"),
        "shuffled tokens": ("m", "d_shuf"),
    }
    assert controls("m_random", "d") == {"shuffled tokens": ("m_random", "d_shuf")}
    assert controls("m", "d_shuf") == {"untrained twin": ("m_random", "d_shuf")}
    # the negative-control recordings made from a store (config verdicts.controls)
    with_walk = controls_of(
        config["models"],
        config["datasets"],
        [*recordings(config), ("m", "d--random_walk")],
        "m",
        "d",
    )
    assert with_walk["random walk"] == ("m", "d--random_walk")
    config["runs"] = [{"models": ["m"], "datasets": ["d"]}]  # controls defined but not recorded
    assert controls("m", "d") == {}


def test_page_shows_claims_beside_controls_and_the_comparison(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from residual_dynamics.paper.captions import add_claim_verdicts
    from residual_dynamics.paper.claims import evaluate
    from residual_dynamics.report.page import Figure

    good = evaluate(summary_with([0.9, 0.8, 0.95], [0.5, 0.8, 0.9], [1, 2, 3], [3, 1, 1]), None)
    bad = evaluate(summary_with([0.1, 0.2, 0.1], [0.9, 0.5, 0.4], [3, 2, 1], [1, 1, 1]), None)
    png = tmp_path / "c.png"
    fig, _ = plt.subplots(figsize=(1, 1))
    fig.savefig(png)
    plt.close(fig)
    section = Section(
        "m",
        "d",
        make_store(tmp_path / "a.zarr", "pre"),
        claims=good,
        controls={"untrained twin": (("m_random", "d"), bad)},
    )
    page = render(
        [section],
        title="t",
        config={"pca": {"n_components": 7}},
        comparison=[Figure(png, "Across models", "curves", "curves")],
    )
    table = page.split("The paper's claims, measured here and on this recording's controls")[1]
    table = table.split("</table>")[0]
    assert "m_random" in table and table.count("title='reproduced'") >= 4
    assert "title='not reproduced'" in table and "<span class='no'>✗</span>" in table
    assert "id='across--curves'" in page and "Claims at a glance" in page
    assert "<b>pca</b>: n_components 7" in page  # settings shown outside the collapsed config
    captions = add_claim_verdicts(
        {"fig1c": ("1C", "text"), "fig2b": ("2B", "<b>Verdict:</b> x")}, good
    )
    assert "reproduced" in captions["fig1c"][1] and captions["fig2b"][1] == "<b>Verdict:</b> x"


def test_comparison_figure_overlays_recordings_on_normalised_depth():
    from residual_dynamics.paper.comparison import comparison_figure, recording_styles

    config = {
        "models": {"a": {"package": "p"}, "a0": {"package": "p", "init": "random"}},
        "datasets": {"d": {}, "s": {"variant_of": "d", "shuffle_tokens": True}},
    }
    recordings = [("a", "d"), ("a", "s"), ("a0", "d")]
    styles = recording_styles(config["models"], config["datasets"], recordings)
    assert styles["a", "d"]["color"] == styles["a0", "d"]["color"]  # twins share a colour
    assert [styles[r]["ls"] for r in recordings] == ["-", "--", ":"]
    short = summary_with([0.9, 0.8, 0.95], [0.5, 0.8, 0.9], [1, 2, 4], [3, 1, 1])
    deep = summary_with([0.9] * 7, [0.5] * 7, [1, 1, 1, 1, 1, 1, 8], [2] * 7)
    fig = comparison_figure({("a", "d"): short, ("a", "s"): deep, ("a0", "d"): short}, styles)
    velocity_axis = fig.axes[2]
    lines = [line for line in velocity_axis.get_lines() if line.get_label() == "a · s"]
    x, y = lines[0].get_data()
    assert x[0] == 0 and x[-1] == 1 and len(x) == 7  # 7 transitions spread over depth 0-1
    assert max(y) == 1.0  # velocity divided by its peak


def test_time_per_step_names_each_rows_rule(tmp_path):
    """Benchmark files are results/benchmarks/<rule>/<wildcards>.tsv: each row names its rule."""
    benchmarks = tmp_path / "benchmarks"
    for rule, what, seconds in [("pca", "minilm--pydoc", 3.5), ("train_model", "affine_gpt", 40)]:
        (benchmarks / rule).mkdir(parents=True)
        (benchmarks / rule / f"{what}.tsv").write_text(f"s\th:m:s\n{seconds}\t0:00:03\n")
    (benchmarks / "broken.tsv").write_text("")  # unreadable files are left out, not fatal
    page = render(
        [Section("m", "d", make_store(tmp_path / "a.zarr", "pre"))],
        title="t",
        config={},
        benchmarks=sorted(benchmarks.rglob("*.tsv")),
    )
    timings = page.split("time taken per step")[1].split("</details>")[0]
    assert "<td>pca: minilm--pydoc</td><td>3.5</td>" in timings
    assert "<td>train_model: affine_gpt</td><td>40.0</td>" in timings
    assert "<th>total</th><th>43.5</th>" in timings


@pytest.mark.parametrize("cae, perturbation", [(True, True), (False, True), (True, False)])
def test_one_figures_job_draws_the_asked_panels_and_reads_only_their_inputs(
    monkeypatch, cae, perturbation
):
    """The figures rule draws every figure whose panels it outputs, and reads an analysis only
    when a panel needs it: the CAE's and the perturbations' inputs are absent when off."""
    from residual_dynamics.paper import figures

    calls = []
    for name in ("figure_1", "figure_2", "figure_3", "figure_4abc", "figure_4d"):
        monkeypatch.setattr(
            figures, name, lambda *data, _n=name, **kw: calls.append((_n, data, sorted(kw)))
        )
    outputs = {p: f"{p}.png" for p in ("fig1b", "fig1h", "fig2a", "fig4a", "fig4c")}
    if cae:
        outputs.update({p: f"{p}.png" for p in ("fig3b", "fig3c", "fig3d")})
    if perturbation:
        outputs.update({"fig4d": "fig4d.png", "fig4e": "fig4e.png"})
    loaded = []

    def load(name):
        loaded.append(name)
        return name

    drawn = figures.recording_figures(
        load, outputs=outputs, formats=["png"], dpi=50, reading="transitions", label="m on d"
    )
    expected = ["1", "2", *(["3"] if cae else []), "4A-4C", *(["4D-4E"] if perturbation else [])]
    assert drawn == expected
    assert [c[0] for c in calls] == [
        {"1": "figure_1", "2": "figure_2", "3": "figure_3"}.get(d, "figure_4abc")
        if d != "4D-4E"
        else "figure_4d"
        for d in expected
    ]
    assert calls[0][1] == ("means", "stats", "mi") and calls[1][1] == ("means", "rotations")
    assert ("cae" in loaded) is cae and ("perturbation" in loaded) is perturbation
    assert all("outputs" in kw and "dpi" in kw for _, _, kw in calls)
