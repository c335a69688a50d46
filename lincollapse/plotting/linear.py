"""Figures of the linear chapters (*Posterior collapse*, *Probabilistic PCA*, *The linear VAE*).

Colours: the closed-form optimum is a dark line (OPTIMUM), collapsed latents/columns red
(COLLAPSED), active ones blue (ACTIVE).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from lincollapse.experiments.linear import (
    CollapsedColumnsResult,
    CollapseMetricResult,
    ElboGapResult,
    GramResult,
    LandscapeResult,
    LikelihoodCurve,
)
from lincollapse.plotting.style import ACTIVE, COLLAPSED, OPTIMUM, SERIES, house_style, new_figure


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
            ax.contour(result.eta, result.epsilon, predicted, levels=levels[::2], colors=OPTIMUM,
                       linestyles="--", linewidths=0.8)  # fmt: skip
            ax.plot(0, 0, "o", color=OPTIMUM, ms=5)
            lam = result.eigenvalues
            ax.set_title(f"σ² = {sigma2:g} (λ₂ = {lam[1]:g}, λ₃ = {lam[2]:g}): {kind}", fontsize=9)
            ax.set_xlabel(r"$\eta$ (along unused $u_3$)")
            ax.set_ylabel(r"$\varepsilon$ (along unused $u_2$)")
            fig.colorbar(filled, ax=ax, label="Δ average log-likelihood (nats)")
    return fig


def plot_collapsed_columns(result: CollapsedColumnsResult) -> Figure:
    """Collapsed columns #{j ≤ q : λ_j ≤ σ²} against σ², with the numerical checks."""
    with house_style():
        fig, ax = new_figure(figsize=(6.5, 3.8))
        ax.step(result.sigma2, result.collapsed, where="post", color=COLLAPSED, lw=1.8,
                label=r"collapsed: $\#\{j \leq q: \lambda_j \leq \sigma^2\}$")  # fmt: skip
        ax.step(result.sigma2, result.q - result.collapsed, where="post", color=ACTIVE, lw=1.8,
                label="active: q − collapsed")  # fmt: skip
        ax.plot(result.check_sigma2, result.check_trained, "o", mfc="none", color=OPTIMUM, ms=8,
                label="maximised from random start (σ² fixed)")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(r"fixed $\sigma^2$")
        ax.set_ylabel(f"columns of W (q = {result.q})")
        ax.set_ylim(-0.03 * result.q, 1.03 * result.q)
        ax.legend(loc="center right")
    return fig


def plot_likelihood_vs_latent_size(result: LikelihoodCurve) -> Figure:
    """ℓ*(q), the trained ELBO and fixed-σ² pPCA against the latent size."""
    with house_style():
        fig, ax = new_figure(figsize=(6.5, 4.0))
        q = result.latent_sizes
        ax.plot(q, result.ppca_optimum, "-", color=OPTIMUM, lw=2.2, label=r"pPCA MLE $\ell^*(q)$")
        ax.plot(q, result.elbo, "o", color=ACTIVE, ms=7, mfc="none", mew=1.8,
                label=f"linear VAE ELBO ({result.optimiser})")  # fmt: skip
        ax.plot(q, result.fixed_sigma2_loglik, "s--", color=COLLAPSED, ms=5,
                label=rf"pPCA, $\sigma^2 = \sigma^2_{{MLE}}({result.reference_q})$"
                f" = {result.fixed_sigma2:.3g}")  # fmt: skip
        ax.set_xlabel("latent dimension q")
        ax.set_ylabel("nats per image")
        ax.legend(loc="lower right")
    return fig


def plot_gram_matrices(result: GramResult) -> Figure:
    """|WᵀW| (top-left block) of the trained linear VAE and of pPCA maximisers."""
    panels = (
        ("vae", "linear VAE (trained)", result.vae),
        ("ppca_rotated", "pPCA MLE, random rotation", result.ppca_rotated),
        ("ppca_mle", "pPCA MLE, R = I", result.ppca_mle),
    )
    with house_style():
        fig, axes = new_figure(1, 3, figsize=(11.5, 3.9))
        vmax = max(float(np.abs(g).max()) for _, _, g in panels) or 1.0
        for ax, (key, title, gram) in zip(axes, panels, strict=True):
            image = ax.imshow(np.abs(gram), cmap="Blues", vmin=0, vmax=vmax)
            ratio = result.off_diagonal_ratio[key]
            ax.set_title(f"{title}\noff-diagonal mass {ratio:.2e}", fontsize=9)
            ax.set_xlabel("latent j")
            ax.set_ylabel("latent i")
            ax.grid(False)
        fig.colorbar(image, ax=axes, label=r"$|W^\top W|_{ij}$", shrink=0.85)
    return fig


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
        right.plot(degrees, result.gap_formula, "--", color=SERIES[1], lw=1.4,
                   label=r"$\frac{1}{2}(\sum_i \log M_{ii} - \log\det M)$")  # fmt: skip
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
            ax.plot(result.epsilons, result.fractions[k], color=colour, lw=2,
                    label=f"trained, σ² = {sigma2:g}")  # fmt: skip
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
