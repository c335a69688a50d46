"""Figures of the part *Training the linear VAE*: stochastic ELBO; linear decoder, encoders."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from lincollapse.experiments.gap_curves import TOLERANCES
from lincollapse.experiments.linear_decoder_encoders import ENCODER_LABELS, EncoderComparisonResult
from lincollapse.experiments.stochastic_elbo import ESTIMATOR_LABELS, StochasticELBOResult
from lincollapse.plotting.style import ACTIVE, COLLAPSED, OPTIMUM, SERIES, house_style, new_figure

ESTIMATOR_COLOURS = {"analytic": ACTIVE, "sample": COLLAPSED}
ENCODER_COLOURS = {"linear": SERIES[0], "deep-linear": SERIES[1], "mlp": SERIES[2]}


def _smoke_label(fig: Figure, preset: str) -> None:
    if preset == "fast":
        fig.suptitle(
            "SMOKE-TEST output (fast preset): numbers are not meant to be read", color="0.4"
        )


def _band(ax, steps: np.ndarray, values: np.ndarray, colour: str, label: str) -> None:
    """Mean over seeds as a line, min–max over seeds as a band, each seed faintly."""
    for row in values:
        ax.plot(steps, row, color=colour, lw=0.6, alpha=0.35)
    ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.2, lw=0)
    ax.plot(steps, values.mean(axis=0), color=colour, lw=1.8, label=label)


def _curve_panels(ax_elbo, ax_gap, steps, curves, optimum, colours, labels, q) -> None:
    for name, values in curves.items():
        _band(ax_elbo, steps, values, colours[name], f"{labels[name]} ({values.shape[0]} seeds)")
        gaps = np.clip(optimum - values, 1e-4, None)
        _band(ax_gap, steps, gaps, colours[name], labels[name])
    ax_elbo.axhline(optimum, color=OPTIMUM, ls="--", lw=1.2, label=rf"pPCA optimum $\ell^*({q})$")
    low = min(float(np.quantile(v[:, -1], 0.0)) for v in curves.values())
    ax_elbo.set_ylim(min(low, optimum) - max(40.0, 3 * (optimum - low)), optimum + 8.0)
    ax_elbo.set_xlabel("Adam step")
    ax_elbo.set_ylabel("ELBO (nats / image)")
    ax_elbo.set_title("training ELBO (analytic, all images)")
    ax_elbo.legend(loc="lower right", fontsize=8)
    for tolerance in TOLERANCES:
        ax_gap.axhline(tolerance, color=OPTIMUM, ls=":", lw=1)
        ax_gap.annotate(
            f"{tolerance:g} nat",
            (steps[-1], tolerance),
            xytext=(-2, 2),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=8,
            color=OPTIMUM,
        )
    ax_gap.set_yscale("log")
    ax_gap.set_xlabel("Adam step")
    ax_gap.set_ylabel(r"$\ell^*(q) - $ ELBO (nats / image)")
    ax_gap.set_title("distance to the optimum (log scale)")


def plot_stochastic_vs_analytic(result: StochasticELBOResult) -> Figure:
    """ELBO vs step for both estimators (left), gap to ℓ*(q) (middle), gradient noise (right)."""
    with house_style():
        fig, (ax_elbo, ax_gap, ax_grad) = new_figure(1, 3, figsize=(13.0, 3.9))
        _curve_panels(
            ax_elbo,
            ax_gap,
            result.steps,
            result.elbo,
            result.optimum,
            ESTIMATOR_COLOURS,
            ESTIMATOR_LABELS,
            result.config.q,
        )
        g = result.gradient
        ax_grad.semilogy(
            g.steps, g.analytic_norm, "o-", color=ACTIVE, label=r"$\|\nabla_W\|$, analytic"
        )
        ax_grad.semilogy(
            g.steps,
            g.noise_norm,
            "s-",
            color=COLLAPSED,
            label=r"$\sqrt{\mathrm{tr\,Cov}}$, single sample",
        )
        ax_grad.semilogy(
            g.steps,
            np.maximum(g.bias_norm, 1e-12),
            "^:",
            color="0.45",
            label=rf"$\|\mathrm{{mean}}_{{K={g.samples}}} - \nabla_W\|$",
        )
        ax_grad.set_xlabel("Adam step of the analytic run (seed 0)")
        ax_grad.set_ylabel("gradient w.r.t. $W$ (Frobenius norm)")
        ax_grad.set_title("gradient signal and single-sample noise")
        ax_grad.legend(loc="best", fontsize=8)
        _smoke_label(fig, result.config.preset)
    return fig


def plot_encoder_comparison(result: EncoderComparisonResult) -> Figure:
    """ELBO and gap vs step for each encoder (top), WᵀW of each trained decoder (bottom)."""
    kinds = result.kinds
    with house_style():
        fig = plt.figure(figsize=(11.0, 7.2), layout="constrained")
        fig.patch.set_facecolor("white")
        top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.0])
        ax_elbo, ax_gap = top.subplots(1, 2)
        _curve_panels(
            ax_elbo,
            ax_gap,
            result.steps,
            result.elbo,
            result.optimum,
            ENCODER_COLOURS,
            ENCODER_LABELS,
            result.config.q,
        )
        axes = np.atleast_1d(bottom.subplots(1, len(kinds)))
        vmax = max(float(np.abs(result.grams[k]).max()) for k in kinds)
        image = None
        for ax, kind in zip(axes, kinds, strict=True):
            image = ax.imshow(result.grams[kind], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_title(f"{ENCODER_LABELS[kind]}\noff-diagonal {result.off_diagonal(kind):.1e}")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        bottom.colorbar(image, ax=list(axes), shrink=0.8, label=r"$(W^\top W)_{ij}$ (seed 0)")
        bottom.suptitle(r"Gram matrices $W^\top W$ of the trained decoders", fontsize=10)
        _smoke_label(fig, result.config.preset)
    return fig
