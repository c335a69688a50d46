"""Figures of the chapter *Deep Gaussian VAEs: collapse against σ²*."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from lincollapse.experiments.deep import CollapseCurves, SigmaSummary
from lincollapse.experiments.deep_convergence import ConvergenceStudy
from lincollapse.plotting.style import ACTIVE, COLLAPSED, OPTIMUM, SERIES, house_style, new_figure


def _smoke(preset: str) -> str:
    return " — SMOKE TEST (fast preset)" if preset == "fast" else ""


def plot_collapse_vs_eps(result: CollapseCurves, columns: int = 4) -> Figure:
    """One panel per σ²: fraction of (ε, δ)-collapsed latents against ε ∈ [0, 2]."""
    runs = result.sigma2_init.size
    rows = int(np.ceil(runs / columns))
    with house_style():
        fig, axes = new_figure(
            rows,
            columns,
            figsize=(2.4 * columns, 2.1 * rows + 0.5),
            sharex=True,
            sharey=True,
            squeeze=False,
        )
        for r, ax in enumerate(axes.flat):
            if r >= runs:
                ax.set_axis_off()
                continue
            ax.plot(result.epsilons, result.fraction[r], color=COLLAPSED, lw=1.6)
            ax.set_ylim(-0.03, 1.03)
            title = f"σ² = {result.sigma2_init[r]:g}"
            if result.learned:
                title = f"σ² init {result.sigma2_init[r]:g} → {result.final_sigma2[r]:.3g}"
            ax.set_title(title)
            if r % columns == 0:
                ax.set_ylabel("collapsed fraction")
            if r >= runs - columns:
                ax.set_xlabel("ε (nats)")
        kind = "learned" if result.learned else "fixed"
        fig.suptitle(
            f"Deep Gaussian VAE, {kind} σ²: latents with KL < ε on ≥ {1 - result.delta:.0%} of "
            f"images (q = {result.latent}, {result.steps} steps){_smoke(result.preset)}"
        )
    return fig


def plot_sigma2_summary(result: SigmaSummary) -> Figure:
    """Collapsed fraction at ε against σ²: deep fixed, deep learned (at final σ²), linear count."""
    with house_style():
        fig, ax = new_figure(figsize=(6.4, 4.0))
        ax.semilogx(
            result.sigma2_line,
            result.linear_prediction,
            color=OPTIMUM,
            lw=1.2,
            label=r"linear theory $\max(0, q - \#\{\lambda_j > \sigma^2\})/q$",
        )
        ax.semilogx(
            result.sigma2_fixed,
            result.fraction_fixed,
            "o-",
            color=COLLAPSED,
            label="deep VAE, fixed σ²",
        )
        ax.semilogx(
            result.sigma2_learned_final,
            result.fraction_learned,
            "s",
            color=ACTIVE,
            mfc="none",
            mew=1.5,
            label="deep VAE, learned σ² (final σ²)",
        )
        for init, final, frac in zip(
            result.sigma2_learned_init,
            result.sigma2_learned_final,
            result.fraction_learned,
            strict=True,
        ):
            ax.annotate(
                f"init {init:g}",
                (final, frac),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=ACTIVE,
            )
        ax.set_xlabel("observation noise σ²")
        ax.set_ylabel(f"collapsed fraction (ε = {result.epsilon:g})")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(
            f"collapse against σ² (q = {result.latent}, {result.steps} steps, "
            f"preset {result.preset}){_smoke(result.preset)}"
        )
        ax.legend(loc="upper left", fontsize=8)
    return fig


def plot_convergence(result: ConvergenceStudy) -> Figure:
    """Collapsed fraction against step (preset's runs dashed, long runs solid) and the end gaps."""
    with house_style():
        fig, (ax_frac, ax_gap) = new_figure(
            1, 2, figsize=(10.5, 3.8), gridspec_kw={"width_ratios": [2.2, 1]}
        )
        for c, sigma2 in enumerate(result.sigma2):
            color = SERIES[c % len(SERIES)]
            label = f"σ² = {sigma2:g}, {result.preset} preset"
            ax_frac.plot(
                result.preset_steps[1:],
                result.preset_fraction[1:, c],
                color=color,
                ls="--",
                lw=1.3,
                label=label,
            )
            if result.long_available:
                ax_frac.plot(
                    result.long_steps[1:],
                    result.long_fraction[1:, c],
                    color=color,
                    lw=1.6,
                    label=f"σ² = {sigma2:g}, long run",
                )
            if result.paper_fraction is not None:
                ax_frac.plot(
                    result.paper_steps[1:],
                    result.paper_fraction[1:, c],
                    color=color,
                    ls=":",
                    lw=1.6,
                    label=f"σ² = {sigma2:g}, paper widths",
                )
        ax_frac.set_xscale("log")
        ax_frac.set_xlabel("Adam step")
        ax_frac.set_ylabel(f"collapsed fraction (ε = {result.epsilon:g})")
        ax_frac.set_ylim(-0.03, 1.03)
        title = f"dashed: {result.preset} preset ({result.preset_steps[-1]:,} steps)"
        if result.long_available:
            title += f"; solid: long run ({result.long_steps[-1]:,})"
        if result.paper_available:
            title += f"; dotted: paper widths ({result.paper_steps[-1]:,})"
        ax_frac.set_title(title, fontsize=8)
        columns = 1 + result.long_available + result.paper_available
        ax_frac.legend(fontsize=7 if columns < 3 else 6, ncol=columns, loc="upper left")
        positions = np.arange(result.sigma2.size)
        if result.long_available:
            long_final = result.preset_fraction[-1] - result.gap
            ax_gap.bar(
                positions,
                2 * result.tolerance,
                bottom=long_final - result.tolerance,
                width=0.5,
                color=OPTIMUM,
                alpha=0.25,
                label=f"long run ± {result.tolerance:g}",
            )
            ax_gap.plot(positions, long_final, "_", color=OPTIMUM, ms=22, mew=2)
        else:
            ax_gap.text(0.5, 0.5, "long runs absent", transform=ax_gap.transAxes, ha="center")
        ax_gap.plot(
            positions,
            result.preset_fraction[-1],
            "o",
            color=COLLAPSED,
            label=f"{result.preset} preset, end",
        )
        if result.paper_available:
            ax_gap.plot(
                positions + 0.15,
                result.paper_fraction[-1],
                "x",
                color=ACTIVE,
                mew=2,
                label=f"paper widths, step {result.paper_steps[-1]:,}",
            )
        ax_gap.set_xticks(positions, [f"σ² = {s:g}" for s in result.sigma2])
        ax_gap.set_xlim(-0.6, result.sigma2.size - 0.4)
        ax_gap.set_ylim(-0.03, 1.03)
        ax_gap.set_ylabel(f"final collapsed fraction (ε = {result.epsilon:g})")
        ax_gap.set_title(f"agreement{_smoke(result.preset)}")
        ax_gap.legend(fontsize=7)
    return fig


def plot_sigma2_study(result) -> Figure:
    """Converged collapsed fraction against σ²: ours fixed and learned, reproduction, linear count.

    ``result`` is a :class:`lincollapse.experiments.deep_study_figures.SigmaStudy`. Hollow
    markers are runs that hit the step cap before the plateau rule held.
    """
    with house_style():
        fig, ax = new_figure(figsize=(6.6, 4.1))
        ax.semilogx(
            result.sigma2_line,
            result.linear_line,
            color=OPTIMUM,
            lw=1.2,
            label=r"linear count $\max(0, q - \#\{\lambda_j > \sigma^2\})/q$",
        )
        rep = np.isfinite(result.reproduction_fixed)
        ax.semilogx(
            result.sigma2[rep],
            result.reproduction_fixed[rep],
            "x",
            color="#7f7f7f",
            ms=7,
            mew=1.5,
            label="public reproduction, fixed σ²",
        )
        for values, ok, x, color, marker, label in (
            (
                result.fixed,
                result.fixed_converged,
                result.sigma2,
                COLLAPSED,
                "o",
                "ours, fixed σ² (converged)",
            ),
            (
                result.learned,
                result.learned_converged,
                result.learned_final_sigma2,
                ACTIVE,
                "s",
                "ours, learned σ² (at its final σ²)",
            ),
        ):
            have = np.isfinite(values)
            if not have.any():
                continue
            ax.semilogx(
                x[have & ok], values[have & ok], marker, color=color, ls="none", label=label
            )
            if (have & ~ok).any():
                moving = label.split(" (")[0] + " (not converged)"
                ax.semilogx(
                    x[have & ~ok],
                    values[have & ~ok],
                    marker,
                    color=color,
                    mfc="none",
                    ls="none",
                    label=moving,
                )
        ax.set_xlabel("observation noise σ²")
        ax.set_ylabel("collapsed fraction (ε = 0.01)")
        ax.set_ylim(-0.03, 1.03)
        missing = int((~np.isfinite(result.fixed)).sum() + (~np.isfinite(result.learned)).sum())
        ax.set_title(
            "converged deep VAEs against the linear count"
            + (f" ({missing} of 22 runs not yet run)" if missing else "")
        )
        ax.legend(loc="upper left", fontsize=7.5)
    return fig


def plot_study_trajectories(result) -> Figure:
    """The σ² grid's runs over training: collapsed fraction at ε = 0.01 against the step, one
    line per σ² (fixed left, learned right), a filled end marker where the plateau rule held and
    a hollow one where it is not converged (still moving at its cap, or awaiting its
    continuation).

    ``result`` is a :class:`lincollapse.experiments.deep_study_figures.StudyTrajectories`.
    """
    import matplotlib as mpl

    with house_style():
        fig, axes = new_figure(1, 2, figsize=(10.0, 4.3), sharey=True)
        colours = mpl.colormaps["viridis"]
        logs = np.log10(result.sigma2) if result.sigma2.size else np.zeros(1)
        low, high = float(logs.min()), float(logs.max())
        # a log step axis (from the first record after initialisation): the large σ² settle
        # within a few thousand steps, the small ones start collapsing only after ten thousand
        shown = result.steps > 0
        labels = {}
        for ax, learned in ((axes[0], False), (axes[1], True)):
            for i in np.flatnonzero(result.learned == learned):
                shade = colours(0.0 if high == low else (logs[i] - low) / (high - low))
                y = result.fraction[i, :, 0]
                last = int(np.flatnonzero(np.isfinite(y))[-1])
                label = f"σ² = {result.sigma2[i]:g}"
                (line,) = ax.plot(result.steps[shown], y[shown], color=shade, lw=1.1, label=label)
                labels.setdefault(label, line)
                ax.plot(
                    result.steps[last],
                    y[last],
                    "o",
                    color=shade,
                    mfc=shade if result.converged[i] else "none",
                    ms=6,
                )
            ax.set_xlabel("Adam step (log scale)")
            ax.set_xscale("log")
            ax.set_title(
                ("σ² learned (legend: its initial value)" if learned else "σ² fixed")
                + "; hollow: not converged"
            )
        if labels:
            # one legend for both panels (a colour is one σ² on either side), below them
            fig.legend(
                labels.values(), labels.keys(), loc="outside lower center", ncol=6, fontsize=7
            )
        axes[0].set_ylabel("collapsed fraction (ε = 0.01)")
        axes[0].set_ylim(-0.03, 1.03)
    return fig


def plot_ablations(result) -> Figure:
    """Excess of the collapsed fraction over the linear count, per setting and σ² (seed range).

    ``result`` is a :class:`lincollapse.experiments.deep_study_figures.AblationTable`.
    """
    from lincollapse.experiments.deep_study_figures import ABLATIONS

    with house_style():
        fig, axes = new_figure(1, 2, figsize=(10.0, 3.8), sharey=True)
        settings = [s for s in ABLATIONS if any(r["setting"] == s for r in result.rows)]
        panels = (
            (axes[0], "sigma2", "observation noise σ²"),
            (axes[1], "relative", "σ² / λ₁ of that setting's data"),
        )
        for ax, key, label in panels:
            for k, setting in enumerate(settings):
                rows = [r for r in result.rows if r["setting"] == setting]
                x = np.array([r[key] for r in rows]) * 1.08**k  # small offsets to separate
                y = np.array([r["excess"] for r in rows])
                half = np.array([r["spread"] for r in rows]) / 2
                ax.errorbar(
                    x,
                    y,
                    yerr=half,
                    fmt="o-",
                    color=SERIES[k % len(SERIES)],
                    capsize=3,
                    label=ABLATIONS[setting],
                )
            ax.axhline(0.0, color=OPTIMUM, lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel(label)
        axes[0].set_ylabel("collapsed fraction − linear count")
        fig.suptitle("what moves the deep VAE toward the linear count (bars: range over seeds)")
        if settings:
            axes[0].legend(fontsize=7.5)
    return fig


def plot_latent_traversal(result) -> Figure:
    """Rows of decoded images along one latent each (active rows first, then a collapsed one).

    ``result`` is a :class:`lincollapse.experiments.deep_study_figures.LatentTraversal`, or ``None``
    when no trained model is available (the figure then says so).
    """
    with house_style():
        if result is None:
            fig, ax = new_figure(figsize=(6.0, 1.2))
            ax.set_axis_off()
            ax.text(
                0.5,
                0.5,
                "no trained model available: ship or train the study's runs",
                ha="center",
                va="center",
            )
            return fig
        rows, cols = result.images.shape[:2]
        fig, axes = new_figure(
            rows, cols, figsize=(1.05 * cols + 1.6, 1.15 * rows + 0.4), squeeze=False
        )
        for r in range(rows):
            for c in range(cols):
                ax = axes[r, c]
                ax.imshow(np.clip(result.images[r, c], 0, 1), cmap="gray_r", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == rows - 1:
                    ax.set_xlabel(f"{result.values[c]:+.0f}")
            state = "collapsed" if result.collapsed[r] else "active"
            color = COLLAPSED if result.collapsed[r] else ACTIVE
            axes[r, 0].set_ylabel(
                f"z{result.latents[r]}: {state}\nKL {result.kl[r]:.2g}", color=color, fontsize=8
            )
        fig.suptitle(f"decoded images along one latent ({result.run})", fontsize=9)
    return fig
