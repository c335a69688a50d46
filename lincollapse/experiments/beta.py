"""Experiments of the chapter *β, σ² and KL annealing* (``beta_annealing``): the linear β-VAE.

``linear-beta-collapse``
    The linear β-VAE on MNIST, trained on its own β-weighted objective for a grid of β at a fixed
    σ², against the closed form at noise βσ² (:mod:`lincollapse.linear_beta_vae`): collapsed latents
    against β, and the trained decoder's squared singular values against max(0, λ_j − βσ²).

Also the table of loss conventions (:func:`loss_conventions`): the σ² that common ways of
writing "squared error + KL" assume. The chapter's deep-VAE figures with and without KL
annealing are in :mod:`lincollapse.experiments.kl_annealing_figures`, their runs in
:mod:`lincollapse.experiments.kl_annealing_runs`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import numpy as np

from lincollapse.beta_elbo import loss_effective_sigma2
from lincollapse.deep_runs import data_for
from lincollapse.experiments import figure
from lincollapse.linear_beta_vae import (
    collapsed_latents,
    optimal_rates,
    optimal_singular_values,
    train_linear_beta_vae,
)
from lincollapse.ppca import data_spectrum
from lincollapse.presets import ExperimentConfig
from lincollapse.reader import read_or_compute
from lincollapse.reporting import Report

CHAPTER = "beta_annealing"


# --------------------------------------------------------------------------------------------
# The linear β-VAE
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MnistLinearBetaConfig(ExperimentConfig):
    """The linear β-VAE on MNIST; defaults are the ``book`` preset.

    ``book``: the book's 1000 images in [0, 1], q = 50 latents, σ² = 1/2 (the noise of a loss "sum
    of squared errors + β·KL", see :func:`lincollapse.beta_elbo.loss_effective_sigma2`), 14 values
    of β from 0.05 to 20 (so βσ² runs from 0.025 to 10, across λ_1 ≈ 5.3 down to λ_50), each trained
    for 300 L-BFGS steps with the β-optimal encoder, the latents rotated every 20. ``paper``: q =
    200 and 25 values of β. ``fast``: 200 images, q = 5, four β.

    Attributes
    ----------
    n, data_seed, latent : int
    sigma2 : float
        The fixed observation noise of the β-objective.
    betas : tuple of float
    steps, rotate_every : int
        Training of each model (:func:`lincollapse.linear_beta_vae.train_linear_beta_vae` with
        ``encoder="optimal"``): L-BFGS steps, and steps between rotations of the latents.
    seed : int
        Seed of the random initial decoder.
    epsilon : float
        A latent counts as collapsed when its average KL is below ε (nats).
    """

    COSTS: ClassVar[dict[str, str]] = {
        "fast": "≈ 3 s",
        "book": "17 s on 2 cores (measured)",
        "paper": "≈ 5 min (estimated)",
        "reader": "< 1 s (the book's result, shipped in results/reader/)",
    }
    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "reader": {},  # the book's result, read from results/reader/ (lincollapse.reader)
        "fast": {"n": 200, "latent": 5, "betas": (0.1, 1.0, 4.0, 16.0), "steps": 60},
        "paper": {"latent": 200, "betas": tuple(float(b) for b in np.logspace(-2, 1.3, 25))},
    }
    n: int = 1000
    data_seed: int = 0
    latent: int = 50
    sigma2: float = 0.5
    betas: tuple[float, ...] = tuple(float(b) for b in np.logspace(np.log10(0.05), 1.3, 14))
    steps: int = 300
    rotate_every: int = 20
    seed: int = 0
    epsilon: float = 0.01


@dataclasses.dataclass(frozen=True)
class MnistLinearBetaResult(Report):
    """Trained linear β-VAEs against the closed form at noise βσ².

    Attributes
    ----------
    betas : ndarray (B,)
    sigma2 : float
    latent : int
    eigenvalues : ndarray (d,)
        Of the images' sample covariance, decreasing.
    trained_squared_singular_values, optimum_squared_singular_values : ndarray (B, q)
        Of the trained decoders, and max(0, λ_j − βσ²).
    trained_kl, optimum_kl : ndarray (B, q)
        Average KL per latent, decreasing: trained, and ½ max(0, log λ_j/βσ²).
    trained_collapsed : ndarray (B,)
        Trained latents with KL < ε.
    predicted_collapsed : ndarray (B,)
        #{j ≤ q : ½ log(λ_j/βσ²) < ε}: the closed form's count at the same ε.
    theory_collapsed : ndarray (B,)
        #{j ≤ q : λ_j ≤ βσ²} (the ε → 0 count).
    max_singular_error : float
        max |trained − closed-form| squared singular value over all β and latents.
    epsilon, seconds : float
    preset : str
    """

    betas: np.ndarray
    sigma2: float
    latent: int
    eigenvalues: np.ndarray
    trained_squared_singular_values: np.ndarray
    optimum_squared_singular_values: np.ndarray
    trained_kl: np.ndarray
    optimum_kl: np.ndarray
    trained_collapsed: np.ndarray
    predicted_collapsed: np.ndarray
    theory_collapsed: np.ndarray
    max_singular_error: float
    epsilon: float
    seconds: float
    preset: str

    @property
    def mismatch(self) -> int:
        """Values of β where the trained count of collapsed latents differs from the closed
        form's."""
        return int(np.sum(self.trained_collapsed != self.predicted_collapsed))

    @property
    def max_kl_error(self) -> float:
        """max |trained − closed-form| KL per latent over all β and latents, nats."""
        return float(np.abs(self.trained_kl - self.optimum_kl).max())

    def table(self) -> str:
        """Per β: βσ², the linear count, the closed form's and the trained counts at ε; then the
        largest errors against the closed form."""
        lines = [
            f"q = {self.latent}, σ² = {self.sigma2:g}, {self.betas.size} values of β, "
            f"trained in {self.seconds:.0f} s",
            f"{'β':>7} {'βσ²':>7} {'#{λ_j ≤ βσ²}':>13} {'closed form, KL<ε':>18} "
            f"{'trained, KL<ε':>14}",
        ]
        rows = zip(
            self.betas,
            self.theory_collapsed,
            self.predicted_collapsed,
            self.trained_collapsed,
            strict=True,
        )
        for beta, theory, predicted, trained in rows:
            lines.append(
                f"{beta:>7.3g} {beta * self.sigma2:>7.3g} {theory:>13d} {predicted:>18d} "
                f"{trained:>14d}"
            )
        lines.append(
            f"largest |trained − closed form|: squared singular value "
            f"{self.max_singular_error:.1e}, KL per latent {self.max_kl_error:.1e} nats; β with a "
            f"different count: {self.mismatch}"
        )
        return "\n".join(lines)

    def glue_values(self) -> dict[str, Any]:
        """The largest errors against the closed form, the mismatches and q."""
        return {
            "sv_error": self.max_singular_error,
            "kl_error": self.max_kl_error,
            "mismatch": self.mismatch,
            "latent": self.latent,
        }


# Loss conventions: the effective noise of a squared-error loss
LOSS_CONVENTIONS = (
    ("mean", "mse_loss(mean) + KL (sum latents, mean batch)", "mean", "batchmean"),
    ("sum", "mse_loss(sum) + KL (sum latents, sum batch)", "sum", "sum"),
    ("meanmean", "mse_loss(mean) + KL (mean latents, mean batch)", "mean", "mean"),
    ("sumbatch", "mse_loss(sum) + KL (sum latents, mean batch)", "sum", "batchmean"),
)


@dataclasses.dataclass(frozen=True)
class LossConventions(Report):
    """The σ² that common ways of writing "squared error + KL" assume, and the linear count there.

    Attributes
    ----------
    eigenvalues : ndarray (d,)
        Of the images' sample covariance, decreasing.
    names, labels : tuple of str
        Of the conventions (:data:`LOSS_CONVENTIONS`).
    sigma2 : ndarray (k,)
        The effective σ² of each (:func:`lincollapse.beta_elbo.loss_effective_sigma2`).
    collapsed : ndarray (k,) of int
        Linear count of collapsed latents at that σ² (of ``latent``).
    d, latent, batch_size : int
    """

    eigenvalues: np.ndarray
    names: tuple[str, ...]
    labels: tuple[str, ...]
    sigma2: np.ndarray
    collapsed: np.ndarray
    d: int
    latent: int
    batch_size: int

    def table(self) -> str:
        """λ_1, then one row per convention: its effective σ² and the linear count there."""
        lines = [
            f"λ_1 = {self.eigenvalues[0]:.2f}; batch size n = {self.batch_size} where it matters",
            f"{'loss':<50} {'σ²_eff':>10} {'collapsed of 200 (linear)':>26}",
        ]
        for label, sigma2, collapsed in zip(self.labels, self.sigma2, self.collapsed, strict=True):
            lines.append(f"{label:<50} {sigma2:>10.4g} {collapsed:>26d}")
        return "\n".join(lines)

    def glue_values(self) -> dict[str, Any]:
        """``mse_sigma2_<name>``, ``mse_collapsed_<name>`` per convention, and ``lambda_1``."""
        values: dict[str, Any] = {}
        for name, sigma2, collapsed in zip(self.names, self.sigma2, self.collapsed, strict=True):
            values[f"mse_sigma2_{name}"] = float(sigma2)
            values[f"mse_collapsed_{name}"] = int(collapsed)
        values["lambda_1"] = float(self.eigenvalues[0])
        return values


def loss_conventions(
    eigenvalues: np.ndarray, d: int = 784, latent: int = 200, batch_size: int = 128
) -> LossConventions:
    """:class:`LossConventions` of :data:`LOSS_CONVENTIONS` for data with these eigenvalues."""
    sigma2s, counts = [], []
    for _, _, mse, kl in LOSS_CONVENTIONS:
        sigma2 = loss_effective_sigma2(
            d, mse_reduction=mse, kl_reduction=kl, batch_size=batch_size, latent=latent
        )
        sigma2s.append(sigma2)
        counts.append(int(collapsed_latents(eigenvalues, latent, sigma2, 1.0).sum()))
    return LossConventions(
        eigenvalues=np.asarray(eigenvalues),
        names=tuple(c[0] for c in LOSS_CONVENTIONS),
        labels=tuple(c[1] for c in LOSS_CONVENTIONS),
        sigma2=np.asarray(sigma2s, dtype=np.float64),
        collapsed=np.asarray(counts),
        d=d,
        latent=latent,
        batch_size=batch_size,
    )


@figure(
    "linear-beta-collapse",
    chapter=CHAPTER,
    plot="lincollapse.plotting.beta:plot_linear_beta",
    config=MnistLinearBetaConfig,
)
def linear_beta_collapse(config: MnistLinearBetaConfig | None = None) -> MnistLinearBetaResult:
    """Linear β-VAE on MNIST: collapsed latents against β, trained vs #{λ_j ≤ βσ²}."""
    config = config or MnistLinearBetaConfig.for_preset()
    return read_or_compute(config, _linear_beta_collapse, MnistLinearBetaResult)


def _linear_beta_collapse(config: MnistLinearBetaConfig) -> MnistLinearBetaResult:
    start = time.perf_counter()
    images = data_for(config)[0]  # the deep-VAE chapter's subset
    spectrum = data_spectrum(images)
    trained_sv, optimum_sv, trained_kl, optimum_kl, theory = [], [], [], [], []
    for beta in config.betas:
        problem = (spectrum, config.latent, config.sigma2, beta)
        fit = train_linear_beta_vae(
            *problem,
            encoder="optimal",
            steps=config.steps,
            rotate_every=config.rotate_every,
            seed=config.seed,
        )
        trained_sv.append(fit.squared_singular_values)
        trained_kl.append(fit.rates)
        optimum_sv.append(optimal_singular_values(*problem) ** 2)
        optimum_kl.append(optimal_rates(*problem))
        theory.append(int(collapsed_latents(*problem).sum()))
    trained_sv, optimum_sv = np.array(trained_sv), np.array(optimum_sv)
    trained_kl, optimum_kl = np.array(trained_kl), np.array(optimum_kl)
    return MnistLinearBetaResult(
        betas=np.asarray(config.betas, dtype=np.float64),
        sigma2=config.sigma2,
        latent=config.latent,
        eigenvalues=spectrum.eigenvalues,
        trained_squared_singular_values=trained_sv,
        optimum_squared_singular_values=optimum_sv,
        trained_kl=trained_kl,
        optimum_kl=optimum_kl,
        trained_collapsed=(trained_kl < config.epsilon).sum(axis=1),
        predicted_collapsed=(optimum_kl < config.epsilon).sum(axis=1),
        theory_collapsed=np.array(theory),
        max_singular_error=float(np.abs(trained_sv - optimum_sv).max()),
        epsilon=config.epsilon,
        seconds=time.perf_counter() - start,
        preset=config.preset,
    )


# The command recorded in results/kl_annealing_long_*.json (the long KL-annealing runs, now in
# lincollapse.experiments.kl_annealing_runs); see lincollapse.cli.
if __name__ == "__main__":
    from lincollapse.cli import main_for_module

    raise SystemExit(main_for_module(__spec__.name))
