"""Experiment of the chapter *Posterior collapse*: the (ε, δ) collapse metric of trained linear
VAEs against the linear count #{λ_j ≤ σ²}.

The function returns a dataclass of data (plotting lives in :mod:`lincollapse.plotting.linear`);
its configuration's defaults are the ``book`` preset, ``fast`` shrinks it to seconds for CI.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from lincollapse import collapse, linear_vae_training, ppca
from lincollapse.experiments import FAST_MNIST, figure, mnist_with_spectrum
from lincollapse.presets import ExperimentConfig

# --------------------------------------------------------------------------------------------
# Collapse metric of trained linear VAEs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CollapseMetricConfig(ExperimentConfig):
    """Linear VAEs trained with σ² fixed at each value; collapsed fraction over ε ∈ [0, 2]."""

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {**FAST_MNIST, "q": 40, "steps": 100, "n_epsilons": 41},
        "paper": {"optimiser": "adam", "steps": 12_000},
    }
    # Measured on the book's 2-core CPU (see lincollapse list).
    COSTS: ClassVar[dict[str, str]] = {
        "fast": "≈ 1 s",
        "book": "≈ 12 s",
        "paper": "≈ 11 min on 2 CPU cores (projected)",
    }
    n: int = 1000
    seed: int = 0
    q: int = 200
    sigma2_values: tuple[float, ...] = (0.1, 0.03)
    optimiser: str = "lbfgs"
    steps: int = 400
    lr: float = 1e-3
    delta: float = 0.01
    epsilon_max: float = 2.0
    n_epsilons: int = 201
    train_seed: int = 0


@dataclasses.dataclass(frozen=True)
class CollapseMetricResult:
    """(ε, δ)-collapsed fraction of trained linear VAEs and the linear prediction.

    Attributes
    ----------
    epsilons : ndarray of shape (m,)
    sigma2_values : ndarray of shape (k,)
    fractions : ndarray of shape (k, m)
        Collapsed fraction (collapse-metric) of the q latents at each ε.
    predicted : ndarray of shape (k,)
        #{j ≤ q : λ_j ≤ σ²} / q.
    mean_kl : ndarray of shape (k, q)
        Average KL_i(x) over the images per latent, sorted ascending.
    elbo_gap : ndarray of shape (k,)
        Best fixed-σ² log-likelihood minus the trained ELBO, nats per image.
    q : int
    delta : float
    """

    epsilons: np.ndarray
    sigma2_values: np.ndarray
    fractions: np.ndarray
    predicted: np.ndarray
    mean_kl: np.ndarray
    elbo_gap: np.ndarray
    q: int
    delta: float

    def fraction_at(self, epsilon: float) -> tuple[float, np.ndarray]:
        """Collapsed fractions at the first grid point ε' ≥ ``epsilon``, and that ε'.

        The metric is stored on the grid :attr:`epsilons`, so a request between grid points
        reads the next one up (0.05 for 0.01 on the ``fast`` preset's 41-point grid over
        [0, 2]); print the returned ε', not the requested one.

        Returns
        -------
        epsilon_used : float
        fractions : ndarray of shape (k,)
            One collapsed fraction per σ² in :attr:`sigma2_values`.
        """
        index = int(np.searchsorted(self.epsilons, epsilon))
        if index == self.epsilons.size:
            raise ValueError(
                f"ε = {epsilon:g} is above the largest ε of the grid, {self.epsilons[-1]:g}"
            )
        return float(self.epsilons[index]), self.fractions[:, index]


@figure(
    "collapse-metric",
    chapter="posterior_collapse",
    plot="lincollapse.plotting.linear:plot_collapse_metric",
    config=CollapseMetricConfig,
)
def collapse_metric(config: CollapseMetricConfig | None = None) -> CollapseMetricResult:
    """Collapsed fraction of trained linear VAEs (fixed σ²) vs ε, against #{λ_j ≤ σ²}/q."""
    config = config or CollapseMetricConfig.for_preset()
    images, spectrum = mnist_with_spectrum(config.n, config.seed)
    epsilons = np.linspace(0.0, config.epsilon_max, config.n_epsilons)
    fractions, predicted, mean_kl, gaps = [], [], [], []
    for sigma2 in config.sigma2_values:
        trained = linear_vae_training.train_linear_vae(
            spectrum,
            config.q,
            optimiser=config.optimiser,
            steps=config.steps,
            lr=config.lr,
            seed=config.train_seed,
            learn_sigma2=False,
            sigma2_init=sigma2,
        )
        with torch.no_grad():
            means, variances = trained.model.encode(images)
        kl = collapse.gaussian_kl_per_dimension(means.numpy(), variances.numpy())
        fractions.append(collapse.collapsed_fraction(kl, epsilons, delta=config.delta))
        predicted.append(ppca.collapsed_column_count(spectrum, config.q, sigma2) / config.q)
        mean_kl.append(np.sort(kl.mean(axis=0)))
        gaps.append(trained.gap)
    return CollapseMetricResult(
        epsilons=epsilons,
        sigma2_values=np.asarray(config.sigma2_values, dtype=np.float64),
        fractions=np.asarray(fractions),
        predicted=np.asarray(predicted),
        mean_kl=np.asarray(mean_kl),
        elbo_gap=np.asarray(gaps),
        q=config.q,
        delta=config.delta,
    )
