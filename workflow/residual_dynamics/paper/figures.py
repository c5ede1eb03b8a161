"""Figures 1-4 of the paper from the analysis datasets: which panel drawing goes to which file."""

from __future__ import annotations

import numpy as np
import xarray as xr

from residual_dynamics.analysis.rotations import phase_portrait
from residual_dynamics.analysis.transitions import correlation_histograms
from residual_dynamics.paper import panels_dynamics as dynamics
from residual_dynamics.paper.summary import mi_curves, mi_headline
from residual_dynamics.report.style import figure_paths, save

NULL_NAMES = ("pair_shuffle", "random_walk", "ar1", "phase")


def _title(ds: xr.Dataset, what: str) -> str:
    return f"{what}\n{ds.attrs.get('model')} on {ds.attrs.get('dataset')}, N = {ds.attrs.get('n_samples')}"


def mi_figure(mi: xr.Dataset, kinds):
    """Figure 1H: every estimator's curve side by side and the MI beyond the Gaussian."""
    per_unit = {
        name: mi[f"mi_{name}"].values
        for name in ("kde", "copula_kde", "gcmi", "gaussian")
        if f"mi_{name}" in mi
    }
    name = mi.attrs.get("estimator", "kde")
    if "mi_excess" in (curves := mi_curves(mi)):
        excess = np.asarray(curves["mi_excess"], np.float64)
    else:  # a dataset without the copula estimators: nothing to subtract
        excess = np.full(mi.sizes["transition"], np.nan)
    return dynamics.mi_estimator_curves(
        per_unit,
        name,
        kinds,
        ksg=mi["mi_ksg"].values if "mi_ksg" in mi else None,
        excess=excess,
        title=_title(mi, f"Mean mutual information per transition (headline: {name})"),
    )


def figure_1(means, stats, mi, *, outputs: dict, formats, dpi: int, reading: str) -> None:
    kinds = stats["transition_kind"].values
    headline = mi_headline(mi)
    name = mi.attrs.get("estimator", "kde")
    panels = {
        "fig1b": lambda: dynamics.mean_activation_heatmap(means),
        "fig1c": lambda: dynamics.transition_heatmap(
            stats["r"].values,
            title=_title(stats, "Correlation of each unit between sublayer t and t+1"),
            label="Pearson r",
            vmin=float(np.nanmin([0.75, np.nanpercentile(stats["r"].values, 2)])),
            vmax=1.0,
        ),
        "fig1d": lambda: dynamics.correlation_histogram_figure(
            correlation_histograms(stats["r_pairs"].values, reading),
            reading,
            _title(stats, "Per-unit correlations"),
        ),
        "fig1e": lambda: dynamics.per_transition_figure(
            stats["cosine"].values,
            kinds,
            title=_title(stats, "Cosine similarity between successive sublayers"),
            ylabel="cosine similarity",
        ),
        "fig1f": lambda: dynamics.per_transition_figure(
            stats["velocity"].values,
            kinds,
            title=_title(stats, "Velocity |h(t+1) - h(t)|"),
            ylabel="velocity (L2)",
        ),
        "fig1g": lambda: dynamics.transition_heatmap(
            headline.values,
            title=_title(
                mi, f"Mutual information of each unit between sublayer t and t+1 ({name})"
            ),
            label="MI (nats)",
            vmin=0.0,
            vmax=float(max(1e-6, np.nanpercentile(headline.values, 99))),
            cmap="magma",
        ),
        "fig1h": lambda: mi_figure(mi, kinds),
    }
    for key, make in panels.items():
        save(make(), figure_paths(outputs[key], formats), dpi=dpi)


def example_units(r: np.ndarray, n: int = 4) -> list[int]:
    """Units to draw in 2A: the most and least rotating, and two in between."""
    order = np.argsort(np.abs(np.nan_to_num(r)))
    picks = [order[-1], order[len(order) // 2], order[len(order) // 4], order[0]]
    return list(dict.fromkeys(int(u) for u in picks))[:n]


def figure_2(means, rotations, *, outputs: dict, formats, dpi: int) -> None:
    x, y = phase_portrait(means["mean"].values)
    r = rotations["r"].values
    label = f"{means.attrs.get('model')} on {means.attrs.get('dataset')}"
    nulls = {k: rotations[f"{k}_null"].values for k in NULL_NAMES if f"{k}_null" in rotations}
    p95 = {
        k: rotations[f"{k}_null_p95_abs"].values
        for k in NULL_NAMES
        if f"{k}_null_p95_abs" in rotations
    }
    panels = {
        "fig2a": lambda: dynamics.phase_portraits(
            x, y, example_units(r), r, f"Unit phase portraits, {label}"
        ),
        "fig2b": lambda: dynamics.rotation_histograms(
            r, nulls, f"Rotation counts against nulls, {label}"
        ),
        "fig2c": lambda: dynamics.rotation_per_unit(r, p95, f"Rotation count per unit, {label}"),
    }
    for key, make in panels.items():
        save(make(), figure_paths(outputs[key], formats), dpi=dpi)


def figure_3(cae: xr.Dataset, *, outputs: dict, formats, dpi: int, label: str) -> None:
    """Figure 3B-3D from the CAE's test-set evaluation."""
    from residual_dynamics.analysis.transitions import transition_kind
    from residual_dynamics.paper import panels_reduction as reduction

    names = list(cae["sublayer"].values)
    n_test = cae.sizes["sample"]
    panels = {
        "fig3b": lambda: reduction.trajectories(
            cae["latent"].values,
            names,
            title=f"CAE latent trajectories (mean coloured by sublayer), {label}, {n_test} test samples",
            axis_label="latent",
        ),
        "fig3c": lambda: reduction.latent_steps(
            cae["mean_latent_step"].values,
            transition_kind(names),
            title=f"Latent distance between successive sublayers (mean trajectory), {label}",
        ),
        "fig3d": lambda: reduction.explained_variance_band(
            cae["explained_variance"].values,
            cae["r2"].values,
            names,
            title=f"CAE reconstruction: explained variance per sublayer, {label}",
        ),
    }
    for key, make in panels.items():
        save(make(), figure_paths(outputs[key], formats), dpi=dpi)


def figure_4abc(pca: xr.Dataset, *, outputs: dict, formats, dpi: int, label: str) -> None:
    """Figure 4A-4C from the global PCA."""
    from residual_dynamics.paper import panels_reduction as reduction

    names = list(pca["sublayer"].values)
    own = pca["sublayer_cumulative_own"].values if "sublayer_cumulative_own" in pca else None
    at = int(pca.attrs.get("read_at", pca.sizes["n_components"]))
    ratio = pca["explained_variance_ratio"].values
    panels = {
        "fig4a": lambda: reduction.trajectories(
            pca["projection"].values,
            names,
            title=f"Trajectories in PC1/PC2 ({100 * ratio[0]:.1f} %, {100 * ratio[1]:.1f} % of "
            f"variance), {label}, N = {pca.attrs['n_samples']}",
            axis_label="PC",
        ),
        "fig4b": lambda: reduction.cumulative_curves(
            pca["sublayer_cumulative"].values,
            own,
            names,
            title=f"Cumulative explained variance per sublayer, {label}",
        ),
        "fig4c": lambda: reduction.cumulative_at(
            pca["sublayer_cumulative"].values,
            own,
            names,
            at,
            title=f"Explained variance at {at} components per sublayer, {label}",
        ),
    }
    for key, make in panels.items():
        save(make(), figure_paths(outputs[key], formats), dpi=dpi)


def figure_4d(
    pca: xr.Dataset, perturbation: xr.Dataset, *, outputs: dict, formats, dpi: int, label: str
) -> None:
    """Figure 4D (teleports) and the recovery measures per layer (4E, beyond the paper)."""
    from residual_dynamics.paper import panels_reduction as reduction

    names = list(perturbation["sublayer"].values)
    layers = [int(x) for x in perturbation["layer"].values]
    mean_path = np.nanmean(pca["projection"].values[:, :, :2], axis=0)
    panels = {
        "fig4d": lambda: reduction.teleports(
            perturbation["teleport_path"].values,
            perturbation["control_path"].values,
            mean_path,
            layers,
            names,
            int(perturbation.attrs["horizon"]),
            title=f"Teleports in PC1/PC2 at the last token of the control prompt, {label}",
        ),
        "fig4e": lambda: reduction.recovery(
            perturbation["measures"].values,
            list(perturbation["kind"].values),
            layers,
            list(perturbation["measure"].values),
            title=f"Recovery after perturbation, per layer, {label}",
            per_text=perturbation["dataset_measures"].values
            if "dataset_measures" in perturbation
            else None,
            seed=int(perturbation.attrs.get("seed", 0)),
            replicates=int(perturbation.attrs.get("bootstrap_replicates", 200)),
        ),
    }
    for key, make in panels.items():
        save(make(), figure_paths(outputs[key], formats), dpi=dpi)


def recording_figures(
    load, *, outputs: dict, formats, dpi: int, reading: str, label: str
) -> list[str]:
    """Every panel of Figures 1-4 that ``outputs`` names (the figures rule: one job per
    recording), reading each analysis through ``load(name)`` (``means``, ``stats``, ``mi``,
    ``rotations``, ``pca``, ``cae``, ``perturbation``) only when one of its figure's panels is
    asked for. Returns the figures drawn, in order."""
    import logging
    import time

    log = logging.getLogger("figures")
    # Which figure draws which panels: the first panel of each marks it as asked for.
    first = {"1": "fig1b", "2": "fig2a", "3": "fig3b", "4A-4C": "fig4a", "4D-4E": "fig4d"}
    drawn = []
    common = dict(outputs=outputs, formats=formats, dpi=dpi)
    draws = {
        "1": lambda: figure_1(load("means"), load("stats"), load("mi"), reading=reading, **common),
        "2": lambda: figure_2(load("means"), load("rotations"), **common),
        "3": lambda: figure_3(load("cae"), label=label, **common),
        "4A-4C": lambda: figure_4abc(load("pca"), label=label, **common),
        "4D-4E": lambda: figure_4d(load("pca"), load("perturbation"), label=label, **common),
    }
    for name, draw in draws.items():
        if first[name] not in outputs:
            continue
        start = time.perf_counter()
        draw()
        log.info("Figure %s drawn in %.1f s", name, time.perf_counter() - start)
        drawn.append(name)
    return drawn
