"""The self-contained HTML report: what was run, then per model and dataset every figure.

Figures are embedded as base64 PNG so the page needs no network and no other file at view time.
Later analyses add sections through ``Section`` entries; the frame stays the same.
"""

from __future__ import annotations

import base64
import html
import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from residual_dynamics.io.atomic import write_json, write_text_atomic
from residual_dynamics.io.store import open_store

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1b1b;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} caption{text-align:left;font-weight:600} td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top} th{background:#f3f3f3}
figure{margin:1.2em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.92em;color:#333;margin-top:.4em}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em;margin:.8em 0}
.muted{color:#666;font-size:.9em} code{background:#f4f4f4;padding:0 .2em}
nav a{margin-right:1em}
.yes{color:#0a5fa3;font-weight:600} .no{color:#b35900;font-weight:600} .na{color:#777}
.ns{color:#8a6d00;font-weight:600} td[title]{cursor:help}
table.claims{font-size:.85em} table.claims td{white-space:nowrap}
table.claims td.text{white-space:normal;min-width:16em} table.claims th{font-weight:600}
.scroll{overflow-x:auto}
"""

# A verdict's mark and style (its words are claims.verdict_word's).
MARKS = {True: ("yes", "✓"), False: ("no", "✗"), None: ("na", "–")}
# The verdicts of paper.verdicts (claims.json): style and mark of each word.
VERDICT_MARKS = {
    "reproduced": ("yes", "✓"),
    "not specific": ("ns", "≈"),
    "not reproduced": ("no", "✗"),
    "not comparable": ("na", "–"),
}
VERDICT_LEGEND = (
    "✓ reproduced (holds, and beats every control that decides it beyond the bootstrap "
    "interval), ≈ not specific (holds, but as strongly in a named control), ✗ not reproduced, "
    "– not comparable (no value, or no deciding control recorded); hover a cell for what decided it"
)


@dataclass
class Figure:
    png: Path
    title: str
    caption: str
    figure_id: str


@dataclass
class Section:
    model: str
    dataset: str
    store: Path
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # claims.evaluate() of this recording, and of its controls: label -> ((model, dataset), claims)
    claims: dict = field(default_factory=dict)
    controls: dict = field(default_factory=dict)
    # paper.verdicts' record of every claim on this recording (claims.json): key -> record
    verdicts: dict = field(default_factory=dict)

    @property
    def anchor(self) -> str:
        return f"{self.model}--{self.dataset}"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list]


@dataclass
class ModuleSection:
    """A section that a module (a related study, the reductions) adds to the page.

    Modules write it as a JSON manifest with ``write_section_manifest``; the report rule reads every
    manifest listed in ``REPORT_SECTIONS`` (workflow/rules/common.smk) and renders it after the
    per-recording sections. Captions, intro and notes are HTML: escape any text that comes from
    data or config with ``html.escape`` before putting it there.
    """

    title: str
    anchor: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_section_manifest(
    path: Path | str,
    *,
    title: str,
    anchor: str,
    intro: str = "",
    figures: list[Figure] = (),
    tables: list[Table] = (),
    notes: list[str] = (),
) -> None:
    """Write a module's report section (figures are referenced by path, embedded at render time)."""
    manifest = {
        "title": title,
        "anchor": anchor,
        "intro": intro,
        "figures": [
            {"png": str(f.png), "title": f.title, "caption": f.caption, "id": f.figure_id}
            for f in figures
        ],
        "tables": [{"title": t.title, "columns": list(t.columns), "rows": t.rows} for t in tables],
        "notes": list(notes),
    }
    write_json(path, manifest)


def read_section_manifest(path: Path | str) -> ModuleSection:
    data = json.loads(Path(path).read_text())
    return ModuleSection(
        title=data["title"],
        anchor=data["anchor"],
        intro=data.get("intro", ""),
        figures=[
            Figure(Path(f["png"]), f["title"], f["caption"], f["id"]) for f in data["figures"]
        ],
        tables=[Table(t["title"], t["columns"], t["rows"]) for t in data.get("tables", [])],
        notes=data.get("notes", []),
    )


def _cell(value) -> str:
    if isinstance(value, float):
        return "n/a" if not np.isfinite(value) else f"{value:.4g}"
    return html.escape(str(value))


def _data_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in table.rows
    )
    return (
        f"<div class='scroll'><table class='data'><caption>{html.escape(table.title)}</caption>"
        f"<tr>{head}</tr>{body}</table></div>"
    )


def _figure(anchor: str, fig: Figure) -> str:
    return (
        f"<figure id='{html.escape(anchor)}--{html.escape(fig.figure_id)}' class='panel'>"
        f"<img alt='{html.escape(fig.title)}' src='{_img(fig.png)}'>"
        f"<figcaption><b>{html.escape(fig.title)}.</b> {fig.caption}</figcaption></figure>"
    )


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _read_benchmarks(benchmarks: list[Path]) -> list[tuple[str, float, float]]:
    """(step, seconds, end time) of every readable Snakemake benchmark file. The workflow writes
    them as ``benchmarks/<rule>/<wildcards>.tsv``: the step reads ``<rule>: <wildcards>``."""
    rows = []
    for path in benchmarks:
        path = Path(path)
        try:
            frame = pd.read_csv(path, sep="\t")
            end = path.stat().st_mtime
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            continue
        if "s" in frame and len(frame):
            rows.append((f"{path.parent.name}: {path.stem}", float(frame["s"].iloc[0]), end))
    return rows


def _timings(rows: list[tuple[str, float, float]]) -> str:
    if not rows:
        return "<p class='muted'>no timings recorded</p>"
    total = sum(s for _, s, _ in rows)
    cells = "".join(f"<tr><td>{html.escape(n)}</td><td>{s:.1f}</td></tr>" for n, s, _ in rows)
    return (
        f"<table><tr><th>step</th><th>seconds</th></tr>{cells}"
        f"<tr><th>total</th><th>{total:.1f}</th></tr></table>"
    )


def _claim_cell(value, holds) -> str:
    from residual_dynamics.paper.claims import verdict_word

    css, mark = MARKS[holds]
    number = "" if value is None else f"{_cell(float(value))} "
    return f"<td title='{verdict_word(holds)}'>{number}<span class='{css}'>{mark}</span></td>"


def _verdict_cell(record: dict | None, with_value: bool = False) -> str:
    """A claims.json record as a cell: its mark (and value with interval), what decided it on
    hover."""
    if not record:
        return "<td class='na'>–</td>"
    css, mark = VERDICT_MARKS[record["verdict"]]
    number = ""
    if with_value and record.get("value") is not None:
        number = _cell(float(record["value"]))
        if record.get("ci"):
            low, high = record["ci"]
            number += f" <span class='muted'>[{_cell(float(low))}, {_cell(float(high))}]</span>"
        number += " "
    why = html.escape(
        record["verdict"] + ": " + "; ".join(record.get("decided_by", [])), quote=True
    )
    return f"<td title='{why}'>{number}<span class='{css}'>{mark}</span></td>"


def _controls_table(section: Section) -> str:
    """The paper's claims for this recording beside the same measures on its controls."""
    from residual_dynamics.paper.claims import CLAIMS

    controls = list(section.controls.items())
    head = "".join(
        f"<th>{html.escape(label)}<br><span class='muted'>{html.escape(m)} · {html.escape(d)}</span></th>"
        for label, ((m, d), _) in controls
    )
    rows = []
    for claim in CLAIMS:
        value, holds = section.claims.get(claim.key, (None, None))
        record = section.verdicts.get(claim.key)
        cells = (
            _verdict_cell(record, with_value=True) if record else _claim_cell(value, holds)
        ) + "".join(
            _claim_cell(*evaluated.get(claim.key, (None, None))) for _, (_, evaluated) in controls
        )
        rows.append(
            f"<tr><td>{claim.panel}</td><td class='text'>{html.escape(claim.statement)}"
            f"<br><span class='muted'>measured: {html.escape(claim.measured)}</span></td>"
            f"<td class='text'>{html.escape(claim.paper)}</td>{cells}</tr>"
        )
    caption = (
        "The paper's claims, measured here and on this recording's controls"
        if controls
        else "The paper's claims, measured here (no control recorded for this pair)"
    ) + (
        f" ({VERDICT_LEGEND}; controls: ✓ the statement holds there too)"
        if section.verdicts
        else " (✓ reproduced, ✗ not reproduced, – not comparable)"
    )
    return (
        f"<div class='scroll'><table class='claims'><caption>{caption}</caption>"
        f"<tr><th>panel</th><th>claim</th><th>paper</th><th>this recording</th>{head}</tr>"
        + "".join(rows)
        + "</table></div>"
        + (
            "<p class='muted'>A claim that holds as well on the untrained twin comes from the "
            "architecture, not from training; one that holds as well on the matched random walk "
            "(each unit's start and step sizes kept, the dynamics destroyed) is what any process "
            "that adds increments shows; one that holds on the shuffled tokens does not need "
            "word order (shown, not deciding: the paper's claims are about depth).</p>"
            if controls
            else ""
        )
    )


def _glance(sections: list[Section]) -> str:
    """Claims (rows) by recording (columns): where each of the paper's findings holds."""
    from residual_dynamics.paper.claims import CLAIMS

    head = "".join(
        f"<th><a href='#{html.escape(s.anchor)}'>{_breakable(s.model)}<br>{_breakable(s.dataset)}</a></th>"
        for s in sections
    )
    legend = (
        VERDICT_LEGEND
        if any(s.verdicts for s in sections)
        else "✓ reproduced, ✗ not reproduced, – not comparable"
    )
    rows = []
    for claim in CLAIMS:
        cells = "".join(
            _verdict_cell(section.verdicts.get(claim.key))
            if section.verdicts
            else _claim_cell(None, section.claims.get(claim.key, (None, None))[1])
            for section in sections
        )
        rows.append(
            f"<tr><td>{claim.panel}</td><td class='text'>{html.escape(claim.statement)}</td>{cells}</tr>"
        )
    return (
        "<div class='scroll'><table class='claims'><caption>Claims at a glance "
        f"({legend}; numbers in each recording's section; every verdict also in claims.json)"
        "</caption>"
        f"<tr><th>panel</th><th>claim</th>{head}</tr>" + "".join(rows) + "</table></div>"
    )


def _breakable(name: str) -> str:
    """A name that may wrap after its underscores (long model names in narrow table columns)."""
    return html.escape(name).replace("_", "_<wbr>")


def _recordings(stores: list[tuple[Section, dict]]) -> str:
    rows = "".join(
        f"<tr><td><a href='#{html.escape(s.anchor)}'>{html.escape(s.model)}</a></td>"
        f"<td>{html.escape(s.dataset)}</td><td>{a.get('n_samples')}</td><td>{a.get('n_texts')}</td>"
        f"<td>{len(a.get('sublayers', []))}</td><td>{a.get('d_model')}</td>"
        f"<td>{html.escape(str(a.get('positions')))}</td></tr>"
        for s, a in stores
    )
    return (
        "<table><caption>Recordings</caption><tr><th>model</th><th>dataset</th><th>N rows</th>"
        f"<th>texts</th><th>sublayers</th><th>units</th><th>positions</th></tr>{rows}</table>"
    )


def _wall_time(rows: list[tuple[str, float, float]]) -> str | None:
    """The run's wall time, from its jobs' benchmark files: first start to last end."""
    if not rows:
        return None
    wall = max(end for _, _, end in rows) - min(end - s for _, s, end in rows)
    return f"{wall / 60:.1f} min from the first job's start to the last job's end"


SETTINGS = [
    ("extraction", ("positions", "batch_size", "store_dtype", "n_shards")),
    ("statistics", ("correlation_reading",)),
    ("mutual_information", ("estimator", "grid", "bandwidth", "n_samples")),
    ("rotations", ("n_permutations", "n_surrogates")),
    ("pca", ("n_components", "read_at", "per_sublayer")),
    ("cae", ("enabled", "max_epochs", "batch_size", "normalize")),
    ("perturbation", ("enabled", "layers", "grid_size")),
]


def _settings(config: dict) -> str:
    """The settings a reader needs to read the numbers, outside the collapsed full config."""
    parts = []
    for section, keys in SETTINGS:
        values = config.get(section) or {}
        shown = [f"{k} {html.escape(str(values[k]))}" for k in keys if k in values]
        if shown:
            parts.append(f"<b>{section}</b>: " + ", ".join(shown))
    return "<br>".join(parts)


def render(
    sections: list[Section],
    *,
    title: str,
    config: dict,
    benchmarks: list[Path] = (),
    modules: list[ModuleSection] = (),
    comparison: list[Figure] = (),
) -> str:
    """The whole page as one HTML string."""
    run_rows = []
    models_seen, versions = {}, {}
    notes_by_section: list[list[str]] = []
    store_attrs = []
    for section in sections:
        attrs = dict(open_store(section.store).attrs)
        store_attrs.append((section, attrs))
        models_seen.setdefault(
            section.model,
            f"{html.escape(str(attrs.get('model_source')))} · {attrs.get('architecture')} · "
            f"{attrs.get('n_layers')} layers · d = {attrs.get('d_model')} · {attrs.get('dtype')}"
            + (
                f" · <b>{html.escape(attrs['architecture_note'])}</b>"
                if attrs.get("architecture_note")
                else ""
            ),
        )
        versions = attrs.get("versions", versions)
        notes = [
            f"N = {attrs.get('n_samples')} rows from {attrs.get('n_texts')} texts "
            f"(positions: {html.escape(str(attrs.get('positions')))}), "
            f"{len(attrs.get('sublayers', []))} recorded sublayers, store {attrs.get('store_dtype')}"
            + (", <b>tokens shuffled</b> (control)" if attrs.get("shuffle_tokens") else ""),
            *section.notes,
        ]
        if attrs.get("norm") == "post":
            notes.append(
                "This model is post-norm (BERT-style): every recorded state is the output of a "
                "LayerNorm, so magnitudes are normalised and not comparable to the paper's pre-norm "
                "residual stream; correlations and shapes are."
            )
        notes_by_section.append(notes)
    run_rows.append(
        ("models", "<br>".join(f"<b>{html.escape(k)}</b>: {v}" for k, v in models_seen.items()))
    )
    datasets = sorted({s.dataset for s in sections})
    run_rows.append(("datasets", ", ".join(html.escape(d) for d in datasets)))
    run_rows.append(
        (
            "software",
            ", ".join(f"{html.escape(k)} {html.escape(str(v))}" for k, v in versions.items()),
        )
    )
    run_rows.append(
        ("python / platform", html.escape(f"{platform.python_version()} · {platform.platform()}"))
    )
    run_rows.append(("settings", _settings(config)))
    timings = _read_benchmarks(list(benchmarks))
    wall = _wall_time(timings)
    if wall:
        run_rows.append(("time taken", wall))
    run_rows.append(("written", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")))

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class='muted'>Reproduces, figure by figure, Fernando &amp; Guitchounts (2025), "
        "<i>Transformer Dynamics: a neuroscientific approach to interpretability of LLMs</i>.</p>",
        "<nav><a href='#run'>what was run</a><a href='#across'>across models</a>"
        + "".join(
            f"<a href='#{s.anchor}'>{html.escape(s.model)} · {html.escape(s.dataset)}</a>"
            for s in sections
        )
        + "".join(f"<a href='#{html.escape(m.anchor)}'>{html.escape(m.title)}</a>" for m in modules)
        + "</nav>",
        "<h2 id='run'>What was run</h2>",
        _table(run_rows),
        _recordings(store_attrs),
        "<details><summary>time taken per step</summary>",
        _timings(timings),
        "</details>",
        "<details><summary>configuration</summary><pre>",
        html.escape(json.dumps(config, indent=1, default=str)),
        "</pre></details>",
        "<h2 id='across'>Across models</h2>",
        _glance(sections),
        *(_figure("across", fig) for fig in comparison),
    ]
    for section, notes in zip(sections, notes_by_section, strict=True):
        parts.append(
            f"<h2 id='{html.escape(section.anchor)}'>{html.escape(section.model)} on {html.escape(section.dataset)}</h2>"
        )
        parts += [f"<p class='note'>{note}</p>" for note in notes]
        parts.append(_controls_table(section))
        parts += [_figure(section.anchor, fig) for fig in section.figures]
    for module in modules:
        parts.append(f"<h2 id='{html.escape(module.anchor)}'>{html.escape(module.title)}</h2>")
        if module.intro:
            parts.append(f"<p>{module.intro}</p>")
        parts += [f"<p class='note'>{note}</p>" for note in module.notes]
        parts += [_data_table(table) for table in module.tables]
        parts += [_figure(module.anchor, fig) for fig in module.figures]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path | str, page: str) -> None:
    write_text_atomic(path, page)
