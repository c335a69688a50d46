"""Figures of the chapter *β, σ² and KL annealing*."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from lincollapse.experiments.beta import MnistLinearBetaResult
from lincollapse.experiments.kl_annealing_figures import AnnealingConvergence, AnnealingResult
from lincollapse.plotting.style import ACTIVE, COLLAPSED, OPTIMUM, SERIES, house_style, new_figure

KIND_STYLE = {
    "constant": {"color": COLLAPSED, "ls": "-"},
    "annealed": {"color": ACTIVE, "ls": "--"},
    "optimal": {"color": SERIES[2], "ls": ":"},
}


def _smoke(preset: str) -> str:
    return " — SMOKE TEST (fast preset)" if preset == "fast" else ""


def plot_linear_beta(result: MnistLinearBetaResult) -> Figure:
    """Collapsed latents against β (trained vs closed form) and trained vs closed-form spectra."""
    with house_style():
        fig, (ax_count, ax_sv) = new_figure(1, 2, figsize=(10.5, 3.9))
        top = np.sort(result.eigenvalues)[::-1][: result.latent]
        line = np.geomspace(result.betas.min() / 1.5, result.betas.max() * 1.5, 600)
        theory = (top[None, :] <= line[:, None] * result.sigma2).sum(axis=1)
        ax_count.semilogx(
            line,
            theory,
            color=OPTIMUM,
            lw=1.2,
            drawstyle="steps-post",
            label=r"closed form $\#\{j \leq q: \lambda_j \leq \beta\sigma^2\}$",
        )
        ax_count.semilogx(
            result.betas,
            result.predicted_collapsed,
            "x",
            color=OPTIMUM,
            ms=7,
            label=f"closed form, KL < ε = {result.epsilon:g}",
        )
        ax_count.semilogx(
            result.betas,
            result.trained_collapsed,
            "o",
            color=COLLAPSED,
            mfc="none",
            mew=1.5,
            ms=8,
            label="trained β-objective, KL < ε",
        )
        ax_count.axvline(1.0, color="0.6", lw=0.8)
        ax_count.set_xlabel("KL weight β")
        ax_count.set_ylabel(f"collapsed latents (of q = {result.latent})")
        ax_count.set_title(f"linear β-VAE on MNIST, σ² = {result.sigma2:g}{_smoke(result.preset)}")
        ax_count.legend(loc="upper left", fontsize=8)
        secondary = ax_count.secondary_xaxis(
            "top", functions=(lambda b: b * result.sigma2, lambda s: s / result.sigma2)
        )
        secondary.set_xlabel("effective noise βσ²")

        for b in range(result.betas.size):
            color = SERIES[b % len(SERIES)]
            ax_sv.plot(
                result.optimum_squared_singular_values[b],
                result.trained_squared_singular_values[b],
                ".",
                color=color,
                ms=5,
            )
        most = float(result.optimum_squared_singular_values.max()) * 1.05 or 1.0
        ax_sv.plot([0, most], [0, most], color=OPTIMUM, lw=0.8, label="equal")
        ax_sv.set_xlabel(r"closed form $\max(0, \lambda_j - \beta\sigma^2)$")
        ax_sv.set_ylabel("trained decoder: squared singular values")
        ax_sv.set_title(
            f"all β and latents: max |difference| {result.max_singular_error:.1e}", fontsize=9
        )
        ax_sv.legend(loc="upper left", fontsize=8)
    return fig


def plot_annealing(result: AnnealingResult) -> Figure:
    """Collapsed fraction and effective noise against step, with and without KL warm-up."""
    runs = result.runs
    with house_style():
        fig, (ax_frac, ax_noise) = new_figure(1, 2, figsize=(10.5, 3.9))
        seeds = sorted({s.seed for s in runs.specs})
        for r, spec in enumerate(runs.specs):
            style = dict(KIND_STYLE[result.kind[r]])
            style["alpha"] = 1.0 if spec.seed == seeds[0] else 0.55
            ax_frac.plot(runs.steps, result.fraction[:, r], lw=1.5, label=result.labels[r], **style)
            positive = runs.effective_sigma2[:, r] > 0
            ax_noise.semilogy(
                runs.steps[positive], runs.effective_sigma2[positive, r], lw=1.5, **style
            )
        ax_frac.axhline(
            result.linear_count,
            color=OPTIMUM,
            lw=1.0,
            label=f"linear count at σ² = {result.sigma2:g}",
        )
        for ax in (ax_frac, ax_noise):
            ax.axvspan(0, result.warmup, color=ACTIVE, alpha=0.07, lw=0)
            ax.set_xlabel("Adam step")
        ax_frac.set_ylim(-0.03, 1.03)
        ax_frac.set_ylabel(f"collapsed fraction (ε = {result.epsilon:g})")
        ax_frac.set_title(
            f"deep VAE, q = {result.latent}; shaded: KL warm-up{_smoke(result.preset)}"
        )
        ax_frac.legend(loc="lower right", fontsize=7)
        lam = result.eigenvalues
        for value, name in ((lam[0], "λ_1"), (lam[result.latent - 1], f"λ_{result.latent}")):
            ax_noise.axhline(value, color=OPTIMUM, lw=0.8, ls="-.")
            ax_noise.annotate(
                name,
                (runs.steps[-1], value),
                xytext=(-18, 3),
                textcoords="offset points",
                fontsize=8,
                color=OPTIMUM,
            )
        ax_noise.set_ylabel("effective noise βσ² (or optimal σ²)")
        ax_noise.set_title("the noise level each run is trained at")
    return fig


def plot_annealing_convergence(result: AnnealingConvergence) -> Figure:
    """Long runs: collapsed fraction and the annealed runs' ELBO advantage against step."""
    book = result.book
    with house_style():
        fig, (ax_frac, ax_elbo) = new_figure(1, 2, figsize=(10.5, 3.9))
        if result.long is None:
            for ax in (ax_frac, ax_elbo):
                ax.text(0.5, 0.5, "long runs absent", transform=ax.transAxes, ha="center")
            return fig
        long = result.long
        seeds = sorted({s.seed for s in long.specs})
        for r, spec in enumerate(long.specs):
            style = dict(KIND_STYLE[result.long_kind[r]])
            style["alpha"] = 1.0 if spec.seed == seeds[0] else 0.55
            ax_frac.plot(long.steps, result.long_fraction[:, r], lw=1.5, label=spec.label, **style)
        for c, seed in enumerate(seeds):
            ax_elbo.plot(
                long.steps[1:],
                result.elbo_advantage[1:, c],
                color=ACTIVE,
                lw=1.5,
                alpha=1.0 if c == 0 else 0.55,
                label=f"seed {seed}",
            )
        ax_elbo.axhline(0.0, color=OPTIMUM, lw=0.8)
        for ax in (ax_frac, ax_elbo):
            ax.axvspan(0, book.warmup, color=ACTIVE, alpha=0.07, lw=0)
            ax.axvline(book.steps, color="0.4", lw=0.8, ls="-.")
            ax.set_xlabel("Adam step")
        ax_frac.annotate(
            f"book preset ends ({book.steps:,})",
            (book.steps, 0.02),
            xytext=(4, 0),
            textcoords="offset points",
            fontsize=7,
            color="0.3",
        )
        ax_frac.set_ylim(-0.03, 1.03)
        ax_frac.set_ylabel(f"collapsed fraction (ε = {book.epsilon:g})")
        ax_frac.set_title(f"long runs, σ² = {book.sigma2:g}{_smoke(book.preset)}")
        ax_frac.legend(loc="center right", fontsize=6.5)
        ax_elbo.set_ylabel("ELBO annealed − constant (nats per image)")
        ax_elbo.set_title("what the warm-up buys, per seed")
        ax_elbo.legend(fontsize=7)
    return fig
