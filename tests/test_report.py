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
