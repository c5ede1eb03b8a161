"""The figures of "Beyond the paper", one set per recording with its untrained twin beside it:
CKA between sublayers, intrinsic dimension and participation ratio over depth, the Jacobian
spectra of the sublayer maps over depth, the Lyapunov exponents, and the layer deletion / swap."""

from __future__ import annotations

import numpy as np

from residual_dynamics.beyond.config import FIGURES
from residual_dynamics.beyond.summary import SPECTRA, Recording, spectra_curves, why_not

__all__ = ["FIGURES", "write_figures"]
TWIN_STYLE = {"ls": "--", "alpha": 0.85}


def _pairs(main: Recording, twin: Recording | None) -> list[tuple[Recording, str, dict]]:
    """(recording, legend label, line style) of the recording and of its twin if there is one."""
    from residual_dynamics.report.style import PALETTE

    out = [(main, main.model, {"color": PALETTE[0]})]
    if twin is not None:
        out.append((twin, f"{twin.model} (untrained twin)", {"color": PALETTE[1], **TWIN_STYLE}))
    return out


def _not_run(fig, ax, main: Recording, reason: str, what: str):
    """A figure that says why the analysis did not run on this recording."""
    ax.text(0.02, 0.5, f"{what} not run on {main.label}:\n{reason}", transform=ax.transAxes)
    fig.suptitle(f"{what}: {main.label}")
    return fig


def cka_figure(main: Recording, twin: Recording | None):
    import matplotlib.pyplot as plt

    shown = [(r, label) for r, label, _ in _pairs(main, twin)]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 4.6), squeeze=False)
    lowest = min(float(np.nanmin(r.geometry["cka"].values)) for r, _ in shown)
    for ax, (rec, label) in zip(axes[0], shown, strict=True):
        names = [str(s) for s in rec.geometry["sublayer"].values]
        image = ax.imshow(
            rec.geometry["cka"].values, vmin=min(0.0, lowest), vmax=1.0, cmap="viridis"
        )
        ticks = np.arange(0, len(names), max(1, len(names) // 8))
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=7)
        ax.set_title(f"{label}\n{rec.geometry.attrs.get('cka_estimator', '')}", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="linear CKA")
    fig.suptitle(f"Layer similarity: {main.label}")
    return fig


def dimension_figure(main: Recording, twin: Recording | None):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for rec, label, style in _pairs(main, twin):
        g = rec.geometry
        x = np.arange(g.sizes["sublayer"])
        axes[0].plot(x, g["intrinsic_dimension"].values, marker=".", label=label, **style)
        axes[1].plot(x, g["participation_ratio"].values, marker=".", label=label, **style)
    names = [str(s) for s in main.geometry["sublayer"].values]
    ticks = np.arange(0, len(names), max(1, len(names) // 8))
    for ax, title in zip(
        axes, ("intrinsic dimension (TwoNN)", "participation ratio of the covariance"), strict=True
    ):
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=45, fontsize=7)
        ax.set(xlabel="sublayer", title=title)
    axes[0].legend(frameon=False, fontsize=8)
    fig.suptitle(f"Dimension across depth: {main.label}")
    return fig


def spectra_figure(main: Recording, twin: Recording | None, n_boot: int = 1000, seed: int = 0):
    import matplotlib.pyplot as plt

    from residual_dynamics.beyond.summary import transition_kind
    from residual_dynamics.report.style import kind_colours, kind_legend

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.6))
    if not main.linearised:
        return _not_run(fig, axes.flat[0], main, why_not(main.dynamics), "Jacobians")
    for rec, label, style in _pairs(main, twin):
        if not rec.linearised:
            continue
        curves = spectra_curves(rec.dynamics, n_boot, seed)
        names = [str(t) for t in rec.dynamics["transition"].values]
        x = np.arange(len(names))
        for ax, (name, _, _) in zip(axes.flat, SPECTRA, strict=True):
            band = curves[name]
            if not np.isfinite(band["median"]).any():
                continue
            ax.fill_between(x, band["low"], band["high"], color=style["color"], alpha=0.18, lw=0)
            ax.plot(x, band["median"], label=label, **style)
            if rec is main:
                ax.scatter(x, band["median"], c=kind_colours(map(transition_kind, names)), s=14)
    names = [str(t) for t in main.dynamics["transition"].values]
    ticks = np.arange(0, len(names), max(1, len(names) // 8))
    for ax, (name, _, title) in zip(axes.flat, SPECTRA, strict=True):
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=45, ha="right", fontsize=7)
        if not ax.lines:
            ax.text(0.5, 0.5, "not measured matrix-free", ha="center", transform=ax.transAxes)
        if name in ("sigma_top", "sigma_min", "spectral_radius"):
            ax.axhline(1.0, color="0.6", lw=0.8)
        if name == "sigma_min" and ax.lines:
            ax.set_yscale("log")  # contraction spans decades (post-norm maps especially)
        ax.set(title=title, xlabel="sublayer map")
    axes[0, 0].legend(frameon=False, fontsize=8)
    kind_legend(axes[0, 1])
    fig.suptitle(
        f"Jacobians of the sublayer maps: {main.label} (median over "
        f"{main.dynamics.sizes['text']} texts, bootstrap 95 % band)"
    )
    fig.tight_layout()
    return fig


def lyapunov_figure(main: Recording, twin: Recording | None):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    if not main.linearised:
        return _not_run(fig, ax, main, why_not(main.dynamics), "Lyapunov exponents")
    for offset, (rec, label, style) in enumerate(_pairs(main, twin)):
        if not rec.linearised:
            continue
        d = rec.dynamics
        i = d["exponent"].values + 0.12 * offset
        mean = d["lyapunov_mean"].values
        err = np.vstack([mean - d["lyapunov_ci_low"].values, d["lyapunov_ci_high"].values - mean])
        ax.errorbar(
            i,
            mean,
            yerr=np.nan_to_num(np.abs(err)),
            marker="o",
            ls="none",
            color=style["color"],
            capsize=3,
            label=label,
        )
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set(
        xlabel="exponent i",
        ylabel="λ_i per sublayer map (nats)",
        title=f"Finite-time Lyapunov exponents: {main.label}",
    )
    ax.legend(frameon=False, fontsize=8)
    return fig


def ablation_figure(main: Recording, twin: Recording | None):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    markers = {"delete": "o", "swap": "s"}
    drawn = False
    for offset, (rec, label, style) in enumerate(_pairs(main, twin)):
        if not rec.ablated:
            continue
        a = rec.ablation
        for vi, variant in enumerate(a["variant"].values):
            part = a.sel(variant=variant)
            x = part["layer"].values + 0.1 * (2 * offset + vi)
            for ax, name in zip(axes, ("delta_loss", "kl"), strict=True):
                value = part[name].values
                err = np.vstack(
                    [value - part[f"{name}_low"].values, part[f"{name}_high"].values - value]
                )
                ax.errorbar(
                    x,
                    value,
                    yerr=np.nan_to_num(np.abs(err)),
                    marker=markers.get(str(variant), "o"),
                    ls=style.get("ls", "-"),
                    color=style["color"],
                    alpha=0.9 if vi == 0 else 0.55,
                    capsize=2,
                    label=f"{label}: {variant}",
                )
                drawn = True
    if not drawn:
        return _not_run(fig, axes[0], main, why_not(main.ablation), "Layer deletion and swap")
    for ax in axes:
        ax.set_xticks(main.ablation["layer"].values)
    axes[0].axhline(0.0, color="0.6", lw=0.8)
    axes[0].set(xlabel="layer l", ylabel="Δ next-token loss (nats)", title="change in loss")
    axes[1].set(xlabel="layer l", ylabel="KL(intact ‖ altered) (nats)", title="next-token KL")
    if drawn:
        axes[1].legend(frameon=False, fontsize=7)
    fig.suptitle(f"Layer deletion and swap of l with l+1: {main.label}")
    return fig


def write_figures(
    main: Recording,
    twin: Recording | None,
    paths: dict[str, list],
    dpi: int = 150,
    n_boot: int = 1000,
    seed: int = 0,
) -> None:
    """Every figure of ``FIGURES`` for one recording and its twin; ``paths`` maps each key to the
    files it is saved to (PNG, SVG, ...)."""
    from residual_dynamics.report.style import save, set_style

    set_style()
    save(cka_figure(main, twin), paths["cka"], dpi)
    save(dimension_figure(main, twin), paths["dimension"], dpi)
    save(spectra_figure(main, twin, n_boot, seed), paths["spectra"], dpi)
    save(lyapunov_figure(main, twin), paths["lyapunov"], dpi)
    save(ablation_figure(main, twin), paths["ablation"], dpi)
