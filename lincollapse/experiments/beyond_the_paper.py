"""Experiments of the chapter *Beyond the paper* (``beyond_the_paper``).

One function per figure, each returning a dataclass of data (plotting lives in
:mod:`lincollapse.plotting.beyond`). Both figures use synthetic data with a chosen covariance
spectrum, so that every number can be compared with a closed form; both cost seconds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from lincollapse import linear_beta_vae, ppca
from lincollapse.experiments import figure
from lincollapse.presets import ExperimentConfig
from lincollapse.reader import read_or_compute

_SPECTRUM = (8.0, 5.0, 3.0, 2.0, 1.2, 0.8, 0.5, 0.3, 0.2, 0.1)

# --------------------------------------------------------------------------------------------
# The global optimum of linear β-VAEs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SyntheticLinearBetaConfig(ExperimentConfig):
    """Train a linear β-VAE (σ² fixed) per β on synthetic data with the spectrum ``eigenvalues``.

    The data are ``n`` points whose sample covariance has exactly that spectrum
    (:func:`lincollapse.linear_beta_vae.synthetic_data`). No βσ² equals an eigenvalue: at equality
    the collapsed direction is flat to second order and gradient methods converge slowly.
    ``book`` and ``paper`` train with L-BFGS (deterministic full-batch objective); ``fast``
    trains two β with fewer steps; ``reader`` reads the ``book`` result shipped in
    ``results/reader/`` (:mod:`lincollapse.reader`).
    """

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"betas": (0.5, 2.5), "steps": 300},
        "reader": {},  # the book's runs, read from results/reader/ (lincollapse.reader)
    }
    COSTS: ClassVar[dict[str, str]] = {
        "fast": "2 s",
        "book": "25 s",
        "paper": "25 s",
        "reader": "< 1 s (the book's runs, shipped in results/reader/)",
    }
    eigenvalues: tuple[float, ...] = _SPECTRUM
    n: int = 500
    q: int = 6
    sigma2: float = 1.0
    betas: tuple[float, ...] = (0.25, 0.6, 1.0, 1.6, 2.5, 4.0, 6.0, 10.0)
    optimiser: str = "lbfgs"
    steps: int = 1500
    column_tolerance: float = 1e-3
    data_seed: int = 0
    train_seed: int = 0


@dataclasses.dataclass(frozen=True)
class SyntheticLinearBetaResult:
    """Trained and closed-form decoder singular values of linear β-VAEs.

    Attributes
    ----------
    eigenvalues : ndarray of shape (d,)
        Spectrum of the data's sample covariance (recomputed from the data).
    sigma2 : float
    betas : ndarray of shape (k,)
    trained : ndarray of shape (k, q)
        Singular values of the trained W, descending.
    closed_form : ndarray of shape (k, q)
        √(max(0, λ_j − βσ²)), equation (beyond-beta-optimum).
    trained_rates, closed_form_rates : ndarray of shape (k, q)
        Average KL per latent, trained and (beyond-beta-rate).
    objective_gap : ndarray of shape (k,)
        Closed-form maximum of ELBO_β minus the trained value (nats per point).
    collapsed_trained : ndarray of shape (k,), int
        Trained singular values below ``column_tolerance``.
    collapsed_predicted : ndarray of shape (k,), int
        #{j ≤ q : λ_j ≤ βσ²}.
    beta_grid : ndarray of shape (m,)
        Dense grid for drawing the closed form.
    closed_form_grid : ndarray of shape (m, q)
    seconds : ndarray of shape (k,)
    """

    eigenvalues: np.ndarray
    sigma2: float
    betas: np.ndarray
    trained: np.ndarray
    closed_form: np.ndarray
    trained_rates: np.ndarray
    closed_form_rates: np.ndarray
    objective_gap: np.ndarray
    collapsed_trained: np.ndarray
    collapsed_predicted: np.ndarray
    beta_grid: np.ndarray
    closed_form_grid: np.ndarray
    seconds: np.ndarray

    @property
    def max_singular_value_error(self) -> float:
        """max over β and j of |trained − closed form|."""
        return float(np.abs(self.trained - self.closed_form).max())

    def table(self) -> str:
        """Plain-text table: per β, the worst singular-value error, counts and objective gap."""
        lines = [
            f"{'β':>6} {'βσ²':>6} {'max |Δs_j|':>11} {'collapsed':>10} {'predicted':>10} "
            f"{'ELBO_β gap':>11} {'seconds':>8}"
        ]
        for k, beta in enumerate(self.betas):
            error = np.abs(self.trained[k] - self.closed_form[k]).max()
            lines.append(
                f"{beta:>6.3g} {beta * self.sigma2:>6.3g} {error:>11.2e} "
                f"{self.collapsed_trained[k]:>10d} {self.collapsed_predicted[k]:>10d} "
                f"{self.objective_gap[k]:>11.2e} {self.seconds[k]:>8.2f}"
            )
        return "\n".join(lines)


@figure(
    "linear-beta-optimum",
    chapter="beyond_the_paper",
    plot="lincollapse.plotting.beyond:plot_linear_beta_optimum",
    config=SyntheticLinearBetaConfig,
    paper_figure="— (Wang & Ziyin 2022: closed-form optimum of linear β-VAEs)",
)
def linear_beta_optimum(
    config: SyntheticLinearBetaConfig | None = None,
) -> SyntheticLinearBetaResult:
    """Trained linear β-VAE decoders against the closed form √(max(0, λ_j − βσ²)), per β."""
    config = config or SyntheticLinearBetaConfig.for_preset()
    return read_or_compute(config, _linear_beta_optimum, SyntheticLinearBetaResult)


def _linear_beta_optimum(config: SyntheticLinearBetaConfig) -> SyntheticLinearBetaResult:
    x, _ = linear_beta_vae.synthetic_data(
        np.asarray(config.eigenvalues), config.n, seed=config.data_seed
    )
    spectrum = ppca.data_spectrum(x)
    trained, closed, rates, closed_rates, gaps, counts, predicted, seconds = ([] for _ in range(8))
    for beta in config.betas:
        run = linear_beta_vae.train_linear_beta_vae(
            spectrum,
            config.q,
            config.sigma2,
            beta,
            encoder="learned",
            optimiser=config.optimiser,
            steps=config.steps,
            seed=config.train_seed,
        )
        trained.append(run.singular_values)
        closed.append(
            linear_beta_vae.optimal_singular_values(spectrum, config.q, config.sigma2, beta)
        )
        rates.append(run.rates)
        closed_rates.append(linear_beta_vae.optimal_rates(spectrum, config.q, config.sigma2, beta))
        gaps.append(run.gap)
        counts.append(int(np.count_nonzero(run.singular_values < config.column_tolerance)))
        predicted.append(
            int(linear_beta_vae.collapsed_latents(spectrum, config.q, config.sigma2, beta).sum())
        )
        seconds.append(run.seconds)
    grid = np.geomspace(min(config.betas) / 2, max(config.betas) * 1.5, 400)
    return SyntheticLinearBetaResult(
        eigenvalues=spectrum.eigenvalues,
        sigma2=config.sigma2,
        betas=np.asarray(config.betas, dtype=np.float64),
        trained=np.asarray(trained),
        closed_form=np.asarray(closed),
        trained_rates=np.asarray(rates),
        closed_form_rates=np.asarray(closed_rates),
        objective_gap=np.asarray(gaps),
        collapsed_trained=np.asarray(counts),
        collapsed_predicted=np.asarray(predicted),
        beta_grid=grid,
        closed_form_grid=np.asarray(
            [
                linear_beta_vae.optimal_singular_values(spectrum, config.q, config.sigma2, b)
                for b in grid
            ]
        ),
        seconds=np.asarray(seconds),
    )


# --------------------------------------------------------------------------------------------
# Collapse with exact inference: a non-identifiable latent
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExactCollapseConfig(ExperimentConfig):
    """pPCA at its fixed-σ² maximiser with one column collapsed (λ_3 < σ² < λ_2).

    ``n_points`` data points are drawn from synthetic data with the given spectrum; for each,
    the conditional log-likelihood log p(x | z) is traced along the axis of an active latent
    and of the collapsed one, and the exact posterior of each is evaluated.
    """

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {"fast": {"grid_size": 41}}
    COSTS: ClassVar[dict[str, str]] = {"fast": "< 1 s", "book": "< 1 s", "paper": "< 1 s"}
    eigenvalues: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5, 0.25)
    q: int = 3
    sigma2: float = 1.5
    n: int = 200
    n_points: int = 4
    extent: float = 3.0
    grid_size: int = 201
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ExactCollapseResult:
    """Conditional likelihoods and exact posteriors of an active and a collapsed pPCA latent.

    Attributes
    ----------
    z : ndarray of shape (g,)
        Values of the traced latent (the others held at 0).
    active, collapsed : int
        Indices (0-based) of the traced active latent and of the collapsed latent.
    loglik_active, loglik_collapsed : ndarray of shape (p, g)
        log p(x_i | z = t e_k) − log p(x_i | z = 0) for the p points, nats.
    posterior_mean : ndarray of shape (p, q)
        Means of the exact posterior p(z | x_i) (ppca-posterior).
    posterior_sd : ndarray of shape (q,)
        Its marginal standard deviations (the same for every point).
    mutual_information : ndarray of shape (q,)
        I(x; z_k) under the model, ½ log(1 / posterior variance) for orthogonal columns, nats.
    column_norms : ndarray of shape (q,)
    sigma2 : float
    eigenvalues : ndarray of shape (d,)
    """

    z: np.ndarray
    active: int
    collapsed: int
    loglik_active: np.ndarray
    loglik_collapsed: np.ndarray
    posterior_mean: np.ndarray
    posterior_sd: np.ndarray
    mutual_information: np.ndarray
    column_norms: np.ndarray
    sigma2: float
    eigenvalues: np.ndarray


@figure(
    "exact-inference-collapse",
    chapter="beyond_the_paper",
    plot="lincollapse.plotting.beyond:plot_exact_inference_collapse",
    config=ExactCollapseConfig,
    paper_figure="— (Wang, Blei & Cunningham 2021: collapse as non-identifiability)",
)
def exact_inference_collapse(config: ExactCollapseConfig | None = None) -> ExactCollapseResult:
    """pPCA's collapsed latent: log p(x | z) flat along it, exact posterior equal to the prior."""
    config = config or ExactCollapseConfig.for_preset()
    x, _ = linear_beta_vae.synthetic_data(
        np.asarray(config.eigenvalues), config.n, seed=config.seed
    )
    spectrum = ppca.data_spectrum(x)
    W = ppca.fixed_sigma2_maximiser(spectrum, config.q, config.sigma2)
    norms = np.linalg.norm(W, axis=0)
    collapsed_columns = np.flatnonzero(norms == 0.0)
    if collapsed_columns.size == 0 or collapsed_columns.size == config.q:
        raise ValueError(
            f"σ² = {config.sigma2} must lie between λ_q and λ_1 so that some but not all of the "
            f"q = {config.q} columns collapse; eigenvalues {spectrum.eigenvalues}"
        )
    collapsed, active = int(collapsed_columns[0]), 0
    points = x[: config.n_points]
    z = np.linspace(-config.extent, config.extent, config.grid_size)

    def trace(k: int) -> np.ndarray:
        # log N(x | Wz + μ, σ² I) along z = t e_k, minus its value at z = 0
        residual0 = points - spectrum.mean
        out = np.empty((points.shape[0], z.size))
        for a, t in enumerate(z):
            residual = residual0 - t * W[:, k]
            out[:, a] = (
                -0.5
                * (np.square(residual).sum(axis=1) - np.square(residual0).sum(axis=1))
                / config.sigma2
            )
        return out

    post = ppca.posterior(points, W, config.sigma2, spectrum.mean)
    variances = np.diag(post.covariance)
    return ExactCollapseResult(
        z=z,
        active=active,
        collapsed=collapsed,
        loglik_active=trace(active),
        loglik_collapsed=trace(collapsed),
        posterior_mean=post.mean,
        posterior_sd=np.sqrt(variances),
        mutual_information=0.5 * np.log(1.0 / variances),
        column_norms=norms,
        sigma2=config.sigma2,
        eigenvalues=spectrum.eigenvalues,
    )
