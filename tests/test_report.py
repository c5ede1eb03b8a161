"""The report page: built from stores, self-contained, and rendering has no side effects."""

from __future__ import annotations

from residual_dynamics.report import Section, render
from residual_dynamics.store import create_store, finalise, temporary_path


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

    from residual_dynamics.report import (
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
