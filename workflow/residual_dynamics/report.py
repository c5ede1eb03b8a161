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

import pandas as pd

from .store import open_store

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1b1b;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top} th{background:#f3f3f3}
figure{margin:1.2em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.92em;color:#333;margin-top:.4em}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em;margin:.8em 0}
.muted{color:#666;font-size:.9em} code{background:#f4f4f4;padding:0 .2em}
nav a{margin-right:1em}
"""


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

    @property
    def anchor(self) -> str:
        return f"{self.model}--{self.dataset}"


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _timings(benchmarks: list[Path]) -> str:
    rows = []
    for path in benchmarks:
        try:
            frame = pd.read_csv(path, sep="\t")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            continue
        if "s" in frame and len(frame):
            rows.append((Path(path).stem, float(frame["s"].iloc[0])))
    if not rows:
        return "<p class='muted'>no timings recorded</p>"
    total = sum(s for _, s in rows)
    cells = "".join(f"<tr><td>{html.escape(n)}</td><td>{s:.1f}</td></tr>" for n, s in rows)
    return (
        f"<table><tr><th>step</th><th>seconds</th></tr>{cells}"
        f"<tr><th>total</th><th>{total:.1f}</th></tr></table>"
    )


def render(
    sections: list[Section],
    *,
    title: str,
    config: dict,
    benchmarks: list[Path] = (),
) -> str:
    """The whole page as one HTML string."""
    run_rows = []
    models_seen, versions = {}, {}
    for section in sections:
        attrs = dict(open_store(section.store).attrs)
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
        section.notes.insert(
            0,
            f"N = {attrs.get('n_samples')} rows from {attrs.get('n_texts')} texts "
            f"(positions: {html.escape(str(attrs.get('positions')))}), "
            f"{len(attrs.get('sublayers', []))} recorded sublayers, store {attrs.get('store_dtype')}"
            + (", <b>tokens shuffled</b> (control)" if attrs.get("shuffle_tokens") else ""),
        )
        if attrs.get("norm") == "post":
            section.notes.append(
                "This model is post-norm (BERT-style): every recorded state is the output of a "
                "LayerNorm, so magnitudes are normalised and not comparable to the paper's pre-norm "
                "residual stream; correlations and shapes are."
            )
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
    run_rows.append(("written", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")))

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class='muted'>Reproduces, figure by figure, Fernando &amp; Guitchounts (2025), "
        "<i>Transformer Dynamics: a neuroscientific approach to interpretability of LLMs</i>.</p>",
        "<nav>"
        + "".join(
            f"<a href='#{s.anchor}'>{html.escape(s.model)} · {html.escape(s.dataset)}</a>"
            for s in sections
        )
        + "</nav>",
        "<h2 id='run'>What was run</h2>",
        _table(run_rows),
        "<details><summary>time taken per step</summary>",
        _timings(list(benchmarks)),
        "</details>",
        "<details><summary>configuration</summary><pre>",
        html.escape(json.dumps(config, indent=1, default=str)),
        "</pre></details>",
    ]
    for section in sections:
        parts.append(
            f"<h2 id='{html.escape(section.anchor)}'>{html.escape(section.model)} on {html.escape(section.dataset)}</h2>"
        )
        parts += [f"<p class='note'>{note}</p>" for note in section.notes]
        for fig in section.figures:
            parts.append(
                f"<figure id='{html.escape(section.anchor)}--{html.escape(fig.figure_id)}' class='panel'>"
                f"<img alt='{html.escape(fig.title)}' src='{_img(fig.png)}'>"
                f"<figcaption><b>{html.escape(fig.title)}.</b> {fig.caption}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path | str, page: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)


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
