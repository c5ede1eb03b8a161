"""Movement through embedding space (Singh, arXiv 2308.10874; related-analyses A): the walk, the
config checks, the figures and the report section. No torch here (the analysis side); the model
side (logit lens, proximity, uniform attention) is ``embedding_lens``, the HellaSwag test
``concept_similarity``.

The encoding walk: with the residual stream recorded at attn0, mlp0, attn1, ..., mlp{L-1}, final
(the store's interleaved rows), layer l's attention step is h[mlp_l] - h[attn_l] and its MLP step
h[attn_{l+1}] - h[mlp_l] (h[final] - h[mlp_{L-1}] for the last layer), so that
r_L = r_0 + sum over layers of (attention step + MLP step). Path length is the sum of the steps'
norms, displacement |r_L - r_0|. Without a ``final`` row the walk ends at mlp{L-1} and the last MLP
step is missing (NaN), in both path and displacement.
"""

from __future__ import annotations

import html
import json
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from residual_dynamics.io.atomic import json_value, move_into_place, partial_path

log = logging.getLogger(__name__)

REFERENCE = "Singh (2023), arXiv 2308.10874"
# The paper's only published concept-similarity numbers (flan-T5 xxl, 0-shot HellaSwag).
REFERENCE_CONCEPT = {"model": "flan-T5 xxl", "concept_similarity": 0.518, "log_likelihood": 0.540}


# --------------------------------------------------------------------------------------------
# the walk


def layer_points(sublayers: Sequence[str]) -> tuple[list[int], list[int], int | None]:
    """Indices of attn{l} and mlp{l} for l = 0..L-1, and of 'final' (None if not recorded)."""
    index = {name: i for i, name in enumerate(sublayers)}
    n_layers = sum(1 for name in sublayers if re.fullmatch(r"attn\d+", name))
    try:
        attn = [index[f"attn{layer}"] for layer in range(n_layers)]
        mlp = [index[f"mlp{layer}"] for layer in range(n_layers)]
    except KeyError as missing:
        raise ValueError(
            f"sublayers {list(sublayers)[:6]}... have no {missing}: the walk needs the interleaved "
            "attn/mlp rows of a sequential pre-norm decoder (parallel blocks have no mlp rows)"
        ) from None
    return attn, mlp, index.get("final")


def sublayer_deltas(resid: np.ndarray, sublayers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Attention and MLP steps (rows, layers, d); the last MLP step is NaN without 'final'."""
    attn, mlp, final = layer_points(sublayers)
    resid = np.asarray(resid, dtype=np.float64)
    attn_delta = resid[:, mlp] - resid[:, attn]
    after_mlp = [*attn[1:], final]
    mlp_delta = np.full_like(attn_delta, np.nan)
    for layer, nxt in enumerate(after_mlp):
        if nxt is not None:
            mlp_delta[:, layer] = resid[:, nxt] - resid[:, mlp[layer]]
    return attn_delta, mlp_delta


def encoding_walk(resid: np.ndarray, sublayers: Sequence[str]) -> dict[str, np.ndarray]:
    """Per row: the steps' norms per layer, path length and displacement (see module docstring)."""
    attn, mlp, final = layer_points(sublayers)
    attn_delta, mlp_delta = sublayer_deltas(resid, sublayers)
    attn_norm = np.linalg.norm(attn_delta, axis=-1)
    mlp_norm = np.linalg.norm(mlp_delta, axis=-1)
    end = final if final is not None else mlp[-1]
    resid = np.asarray(resid, dtype=np.float64)
    return {
        "attn_delta_norm": attn_norm,
        "mlp_delta_norm": mlp_norm,
        "path_length": attn_norm.sum(-1) + np.nansum(mlp_norm, axis=-1),
        "displacement": np.linalg.norm(resid[:, end] - resid[:, attn[0]], axis=-1),
    }


def store_walk(store_path: Path | str, block_rows: int | None = None) -> tuple[dict, dict]:
    """The encoding walk of every row of an activation store, read block by block."""
    from residual_dynamics.io.store import open_store

    group = open_store(store_path)
    resid = group["resid"]
    sublayers = list(group.attrs["sublayers"])
    n_rows = resid.shape[0]
    step = block_rows or max(resid.chunks[0], 1)
    parts: dict[str, list] = {}
    norm_sum = np.zeros(len(sublayers))
    for start in range(0, n_rows, step):
        block = np.asarray(resid[start : start + step], dtype=np.float64)
        for name, value in encoding_walk(block, sublayers).items():
            parts.setdefault(name, []).append(value)
        norm_sum += np.linalg.norm(block, axis=-1).sum(0)
    attn, _, final = layer_points(sublayers)
    arrays = {
        name: (
            ("sample", "layer") if np.ndim(values[0]) == 2 else ("sample",),
            np.concatenate(values),
        )
        for name, values in parts.items()
    }
    arrays["resid_norm_mean"] = (("sublayer",), norm_sum / max(n_rows, 1))
    arrays["token_position"] = (("sample",), np.asarray(group["token_position"][:]))
    attrs = {
        "model": group.attrs.get("model"),
        "dataset": group.attrs.get("dataset"),
        "positions": group.attrs.get("positions"),
        "n_samples": int(n_rows),
        "sublayers": sublayers,
        "n_layers": len(attn),
        "has_final": final is not None,
    }
    return arrays, attrs


# --------------------------------------------------------------------------------------------
# results on disk (zarr, readable by xarray.open_zarr; no xarray needed to write)


def write_arrays(path: Path | str, arrays: dict, attrs: dict) -> None:
    """name -> (dims, values) into a Zarr v3 group with dimension names, written atomically."""
    import zarr

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    for name, (dims, values) in arrays.items():
        values = np.asarray(values)
        array = group.create_array(
            name, shape=values.shape, dtype=values.dtype, dimension_names=tuple(dims)
        )
        array[...] = values
    group.attrs.update(json.loads(json.dumps(attrs, default=json_value)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(tmp), zarr_format=3)
    move_into_place(tmp, path)


def read_arrays(path: Path | str):
    import xarray as xr

    return xr.open_zarr(str(path), consolidated=True).load()


# --------------------------------------------------------------------------------------------
# config


# --------------------------------------------------------------------------------------------
# summaries, figures and the report section


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def summarise(lens, walk) -> dict:
    """The numbers the report states, from the lens and walk results (xarray Datasets)."""
    sublayers = (
        list(lens["sublayer"].values) if "sublayer" in lens.coords else lens.attrs["sublayers"]
    )
    rank = lens["true_rank"].values
    median_rank = np.median(rank, axis=0)
    last = len(sublayers) - 1
    # Computed on a seeded subset of positions (NaN elsewhere).
    rho = _finite(lens["spearman_embed_logprob"].values[:, last])
    ratio = walk["attn_delta_norm"].values / walk["mlp_delta_norm"].values
    depth = np.arange(len(sublayers))
    from scipy.stats import spearmanr

    trend = spearmanr(depth, median_rank).statistic if len(sublayers) > 2 else float("nan")
    out = {
        "n_rows": int(rank.shape[0]),
        "n_texts": int(lens.attrs.get("n_texts", 0)),
        "sublayers": sublayers,
        "median_rank": median_rank.tolist(),
        "median_rank_first": float(median_rank[0]),
        "median_rank_middle": float(median_rank[len(sublayers) // 2]),
        "median_rank_last": float(median_rank[last]),
        "top1_last": float(np.mean(rank[:, last] == 1)),
        "top1_first": float(np.mean(rank[:, 0] == 1)),
        "rank_depth_spearman": float(trend),
        "spearman_last_median": float(np.median(rho)) if rho.size else float("nan"),
        "spearman_last_positive": float(np.mean(rho > 0)) if rho.size else float("nan"),
        "spearman_positions": int(rho.size),
        "cos_next_embed_first": float(np.mean(lens["cos_next_embed"].values[:, 0])),
        "cos_next_embed_last": float(np.mean(lens["cos_next_embed"].values[:, last])),
        "median_rank_embed_last": float(np.median(lens["rank_next_embed"].values[:, last])),
        "vocab_size": int(lens.attrs.get("vocab_size", 0)),
        "tied": bool(lens.attrs.get("tied_embeddings", True)),
        "walk_rows": int(walk["path_length"].shape[0]),
        "path_over_displacement": float(
            np.median(walk["path_length"].values / walk["displacement"].values)
        ),
        "attn_mlp_ratio_by_layer": np.nanmedian(ratio, axis=0).tolist(),
        "attn_mlp_ratio_median": float(np.nanmedian(ratio)),
        "loss": lens.attrs.get("loss"),
        "loss_uniform_attention": lens.attrs.get("loss_uniform_attention"),
    }
    return out


RANK_CRITERION = (
    "the median rank at the last row at most half that at the first, and falling overall: "
    "Spearman of median rank against depth &lt; 0"
)
RHO_CRITERION = "median rho &gt; 0.1 and positive at more than 75 % of positions"


def rank_falls(summary: dict) -> bool:
    return bool(
        summary["median_rank_last"] <= 0.5 * summary["median_rank_first"]
        and summary["rank_depth_spearman"] < 0
    )


def rho_positive(summary: dict) -> bool:
    return bool(summary["spearman_last_median"] > 0.1 and summary["spearman_last_positive"] > 0.75)


def _paths(png: Path | str, formats: Sequence[str]) -> list[Path]:
    png = Path(png)
    return [png] + [png.with_suffix(f".{fmt}") for fmt in formats if fmt != "png"]


def _sublayer_axis(ax, sublayers: Sequence[str]) -> None:
    step = max(1, len(sublayers) // 12)
    ax.set_xticks(range(0, len(sublayers), step), list(sublayers)[::step], rotation=45)
    ax.set_xlabel("sublayer (residual stream before it; 'final' = after the last block)")


def _band(ax, x, values, colour, label):
    values = np.asarray(values, dtype=np.float64)
    low, mid, high = np.nanpercentile(values, [25, 50, 75], axis=0)
    ax.fill_between(x, low, high, color=colour, alpha=0.2, lw=0)
    ax.plot(x, mid, marker="o", ms=3, color=colour, label=label)


def figure_rank(lens, title: str):
    """True next-token rank per sublayer: medians with IQR bands, and the log-rank distribution."""
    import matplotlib.pyplot as plt

    from residual_dynamics.paper import panels_dynamics as plotting

    plotting.set_style()
    sublayers = list(lens.attrs["sublayers"])
    x = np.arange(len(sublayers))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    palette = plotting.PALETTE
    _band(left, x, lens["true_rank"].values, palette[0], "logit lens (final norm, unembedding)")
    _band(left, x, lens["rank_next_embed"].values, palette[1], "cosine to W_E rows")
    if "rank_next_unembed" in lens:
        _band(left, x, lens["rank_next_unembed"].values, palette[2], "cosine to W_U rows")
    left.set_yscale("log")
    left.set_ylabel("rank of the true next token (1 = top)")
    left.set_title("median and IQR over positions", fontsize=9)
    left.legend(frameon=False, fontsize=7)
    _sublayer_axis(left, sublayers)
    log_rank = np.log10(lens["true_rank"].values)
    right.boxplot(
        [log_rank[:, s] for s in range(len(sublayers))],
        positions=x,
        widths=0.6,
        showfliers=False,
        medianprops={"color": palette[0]},
    )
    right.set_ylabel("log10 rank (logit lens)")
    right.set_title("distribution over positions (boxes: IQR, whiskers 1.5 IQR)", fontsize=9)
    _sublayer_axis(right, sublayers)
    fig.suptitle(title, fontsize=10)
    return fig


def figure_proximity(lens, title: str):
    """Cosine to token embeddings per sublayer, and the vocabulary-wide Spearman rho."""
    import matplotlib.pyplot as plt

    from residual_dynamics.paper import panels_dynamics as plotting

    plotting.set_style()
    sublayers = list(lens.attrs["sublayers"])
    x = np.arange(len(sublayers))
    palette = plotting.PALETTE
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, colour, label in (
        ("cos_next_embed", palette[0], "true next token"),
        ("cos_current_embed", palette[1], "current (input) token"),
        ("cos_mean_embed", palette[2], "mean of the text's tokens so far"),
        ("max_cos_embed", palette[3], "best token in the vocabulary"),
    ):
        _band(left, x, lens[name].values, colour, label)
    left.axhline(0, color="0.6", lw=0.6)
    left.set_ylabel("cosine to W_E row(s)")
    left.legend(frameon=False, fontsize=7)
    _sublayer_axis(left, sublayers)
    _band(right, x, lens["spearman_embed_logprob"].values, palette[0], "cos(r, W_E[t]) vs log p(t)")
    right.axhline(0, color="0.6", lw=0.6)
    right.set_ylabel("Spearman rho over the vocabulary")
    right.legend(frameon=False, fontsize=7)
    _sublayer_axis(right, sublayers)
    fig.suptitle(title, fontsize=10)
    return fig


def figure_walk(walk, title: str):
    """Path length against displacement, delta norms per layer, and their ratio."""
    import matplotlib.pyplot as plt

    from residual_dynamics.paper import panels_dynamics as plotting

    plotting.set_style()
    palette = plotting.PALETTE
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8))
    path, disp = walk["path_length"].values, walk["displacement"].values
    a.scatter(disp, path, s=6, alpha=0.5, color=palette[0])
    top = float(np.nanmax([np.nanmax(path), np.nanmax(disp)])) * 1.05
    a.plot([0, top], [0, top], color="0.5", lw=0.8, ls="--", label="path = displacement")
    a.set_xlabel("displacement |r_L - r_0|")
    a.set_ylabel("path length sum |step|")
    a.legend(frameon=False, fontsize=7)
    layers = np.arange(walk["attn_delta_norm"].shape[1])
    _band(b, layers, walk["attn_delta_norm"].values, palette[0], "attention step |Δ|")
    _band(b, layers, walk["mlp_delta_norm"].values, palette[1], "MLP step |Δ|")
    b.set_xlabel("layer")
    b.set_ylabel("step norm")
    b.legend(frameon=False, fontsize=7)
    ratio = walk["attn_delta_norm"].values / walk["mlp_delta_norm"].values
    _band(c, layers, ratio, palette[2], "|attention Δ| / |MLP Δ|")
    c.axhline(1, color="0.5", lw=0.8, ls="--")
    c.set_yscale("log")
    c.set_xlabel("layer")
    c.set_ylabel("ratio (median, IQR)")
    c.legend(frameon=False, fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def write_figures(lens, walk, outputs: dict, *, label: str, formats, dpi: int) -> None:
    from residual_dynamics.paper import panels_dynamics as plotting

    n = lens.attrs.get("n_rows")
    plotting.save(
        figure_rank(lens, f"True next-token rank per sublayer, {label}, {n} positions"),
        _paths(outputs["rank"], formats),
        dpi=dpi,
    )
    plotting.save(
        figure_proximity(lens, f"Proximity to token embeddings, {label}, {n} positions"),
        _paths(outputs["proximity"], formats),
        dpi=dpi,
    )
    plotting.save(
        figure_walk(
            walk,
            f"Encoding walk at the stored positions ({walk.attrs.get('positions')} token), "
            f"{label}, N = {walk.attrs.get('n_samples')}",
        ),
        _paths(outputs["walk"], formats),
        dpi=dpi,
    )


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def _verdict(ok: bool | None) -> str:
    return {True: "<b>agrees</b>", False: "<b>does not agree</b>", None: "<b>undecided</b>"}[ok]


def section_manifest(
    path: Path | str,
    *,
    pairs: Sequence[tuple[str, str]],
    summaries: Sequence[dict],
    figures: Sequence[dict],
    concept: Sequence[dict] = (),
) -> None:
    """The module's report section: a table per recording, figures with captions, verdicts."""
    from residual_dynamics.report.page import Figure, Table, write_section_manifest

    rows, fig_list, notes = [], [], []
    for (model, dataset), s, figs in zip(pairs, summaries, figures, strict=True):
        label = f"{html.escape(model)} on {html.escape(dataset)}"
        falls = rank_falls(s)
        rho_ok = rho_positive(s)
        loss, loss_u = s.get("loss"), s.get("loss_uniform_attention")
        rows.append(
            [
                model,
                dataset,
                s["n_rows"],
                _fmt(s["median_rank_first"]),
                _fmt(s["median_rank_middle"]),
                _fmt(s["median_rank_last"]),
                _fmt(s["top1_last"]),
                _fmt(s["spearman_last_median"]),
                _fmt(s["path_over_displacement"]),
                _fmt(s["attn_mlp_ratio_median"]),
                _fmt(loss),
                _fmt(loss_u),
            ]
        )
        ranks = ", ".join(
            f"{name} {_fmt(r)}" for name, r in zip(s["sublayers"], s["median_rank"], strict=True)
        )
        fig_list.append(
            Figure(
                Path(figs["rank"]),
                f"True next-token rank, {label}",
                f"Reference ({REFERENCE}): the true next token's rank under the logit lens falls "
                f"with depth. Measured on {s['n_rows']} positions of {s['n_texts']} texts "
                f"(vocabulary {s['vocab_size']}): median rank {ranks}; top-1 at the last row "
                f"{_fmt(s['top1_last'])}; Spearman of median rank against depth "
                f"{_fmt(s['rank_depth_spearman'])}. Verdict ({RANK_CRITERION}): {_verdict(falls)}.",
                f"rank-{model}-{dataset}",
            )
        )
        fig_list.append(
            Figure(
                Path(figs["proximity"]),
                f"Proximity to token embeddings, {label}",
                f"Reference: proximity of the residual vector to token vectors reflects "
                f"next-token probability; Spearman rho over the vocabulary between "
                f"cos(r_L, W_E[t]) and log p(t) clearly &gt; 0. Measured at the last row: median "
                f"rho {_fmt(s['spearman_last_median'])} (positive for "
                f"{_fmt(100 * s['spearman_last_positive'])} % of positions); mean cosine to the "
                f"true next token's embedding {_fmt(s['cos_next_embed_first'])} at the first row, "
                f"{_fmt(s['cos_next_embed_last'])} at the last; "
                + ("embeddings tied." if s["tied"] else "unembedding untied (W_U shown too).")
                + f" Verdict ({RHO_CRITERION}): {_verdict(rho_ok)}.",
                f"proximity-{model}-{dataset}",
            )
        )
        ratios = ", ".join(_fmt(r) for r in s["attn_mlp_ratio_by_layer"])
        fig_list.append(
            Figure(
                Path(figs["walk"]),
                f"Encoding walk, {label}",
                f"Reference: attention mostly aggregates and MLPs filter; r_L = r_0 + the sum of "
                f"attention and MLP steps. Measured on {s['walk_rows']} stored rows: median path "
                f"length / displacement {_fmt(s['path_over_displacement'])} (1 = a straight walk); "
                f"median |attention Δ| / |MLP Δ| per layer {ratios}. The paper gives no number "
                "for this ratio: a description, not a test.",
                f"walk-{model}-{dataset}",
            )
        )
        notes.append(
            f"{label}: the true next token's median rank under the logit lens goes from "
            f"{_fmt(s['median_rank_first'])} ({html.escape(s['sublayers'][0])}) through "
            f"{_fmt(s['median_rank_middle'])} (middle) to {_fmt(s['median_rank_last'])} "
            f"({html.escape(s['sublayers'][-1])}) of {s['vocab_size']} tokens; top-1 "
            f"{_fmt(s['top1_first'])} at the first row, {_fmt(s['top1_last'])} at the last. "
            + (
                "It falls with depth, as the reference expects."
                if falls
                else "It does not fall with depth here (the reference expects it to)."
            )
        )
        if loss is not None and loss_u is not None:
            notes.append(
                f"{label}: with a uniform causal attention pattern the next-token loss goes "
                f"from {_fmt(loss, 4)} to {_fmt(loss_u, 4)} nats/token "
                f"(Δ = {_fmt(loss_u - loss, 3)}): how much the learnt attention pattern, "
                "rather than plain averaging, matters."
            )
    tables = [
        Table(
            "Movement through embedding space: summary per model and dataset",
            [
                "model",
                "dataset",
                "positions",
                "median rank, first row",
                "median rank, middle",
                "median rank, last row",
                "top-1, last row",
                "Spearman rho (cos W_E, log p), last row",
                "path / displacement",
                "|attn Δ| / |MLP Δ|",
                "loss",
                "loss, uniform attention",
            ],
            rows,
        )
    ]
    if concept:
        tables.append(
            Table(
                "Concept similarity on HellaSwag (accuracy; chance 0.25)",
                [
                    "model",
                    "examples",
                    "mean",
                    "position-weighted mean",
                    "last token",
                    "log-likelihood per char (baseline)",
                    "log-likelihood sum",
                ],
                [
                    [
                        c["model"],
                        c["n_examples"],
                        _fmt(c["accuracy"]["mean"]),
                        _fmt(c["accuracy"]["position_weighted"]),
                        _fmt(c["accuracy"]["last"]),
                        _fmt(c["baseline"]["ll_per_char"]),
                        _fmt(c["baseline"]["ll_sum"]),
                    ]
                    for c in concept
                ]
                + [
                    [
                        f"reference: {REFERENCE_CONCEPT['model']} (0-shot)",
                        "",
                        _fmt(REFERENCE_CONCEPT["concept_similarity"]),
                        "",
                        "",
                        _fmt(REFERENCE_CONCEPT["log_likelihood"]),
                        "",
                    ]
                ],
            )
        )
    intro = (
        f"The residual vector as a walk through embedding space ({REFERENCE}). The logit lens "
        "applies the model's own final norm and unembedding to every sublayer's residual vector "
        "(at the row after the last block it is the model's output); proximity is the cosine to "
        "every token embedding. Positions: every position with a known next token (after a leading "
        "BOS), up to a per-text cap drawn with a seed. The walk is read from the activation store "
        "(the recorded positions)."
    )
    write_section_manifest(
        path,
        title="Movement through embedding space",
        anchor="embedding-space",
        intro=intro,
        figures=fig_list,
        tables=tables,
        notes=notes,
    )
