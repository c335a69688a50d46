"""Figures of the chapter *Beyond the paper*.

Colours as in :mod:`lincollapse.plotting.linear`: closed forms dark (OPTIMUM), collapsed latents
red (COLLAPSED), active ones blue (ACTIVE).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from lincollapse.experiments.beyond_the_paper import ExactCollapseResult, SyntheticLinearBetaResult
from lincollapse.plotting.style import ACTIVE, COLLAPSED, OPTIMUM, SERIES, house_style, new_figure


def plot_linear_beta_optimum(result: SyntheticLinearBetaResult) -> Figure:
    """Decoder singular values against βσ² (left) and collapsed latents against β (right)."""
    q = result.trained.shape[1]
    with house_style():
        fig, (left, right) = new_figure(1, 2, figsize=(10.5, 3.9))
        noise_grid = result.beta_grid * result.sigma2
        for j in range(q):
            colour = SERIES[j % len(SERIES)]
            left.plot(
                noise_grid,
                result.closed_form_grid[:, j],
                color=colour,
                lw=1.6,
                label=rf"$\sqrt{{(\lambda_{j + 1} - \beta\sigma^2)_+}}$",
            )
            left.plot(
                result.betas * result.sigma2,
                result.trained[:, j],
                "o",
                color=colour,
                mfc="none",
                ms=7,
                mew=1.5,
            )
            left.axvline(result.eigenvalues[j], color=colour, lw=0.7, ls=":")
        left.plot([], [], "o", color=OPTIMUM, mfc="none", label="trained (L-BFGS, float64)")
        left.set_xscale("log")
        left.set_xlabel(r"effective noise $\beta\sigma^2$ (dotted: $\lambda_j$)")
        left.set_ylabel("singular values of W")
        left.set_ylim(-0.15, 1.8 * float(result.closed_form_grid.max()))
        left.legend(loc="upper center", ncol=2, fontsize=8)  # above the curves

        counts = [
            int(np.count_nonzero(result.eigenvalues[:q] <= b * result.sigma2))
            for b in result.beta_grid
        ]
        right.step(
            result.beta_grid,
            counts,
            where="post",
            color=COLLAPSED,
            lw=1.8,
            label=r"$\#\{j \leq q: \lambda_j \leq \beta\sigma^2\}$",
        )
        right.plot(
            result.betas,
            result.collapsed_trained,
            "o",
            color=OPTIMUM,
            mfc="none",
            ms=8,
            label="trained: singular values < 1e-3",
        )
        right.set_xscale("log")
        right.set_xlabel(rf"KL weight $\beta$ ($\sigma^2$ = {result.sigma2:g})")
        right.set_ylabel(f"collapsed latents (q = {q})")
        right.set_ylim(-0.2, q + 0.2)
        right.legend(loc="upper left")
    return fig


def plot_exact_inference_collapse(result: ExactCollapseResult) -> Figure:
    """log p(x | z) along an active and the collapsed latent (left); exact posteriors (right)."""
    with house_style():
        fig, (left, right) = new_figure(1, 2, figsize=(10.5, 3.9))
        for i in range(result.loglik_active.shape[0]):
            colour = SERIES[i % len(SERIES)]
            left.plot(
                result.z,
                result.loglik_active[i],
                color=colour,
                lw=1.6,
                label=f"point {i + 1}, along active z{result.active + 1}",
            )
            left.plot(
                result.z,
                result.loglik_collapsed[i],
                color=COLLAPSED,
                lw=2.2,
                ls="--",
                label=(f"all points, along collapsed z{result.collapsed + 1}" if i == 0 else None),
            )
        left.set_xlabel("value of the traced latent (others 0)")
        left.set_ylabel(r"$\log p(x \mid z) - \log p(x \mid 0)$ (nats)")
        left.legend(loc="lower center", fontsize=8)

        grid = result.z
        prior = np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
        right.fill_between(grid, prior, color="0.85", label="prior N(0, 1)")
        for i in range(result.posterior_mean.shape[0]):
            colour = SERIES[i % len(SERIES)]
            for k, style in ((result.active, "-"), (result.collapsed, "--")):
                mean, sd = result.posterior_mean[i, k], result.posterior_sd[k]
                density = np.exp(-0.5 * ((grid - mean) / sd) ** 2) / (sd * np.sqrt(2 * np.pi))
                right.plot(
                    grid,
                    density,
                    style,
                    color=COLLAPSED if k == result.collapsed else colour,
                    lw=1.5 if k == result.active else 2.2,
                )
        right.plot([], [], "-", color=ACTIVE, label=f"p(z{result.active + 1} | x), each point")
        right.plot(
            [], [], "--", color=COLLAPSED, label=f"p(z{result.collapsed + 1} | x), every point"
        )
        right.set_xlabel("latent value")
        right.set_ylabel("density")
        right.legend(loc="upper right", fontsize=8)
    return fig
