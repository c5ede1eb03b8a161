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
table.claims{font-size:.85em} table.claims td{white-space:nowrap}
table.claims td.text{white-space:normal;min-width:16em} table.claims th{font-weight:600}
.scroll{overflow-x:auto}
"""

# A verdict's mark and style (its words are claims.verdict_word's).
MARKS = {True: ("yes", "✓"), False: ("no", "✗"), None: ("na", "–")}


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
    """(step, seconds, end time) of every readable Snakemake benchmark file."""
    rows = []
    for path in benchmarks:
        try:
            frame = pd.read_csv(path, sep="\t")
            end = Path(path).stat().st_mtime
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            continue
        if "s" in frame and len(frame):
            rows.append((Path(path).stem, float(frame["s"].iloc[0]), end))
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
        cells = _claim_cell(value, holds) + "".join(
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
    ) + " (✓ reproduced, ✗ not reproduced, – not comparable)"
    return (
        f"<div class='scroll'><table class='claims'><caption>{caption}</caption>"
        f"<tr><th>panel</th><th>claim</th><th>paper</th><th>this recording</th>{head}</tr>"
        + "".join(rows)
        + "</table></div>"
        + (
            "<p class='muted'>A claim that holds as well on the untrained twin comes from the "
            "architecture, not from training; one that holds on the shuffled tokens does not need "
            "word order.</p>"
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
    rows = []
    for claim in CLAIMS:
        cells = "".join(
            _claim_cell(None, section.claims.get(claim.key, (None, None))[1])
            for section in sections
        )
        rows.append(
            f"<tr><td>{claim.panel}</td><td class='text'>{html.escape(claim.statement)}</td>{cells}</tr>"
        )
    return (
        "<div class='scroll'><table class='claims'><caption>Claims at a glance "
        "(✓ reproduced, ✗ not reproduced, – not comparable; numbers in each recording's "
        "section)</caption>"
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
    ("mutual_information", ("grid", "bandwidth", "n_samples")),
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


def mean_activation_caption(means) -> str:
    """Caption of Figure 1B with the number we measured beside the paper's observation."""
    import numpy as np

    values = means["mean"].values
    spread = np.nanstd(values, axis=1)
    return (
        "Mean activation of every unit at every sublayer over the N samples; units sorted by their "
        "mean at the last sublayer, colours clipped to ±1. <i>Paper (Llama 3.1 8B):</i> most units "
        "stay near zero with a few strongly positive or negative units persisting across layers. "
        f"<i>Here:</i> across-unit spread of the mean grows from {spread[0]:.3f} "
        f"({html.escape(str(means['sublayer'].values[0]))}) to {spread[-1]:.3f} "
        f"({html.escape(str(means['sublayer'].values[-1]))}); "
        f"{int((np.abs(values[-1]) > 1).sum())} units exceed |1| at the last sublayer."
    )


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def panel_captions(summary: dict) -> dict[str, tuple[str, str]]:
    """(title, caption) per panel id: the paper's finding beside the number measured here."""
    per = summary["per_transition"]
    kind = summary["by_kind"]
    rot = summary["rotations"]
    nulls = rot.get("nulls", {})
    s = summary["n_sublayers"]

    def null_line(name: str) -> str:
        n = nulls.get(name, {})
        return (
            f"{name.replace('_', ' ')}: null mean |R| {_fmt(n.get('null_mean_abs_r'))}, "
            f"{_fmt(100 * n['frac_beyond95'], 0) if n.get('frac_beyond95') is not None else 'n/a'} % "
            f"of units beyond its 95th percentile (5 % expected by chance)"
        )

    beyond_surrogate = max(
        (nulls.get(k, {}).get("frac_beyond95") or 0.0) for k in ("random_walk", "ar1", "phase")
    )
    verdict_rot = (
        "<b>Verdict:</b> units rotate more than autocorrelated noise."
        if beyond_surrogate > 0.2
        else "<b>Verdict:</b> units do not rotate more than autocorrelated noise of the same "
        "smoothness: the rotation count here is what a random walk through the same recipe gives."
    )
    corr = per["correlation"]
    return {
        "fig1b": ("Figure 1B: mean activation per unit", ""),
        "fig1c": (
            "Figure 1C: correlation between successive sublayers",
            f"<i>Paper:</i> r &gt; 0.8 even early, within-layer above cross-layer, both rising with "
            f"depth. <i>Here:</i> mean r {_fmt(corr[0])} at the first transition, "
            f"{_fmt(corr[len(corr) // 2])} mid-depth, {_fmt(corr[-1])} at the last; within-layer "
            f"{_fmt(kind['correlation']['within'])} vs cross-layer {_fmt(kind['correlation']['cross'])}; "
            f"rank correlation with depth {_fmt(summary.get('correlation_rises_with_depth'))}"
            + (
                f"; {summary['constant_units']} (sublayer, unit) pairs are constant over the "
                "samples and left undefined"
                if summary.get("constant_units")
                else ""
            )
            + ".",
        ),
        "fig1d": (
            "Figure 1D: per-unit histograms of correlations",
            "<i>Paper:</i> most units' correlations lie close to 1. <i>Here:</i> the pooled "
            "histogram above, each unit a row below.",
        ),
        "fig1e": (
            "Figure 1E: cosine similarity of successive sublayers",
            f"<i>Paper (Llama 3.1 8B):</i> ≈ 0.52 at t0, 0.70 at t1, rising to ≈ 0.99 within layers "
            f"mid-depth. <i>Here:</i> {_fmt(per['cosine'][0])} at t0, "
            f"{_fmt(per['cosine'][min(1, len(per['cosine']) - 1)])} at t1, within-layer mean "
            f"{_fmt(kind['cosine']['within'])}, cross-layer {_fmt(kind['cosine']['cross'])}.",
        ),
        "fig1f": (
            "Figure 1F: velocity between successive sublayers",
            f"<i>Paper:</i> ≈ 0.5 at t0 growing to a peak of ≈ 24 at t61, cross-layer faster than "
            f"within-layer. <i>Here:</i> {_fmt(per['velocity'][0])} at t0, peak "
            f"{_fmt(max(v for v in per['velocity'] if v is not None))} at t"
            f"{int(np.nanargmax(np.asarray(per['velocity'], dtype=float)))} of {s - 2}; within-layer "
            f"{_fmt(kind['velocity']['within'])} vs cross-layer {_fmt(kind['velocity']['cross'])}.",
        ),
        "fig1g": (
            "Figure 1G: mutual information per unit",
            "<i>Paper:</i> high MI at the first transitions, then a drop and a plateau. "
            f"<i>Here:</i> grid {summary['mutual_information']['grid']}, bandwidth "
            f"{summary['mutual_information']['bandwidth']}, N = "
            f"{summary['mutual_information']['n_samples']}; "
            f"{summary['mutual_information']['undefined_pairs']} undefined pairs (constant units).",
        ),
        "fig1h": (
            "Figure 1H: mean mutual information per transition",
            f"<i>Paper:</i> ≈ 4.35 nats at t0, 2.7 at t1, 1.45 at t2, a trough of ≈ 0.75-1.2 for t 9-30. "
            f"<i>Here:</i> {_fmt(per['mi_kde'][0])} at t0, {_fmt(min(per['mi_kde']))} at the lowest, "
            f"{_fmt(per['mi_kde'][-1])} at the last (Gaussian-from-r cross-check: "
            f"{_fmt(per['mi_gaussian'][0])} at t0).",
        ),
        "fig2a": (
            "Figure 2A: unit phase portraits",
            '<i>Paper:</i> units trace spirals ("unstable periodic orbits") in the plane of their '
            "mean activation and its derivative over sublayers.",
        ),
        "fig2b": (
            "Figure 2B: rotation counts against nulls",
            f"<i>Paper:</i> mean R = 10.74 over 64 sublayers against ≈ 0 for the pair shuffle. "
            f"<i>Here</i> ({s} sublayers): mean R {_fmt(rot.get('mean_r'))}, mean |R| "
            f"{_fmt(rot.get('mean_abs_r'))}. "
            + "; ".join(null_line(k) for k in nulls)
            + ". "
            + verdict_rot,
        ),
        "fig2c": (
            "Figure 2C: rotation count per unit",
            "Signed R for every unit (sorted) with each null's per-unit 95th percentile of |R|. "
            "A 64-step Gaussian random walk already gives |R| ≈ 11 through the paper's recipe.",
        ),
    }


def _verdict(ok: bool | None, yes: str, no: str) -> str:
    from residual_dynamics.paper.claims import verdict_word

    if ok is None:
        return f"<b>Verdict:</b> {verdict_word(None)} here."
    return f"<b>Verdict:</b> {verdict_word(ok)}: {yes if ok else no}"


def reduction_captions(red: dict) -> dict[str, tuple[str, str]]:
    """(title, caption) for the panels of Figures 3 and 4, from reduction_summary.json."""
    pca = red["pca"]
    out = {
        "fig4a": (
            "Figure 4A: trajectories in PC space",
            "<i>Paper:</i> the mean trajectory curves early and straightens late. "
            f"<i>Here:</i> PC1 and PC2 explain {_fmt(100 * pca['pc1_ratio'], 1)} % and "
            f"{_fmt(100 * pca['pc2_ratio'], 1)} % of the variance of all sublayer vectors.",
        ),
        "fig4b": (
            "Figure 4B: cumulative explained variance per sublayer",
            "<i>Paper:</i> later sublayers reach a higher share with the same number of "
            "components. Left: each sublayer's variance (about its own mean) captured by the "
            "global components, the paper's reading; right: each sublayer's own PCA.",
        ),
        "fig4c": (
            f"Figure 4C: explained variance at {pca['n_components_at']} components",
            f"<i>Paper (100 of 4096 components):</i> ≈ 0.04 at sublayer 0, peak ≈ 0.57 near "
            f"sublayer 47, ≈ 0.45 at 63. <i>Here ({pca['n_components_at']} components, the "
            "same share of the model's width):</i> "
            f"{_fmt(pca['cumulative_at_first'])} at the first sublayer, peak "
            f"{_fmt(pca['cumulative_at_peak'])} at {html.escape(str(pca['peak_sublayer']))}, "
            f"{_fmt(pca['cumulative_at_last'])} at the last"
            + (
                f"; each sublayer's own PCA: {_fmt(pca.get('own_at_first'))} first, "
                f"{_fmt(pca.get('own_at_last'))} last"
                if pca.get("own_at_first") is not None
                else ""
            )
            + ". "
            + _verdict(
                pca["later_need_fewer"],
                "the later half of the sublayers is captured better than the first half.",
                "the later half is not captured better than the first half.",
            ),
        ),
    }
    cae = red.get("cae")
    if cae:
        out |= {
            "fig3b": (
                "Figure 3B: CAE latent trajectories",
                "<i>Paper:</i> the mean 2-D latent trajectory curves, then straightens late. "
                f"<i>Here:</i> {cae['n_test']} held-out samples; best validation epoch "
                f"{cae['best_epoch']}.",
            ),
            "fig3c": (
                "Figure 3C: latent distance between successive sublayers",
                "<i>Paper:</i> mostly &lt; 0.1, ≈ 0.24 at the last transition. <i>Here:</i> median "
                f"{_fmt(cae['step_median'], 3)}, last {_fmt(cae['step_last'], 3)} (latent units "
                "depend on the trained network: compare shapes, not values).",
            ),
            "fig3d": (
                "Figure 3D: CAE reconstruction explained variance per sublayer",
                "<i>Paper:</i> ≈ 0 at sublayer 0, ≈ 0.6 by sublayer 5, ≈ 0.75 at 45-55. "
                f"<i>Here</i> (normalised inputs): {_fmt(cae['ev_first'])} at the first sublayer, "
                f"{_fmt(cae['ev_at_5'])} at the sixth, max {_fmt(cae['ev_max'])} at "
                f"{html.escape(str(cae['ev_max_sublayer']))}, {_fmt(cae['ev_last'])} at the last. "
                + _verdict(
                    cae["ev_rises"],
                    "explained variance rises with depth.",
                    "explained variance does not rise with depth.",
                ),
            ),
        }
    pert = red.get("perturbation")
    if pert:
        rows = []
        for layer in pert["layers"]:
            m = pert["per_layer"][str(layer)]
            rows.append(
                f"layer {layer}: remaining {_fmt(m['remaining'])}, end MSE {_fmt(m['end_mse'], 3)}, "
                f"end spread {_fmt(m['end_spread_ratio'])}"
                + (f", KL {_fmt(m['kl'], 3)}" if m.get("kl") is not None else "")
            )
        verdicts = pert.get("verdicts", {})
        detail = "; ".join(
            f"{k.replace('_', ' ')}: mid {_fmt(v['mid'], 3)} vs first/last {_fmt(v['first_last'], 3)}"
            for k, v in verdicts.items()
        )
        out |= {
            "fig4d": (
                "Figure 4D: teleport perturbations",
                "<i>Paper:</i> teleports at layers 0 and 31 end far from the control; those at "
                "7, 15 and 23 recover (lower spread, lower MSE to the control); no numbers given. "
                f"<i>Here</i> (grid {html.escape(str([round(x, 2) for x in pert['grid_range']]))}"
                f" on both PCs): "
                + "; ".join(rows)
                + ". "
                + (detail + ". " if detail else "")
                + _verdict(
                    pert["mid_recovers_more"],
                    "mid-depth teleports end closer to the control than first- and last-layer ones.",
                    "mid-depth teleports do not end closer to the control on every measure.",
                ),
            ),
            "fig4e": (
                "Figure 4E: recovery per layer (beyond the paper)",
                "Remaining: distance to the control a horizon of sublayers after the perturbation, "
                "over the distance it was sent. End MSE and end spread (in PC1/PC2, over the start "
                "spread) at the last sublayer. KL: next-token distribution against the control's "
                "(causal models only). Gaussian noise (norm = scale × the state's norm) and swaps "
                "with other texts' states at the same layer use the same measures.",
            ),
        }
    return out


def add_claim_verdicts(
    captions: dict[str, tuple[str, str]], evaluated: dict
) -> dict[str, tuple[str, str]]:
    """Append each claim's verdict to its panel's caption, where the caption has none yet."""
    from residual_dynamics.paper.claims import CLAIMS, verdict_word

    out = dict(captions)
    for claim in CLAIMS:
        panel = f"fig{claim.panel.lower()}"
        if panel not in out or "Verdict" in captions[panel][1]:
            continue
        value, holds = evaluated.get(claim.key, (None, None))
        title, text = out[panel]
        number = "" if value is None else f" ({html.escape(claim.measured)} {_fmt(value)})"
        out[panel] = (
            title,
            f"{text} <b>Verdict:</b> {html.escape(claim.statement)}: "
            f"<span class='{MARKS[holds][0]}'>{verdict_word(holds)}</span>{number}.",
        )
    return out
