"""Figures of the linear chapters (*Posterior collapse*, *Probabilistic PCA*, *The linear VAE*).

Colours: the closed-form optimum is a dark line (OPTIMUM), collapsed latents/columns red
(COLLAPSED), active ones blue (ACTIVE).
"""

from __future__ import annotations

import itertools

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from lincollapse.experiments.linear_vae_results import ElboGapResult, GramResult, LikelihoodCurve
from lincollapse.experiments.posterior_collapse import CollapseMetricResult
from lincollapse.experiments.ppca import (
    CollapsedColumnsResult,
    LandscapeResult,
    PPCA2DResult,
    PPCA2DState,
)
from lincollapse.plotting.style import ACTIVE, COLLAPSED, OPTIMUM, SERIES, house_style, new_figure


def _ellipse(covariance: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Points (200, 2) at Mahalanobis distance ``radius`` from ``centre`` under ``covariance``."""
    t = np.linspace(0.0, 2.0 * np.pi, 200)
    circle = radius * np.stack([np.cos(t), np.sin(t)])
    return (np.linalg.cholesky(covariance) @ circle).T + centre


def plot_ppca_2d(result: PPCA2DResult, states: tuple[PPCA2DState, ...] | None = None) -> Figure:
    """The two-dimensional pPCA example: ellipses, the posterior of z, and collapse against σ².

    Left: the data, the data ellipse (S) and the model ellipses (C = WWᵀ + σ²I) at the MLE and at
    each fixed σ² of ``states`` (default: ``result.fixed``), with x⋆ and the points W·E[z | x⋆]
    (+ μ̂) where each model's posterior mean puts it. Middle: p(z | x⋆) for each model beside the
    prior. Right: mean and standard deviation of p(z | x⋆) against σ², with λ_2 = σ²_MLE and λ_1.
    """
    states = result.fixed if states is None else tuple(states)
    spectrum = result.spectrum
    mu = spectrum.mean
    lam1, lam2 = spectrum.eigenvalues
    others = itertools.cycle(SERIES[1:])
    colours = [COLLAPSED if state.collapsed else next(others) for state in states]
    shown = [(result.mle, OPTIMUM, "--", f"MLE, σ² = λ₂ = {result.sigma2_mle:.3g}")]
    for state, colour in zip(states, colours, strict=True):
        note = " (collapsed)" if state.collapsed else ""
        shown.append((state, colour, "-", f"σ² = {state.sigma2:.3g}{note}"))
    with house_style():
        fig, (left, middle, right) = new_figure(1, 3, figsize=(13.5, 5.0))

        left.plot(*result.x.T, ".", color="0.7", ms=3, zorder=1)
        data = _ellipse(spectrum.covariance, mu, result.radius)
        left.plot(*data.T, color="0.35", lw=3.5, alpha=0.6, label="data: S")
        for state, colour, style, label in shown:
            outline = _ellipse(state.covariance, mu, result.radius)
            left.plot(*outline.T, style, color=colour, lw=1.6, label=label)
            left.plot(*(mu + state.decoded_mean), "o", color=colour, ms=6, mec="white", zorder=4)
        u1 = spectrum.eigenvectors[:, 0]
        reach = result.radius * np.sqrt(max(lam1, *(s.sigma2 for s in states))) * 1.15
        left.plot(
            *np.stack([mu - reach * u1, mu + reach * u1]).T,
            ":",
            color="0.4",
            lw=1,
            label=r"$\hat\mu + t\,u_1$",
        )
        left.plot(
            *result.point,
            "*",
            color=OPTIMUM,
            ms=13,
            mec="white",
            zorder=5,
            label=r"$x_\star$ (dots: $\hat\mu + W\,\mathrm{E}[z \mid x_\star]$)",
        )
        left.set_aspect("equal", adjustable="datalim")
        left.set_xlabel("$x_1$")
        left.set_ylabel("$x_2$")
        left.set_title(f"data and model ellipses (Mahalanobis radius {result.radius:g})")
        left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=7.5)

        z = np.linspace(-4.0, 4.0, 401)
        middle.plot(
            z,
            np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi),
            color="0.5",
            lw=3,
            alpha=0.5,
            label="prior N(0, 1)",
        )
        for state, colour, style, label in shown:
            v = state.posterior_variance
            density = np.exp(-0.5 * (z - state.posterior_mean) ** 2 / v) / np.sqrt(2 * np.pi * v)
            middle.plot(z, density, style, color=colour, lw=1.6, label=label)
        middle.set_xlabel("z")
        middle.set_ylabel("density")
        middle.set_title(r"exact posterior $p(z \mid x_\star)$")
        middle.legend(loc="upper left", fontsize=7.5)

        grid = result.sweep_sigma2
        right.axvspan(lam1, grid[-1], color=COLLAPSED, alpha=0.08, lw=0)
        right.plot(
            grid,
            result.sweep_posterior_mean,
            color=ACTIVE,
            lw=2,
            label=r"mean of $p(z \mid x_\star)$",
        )
        right.plot(
            grid, result.sweep_posterior_sd, "--", color=ACTIVE, lw=2, label=r"standard deviation"
        )
        right.axhline(1.0, color="0.5", lw=1, ls=":")
        right.axhline(0.0, color="0.5", lw=1, ls=":")
        right.axvline(lam2, color=OPTIMUM, lw=1.2, ls="--", label=f"λ₂ = σ²_MLE = {lam2:.3g}")
        right.axvline(lam1, color=COLLAPSED, lw=1.5, label=f"λ₁ = {lam1:.3g}: collapsed from here")
        for state, colour in zip(states, colours, strict=True):
            values = [state.posterior_mean, np.sqrt(state.posterior_variance)]
            right.plot([state.sigma2] * 2, values, "o", color=colour, ms=6, mec="white")
        right.set_xscale("log")
        right.set_xlim(grid[0], grid[-1])
        right.set_xlabel(r"fixed $\sigma^2$")
        right.set_title("the posterior of z becomes the prior at σ² = λ₁")
        right.legend(loc="center left", fontsize=7.5)
    return fig


def plot_ppca_landscape(result: LandscapeResult) -> Figure:
    """Exact change of the log-likelihood (filled) and its second-order prediction (dashed)."""
    k = result.sigma2_values.size
    with house_style():
        fig, axes = new_figure(1, k, figsize=(4.6 * k, 4.0), squeeze=False)
        for ax, sigma2, exact, predicted, kind in zip(
            axes[0], result.sigma2_values, result.exact, result.predicted, result.kind, strict=True
        ):
            limit = float(np.abs(exact).max()) or 1.0
            levels = np.linspace(-limit, limit, 21)
            filled = ax.contourf(result.eta, result.epsilon, exact, levels=levels, cmap="RdBu_r")
            ax.contour(
                result.eta,
                result.epsilon,
                predicted,
                levels=levels[::2],
                colors=OPTIMUM,
                linestyles="--",
                linewidths=0.8,
            )
            ax.plot(0, 0, "o", color=OPTIMUM, ms=5)
            lam = result.eigenvalues
            ax.set_title(f"σ² = {sigma2:g} (λ₂ = {lam[1]:g}, λ₃ = {lam[2]:g}): {kind}", fontsize=9)
            ax.set_xlabel(r"$\eta$ (along unused $u_3$)")
            ax.set_ylabel(r"$h$ (along unused $u_2$)")
            fig.colorbar(filled, ax=ax, label="Δ average log-likelihood (nats)")
    return fig


def plot_collapsed_columns(result: CollapsedColumnsResult) -> Figure:
    """Collapsed columns #{j ≤ q : λ_j ≤ σ²} against σ², with the numerical checks."""
    with house_style():
        fig, ax = new_figure(figsize=(6.5, 3.8))
        ax.step(
            result.sigma2,
            result.collapsed,
            where="post",
            color=COLLAPSED,
            lw=1.8,
            label=r"collapsed: $\#\{j \leq q: \lambda_j \leq \sigma^2\}$",
        )
        ax.step(
            result.sigma2,
            result.q - result.collapsed,
            where="post",
            color=ACTIVE,
            lw=1.8,
            label="active: q − collapsed",
        )
        ax.plot(
            result.check_sigma2,
            result.check_trained,
            "o",
            mfc="none",
            color=OPTIMUM,
            ms=8,
            label="maximised from random start (σ² fixed)",
        )
        ax.set_xscale("log")
        ax.set_xlabel(r"fixed $\sigma^2$")
        ax.set_ylabel(f"columns of W (q = {result.q})")
        ax.set_ylim(-0.03 * result.q, 1.03 * result.q)
        ax.legend(loc="center right")
    return fig


# One colour and marker per trainer, in every figure of the chapter.
METHOD_STYLE = {
    "profiled_lbfgs": (SERIES[0], "o"),
    "profiled_adam": (SERIES[0], "o"),
    "joint_lbfgs": (SERIES[2], "^"),
    "adam": (SERIES[1], "s"),
}
GAP_FLOOR = 1e-6  # gaps at or below round-off are drawn here on log axes


def _style(method: str) -> tuple[str, str]:
    return METHOD_STYLE.get(method, (SERIES[3], "D"))


def plot_likelihood_vs_latent_size(result: LikelihoodCurve) -> Figure:
    """ℓ*(q), trained ELBOs and fixed-σ² pPCA against q (left); each trainer's gap (right)."""
    from lincollapse.experiments.linear_baselines import LABELS

    runs = {result.method: result.elbo}
    runs.update({name: base.elbo for name, base in result.baselines.items()})
    with house_style():
        fig, (left, right) = new_figure(1, 2, figsize=(11.5, 4.2))
        q = result.latent_sizes
        left.plot(q, result.ppca_optimum, "-", color=OPTIMUM, lw=2.2, label=r"pPCA MLE $\ell^*(q)$")
        for name, elbo in runs.items():
            colour, marker = _style(name)
            label = LABELS.get(name, name)
            left.plot(q, elbo, marker, color=colour, ms=7, mfc="none", mew=1.6, label=label)
            gap = np.maximum(result.ppca_optimum - elbo, GAP_FLOOR)
            right.plot(q, gap, marker + "-", color=colour, ms=6, mfc="none", mew=1.6, label=label)
        left.plot(
            q,
            result.fixed_sigma2_loglik,
            "s--",
            color=COLLAPSED,
            ms=4,
            label=rf"pPCA, $\sigma^2 = \sigma^2_{{MLE}}({result.reference_q})$"
            f" = {result.fixed_sigma2:.3g}",
        )
        left.set_xlabel("latent dimension q")
        left.set_ylabel("nats per image")
        left.legend(loc="lower right", fontsize=8)
        right.axhline(0.01, color=OPTIMUM, ls=":", lw=1.2, label="0.01 nats")
        right.set_yscale("log")
        right.set_xlabel("latent dimension q")
        right.set_ylabel(r"$\ell^*(q)$ − final ELBO (nats per image)")
        right.set_title(f"gaps at or below round-off drawn at {GAP_FLOOR:g}", fontsize=8)
        right.legend(loc="best", fontsize=8)
    return fig


COSINE_FLOOR = 1e-3  # |cos| between columns below this is drawn as this (log colour scale)


def column_cosines(gram: np.ndarray) -> np.ndarray:
    """|cos(w_i, w_j)| = |G_ij| / √(G_ii G_jj) from a Gram matrix G = WᵀW (zero columns: 0)."""
    gram = np.asarray(gram, dtype=np.float64)
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    scale = np.outer(norms, norms)
    return np.divide(np.abs(gram), scale, out=np.zeros_like(gram), where=scale > 0)


def plot_gram_matrices(result: GramResult) -> Figure:
    """Top: |cos| between the leading columns of each trained linear VAE (the Gram matrix WᵀW
    normalised by the column norms) beside a rotated pPCA maximiser's. Bottom: how
    training got there — gap and Gram ratio against CPU time, and each column's misalignment
    with its nearest principal direction against how close that eigenvalue's neighbour is."""
    panels = [("ppca_rotated", "pPCA MLE, random rotation R", result.ppca_rotated)]
    panels += [(name, run.label, run.gram) for name, run in result.runs.items()]
    with house_style():
        fig = new_figure(figsize=(3.1 * max(len(panels), 3) + 1.0, 7.6))[0]
        fig.clf()
        grid = fig.add_gridspec(2, 1, height_ratios=(1.0, 1.05))
        top = grid[0].subgridspec(1, len(panels)).subplots()
        bottom = grid[1].subgridspec(1, 3).subplots()
        norm = LogNorm(vmin=COSINE_FLOOR, vmax=1.0)
        for ax, (key, title, gram) in zip(np.atleast_1d(top), panels, strict=True):
            image = ax.imshow(
                np.maximum(column_cosines(gram), COSINE_FLOOR), cmap="Blues", norm=norm
            )
            ratio = result.off_diagonal_ratio.get(key)
            if ratio is None:
                ratio = result.runs[key].ratio
            ax.set_title(f"{_wrap(title)}\noff-diagonal ratio {ratio:.2e}", fontsize=8)
            ax.set_xlabel("latent j")
            ax.set_ylabel("latent i")
            ax.grid(False)
        fig.colorbar(
            image,
            ax=list(np.atleast_1d(top)),
            shrink=0.8,
            label=r"$|\cos(w_i, w_j)| = |W^\top W|_{ij} / \|w_i\| \|w_j\|$",
        )
        gap_ax, ratio_ax, align_ax = bottom
        for name, run in result.runs.items():
            colour, marker = _style(name)
            cpu = run.trace["cpu_seconds"]
            seconds = np.maximum(cpu - cpu[0], 1e-2)  # from the first evaluation on
            gap = np.maximum(result.optimum - run.trace["elbo"], GAP_FLOOR)
            gap_ax.plot(seconds, gap, "-", color=colour, lw=1.6)
            ratio_ax.plot(
                seconds, run.trace["gram_ratio"], "-", color=colour, lw=1.6, label=run.label
            )
            align_ax.plot(
                result.spacing(name),
                np.maximum(1.0 - run.cos2, 1e-8),
                marker,
                color=colour,
                ms=4,
                mfc="none",
                mew=0.9,
                alpha=0.7,
            )
        gap_ax.axhline(0.01, color=OPTIMUM, ls=":", lw=1.2)
        for ax in (gap_ax, ratio_ax, align_ax):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        gap_ax.set_xlabel("CPU time (s)")
        gap_ax.set_ylabel(rf"$\ell^*({result.q})$ − ELBO (nats per image)")
        ratio_ax.legend(loc="upper right", fontsize=7)
        ratio_ax.set_xlabel("CPU time (s)")
        ratio_ax.set_ylabel(f"off-diagonal ratio, leading {result.block} latents")
        align_ax.set_xlabel(r"relative spacing of the matched $\lambda_i$ to its neighbours")
        align_ax.set_ylabel(rf"$1 - \cos^2(w_j, u_i)$, all {result.q} columns")
    return fig


def _wrap(title: str, width: int = 34) -> str:
    """Break a long panel title before its parenthesis, else at the last space before ``width``."""
    if len(title) <= width:
        return title
    cut = title.find(" (")
    if cut <= 0:
        cut = title.rfind(" ", 0, width)
    return title[:cut].rstrip() + "\n" + title[cut:].lstrip()


def plot_elbo_gap(result: ElboGapResult) -> Figure:
    """log p and ELBO* along W_MLE R(θ) (left) and their gap with the closed form (right)."""
    with house_style():
        fig, (left, right) = new_figure(1, 2, figsize=(10, 3.8))
        degrees = np.degrees(result.theta)
        left.plot(degrees, result.log_likelihood, color=OPTIMUM, lw=2.2, label="log-likelihood")
        left.plot(degrees, result.elbo, color=ACTIVE, lw=1.6, label="ELBO, optimal encoder")
        left.set_xlabel(r"rotation angle $\theta$ of latents 1, 2 (degrees)")
        left.set_ylabel("nats per image")
        left.legend(loc="lower center")
        right.plot(degrees, result.gap, color=ACTIVE, lw=2.4, label="log p − ELBO")
        right.plot(
            degrees,
            result.gap_formula,
            "--",
            color=SERIES[1],
            lw=1.4,
            label=r"$\frac{1}{2}(\sum_i \log M_{ii} - \log\det M)$",
        )
        right.set_xlabel(r"rotation angle $\theta$ (degrees)")
        right.set_ylabel("gap (nats per image)")
        right.legend(loc="upper right")
        for ax in (left, right):
            ax.set_xticks([0, 45, 90, 135, 180])
    return fig


def plot_collapse_metric(result: CollapseMetricResult) -> Figure:
    """Collapsed fraction of trained linear VAEs against ε, with the linear prediction."""
    with house_style():
        fig, ax = new_figure(figsize=(6.5, 3.8))
        for k, sigma2 in enumerate(result.sigma2_values):
            colour = SERIES[k % len(SERIES)]
            ax.plot(
                result.epsilons,
                result.fractions[k],
                color=colour,
                lw=2,
                label=f"trained, σ² = {sigma2:g}",
            )
            ax.axhline(
                result.predicted[k],
                color=colour,
                ls="--",
                lw=1.2,
                label=rf"$\#\{{\lambda_j \leq \sigma^2\}}/q$ = {result.predicted[k]:.3f}",
            )
        ax.set_xlabel(r"threshold $\varepsilon$ (nats)")
        ax.set_ylabel(rf"collapsed fraction ($\delta$ = {result.delta:g}, q = {result.q})")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="lower right")
    return fig
