"""The global optimum of a linear β-VAE in closed form, and a trainer to check it against.

Chapter *Beyond the paper*, theorem ``thm-beyond-beta-optimum``. The model is the linear VAE of
:mod:`lincollapse.linear_vae` (decoder N(Wz + μ, σ² I), encoder N(V(x − μ), D) with D diagonal
and shared) trained on the **β-weighted** ELBO

    ELBO_β(W, V, D; σ²) = E_q log p(x | z) − β KL(q(z | x) ‖ p(z)),      β > 0,

with σ² **fixed**. Because E_q log p(x | z) is −‖x − Wz‖²/(2σ²) up to a term free of (W, V, D),

    ELBO_β(θ; σ²) = β · ELBO_1(θ; βσ²) + c(β, σ², d),

so the β-VAE at noise σ² has the maximisers of the plain linear VAE at noise βσ², and those are
the fixed-noise pPCA maximisers with orthogonal columns. Singular values of the optimal decoder:

    s_j = √(max(0, λ_j − βσ²)),  j = 1..q,

so latent j collapses iff λ_j ≤ βσ² — the statement of Wang & Ziyin (2022) for the linear VAE,
with their decoder variance η_dec = σ². Everything is float64.

References
----------
Z. Wang and L. Ziyin, "Posterior collapse of a linear latent variable model", NeurIPS 2022.
J. Lucas, G. Tucker, R. Grosse and M. Norouzi, "Don't Blame the ELBO!", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch

from lincollapse import ppca
from lincollapse.linear_vae import LinearVAE
from lincollapse.ppca import DataSpectrum
from lincollapse.training import History, maximise

__all__ = [
    "BetaVAETraining",
    "check_beta",
    "collapsed_latents",
    "effective_noise",
    "optimal_beta_elbo",
    "optimal_rates",
    "optimal_singular_values",
    "synthetic_data",
    "train_linear_beta_vae",
]

LOG_2PI = math.log(2.0 * math.pi)


def check_beta(beta: float) -> float:
    """Return β as a float if it is finite and > 0, else raise with the reason."""
    value = float(beta)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(
            f"β must be a finite positive KL weight, got beta={beta!r} (β = 1 is the plain ELBO; "
            "β = 0 would drop the KL and leave the encoder variance unbounded)"
        )
    return value


def effective_noise(sigma2: float, beta: float = 1.0) -> float:
    """βσ², the observation noise of the plain ELBO with the β-VAE's maximisers."""
    return check_beta(beta) * ppca._check_sigma2(sigma2)


def _top_q(eigenvalues: np.ndarray | DataSpectrum, q: int) -> np.ndarray:
    eigenvalues = ppca._eigenvalues(eigenvalues)
    q = ppca._check_q(q, eigenvalues, require_rank=False)
    return eigenvalues[:q]


def optimal_singular_values(
    eigenvalues: np.ndarray | DataSpectrum, q: int, sigma2: float, beta: float = 1.0
) -> np.ndarray:
    """Singular values of the optimal decoder W of a linear β-VAE: √(max(0, λ_j − βσ²)), j ≤ q.

    Chapter *Beyond the paper*, equation (beyond-beta-optimum).

    Parameters
    ----------
    eigenvalues : ndarray of shape (d,) or DataSpectrum
        Eigenvalues of the sample covariance S, descending.
    q : int
        Latent dimension, 0 ≤ q < d.
    sigma2 : float
        The fixed decoder variance σ² > 0.
    beta : float, default 1
        KL weight β > 0.

    Returns
    -------
    ndarray of shape (q,), descending
    """
    top = _top_q(eigenvalues, q)
    return np.sqrt(np.clip(top - effective_noise(sigma2, beta), 0.0, None))


def collapsed_latents(
    eigenvalues: np.ndarray | DataSpectrum, q: int, sigma2: float, beta: float = 1.0
) -> np.ndarray:
    """Which of the q latents collapse at the optimum: λ_j ≤ βσ² (bool array of shape (q,))."""
    return _top_q(eigenvalues, q) <= effective_noise(sigma2, beta)


def optimal_rates(
    eigenvalues: np.ndarray | DataSpectrum, q: int, sigma2: float, beta: float = 1.0
) -> np.ndarray:
    """KL of each latent at the optimum, averaged over data: ½ log(λ_j / βσ²) if λ_j > βσ², else 0.

    Chapter *Beyond the paper*, equation (beyond-beta-rate). Nats, shape (q,).
    """
    top = _top_q(eigenvalues, q)
    noise = effective_noise(sigma2, beta)
    return 0.5 * np.log(np.maximum(top, noise) / noise)


def optimal_beta_elbo(
    eigenvalues: np.ndarray | DataSpectrum, q: int, sigma2: float, beta: float = 1.0
) -> float:
    """max over (W, V, D) of ELBO_β at fixed σ², nats per data point.

    Chapter *Beyond the paper*, equation (beyond-beta-value): with s = βσ² and
    ℓ_s = −½ [d log 2π + Σ_{j ≤ q, λ_j > s} (log λ_j + 1) + Σ_{other j} (log s + λ_j / s)]
    the fixed-noise pPCA maximum,

        max ELBO_β = β ℓ_s + (β d / 2) log(2π s) − (d / 2) log(2π σ²).
    """
    eigenvalues = ppca._eigenvalues(eigenvalues)
    q = ppca._check_q(q, eigenvalues, require_rank=False)
    beta = check_beta(beta)
    sigma2 = ppca._check_sigma2(sigma2)
    d = eigenvalues.size
    s = beta * sigma2
    used = np.zeros(d, dtype=bool)
    used[:q] = eigenvalues[:q] > s
    kept = eigenvalues[used]
    rest = eigenvalues[~used]
    ell = -0.5 * (
        d * LOG_2PI + np.sum(np.log(kept) + 1.0) + np.sum(math.log(s) + rest / s)
    )  # fixed-noise pPCA maximum at s
    return float(beta * ell + 0.5 * beta * d * (LOG_2PI + math.log(s)) - 0.5 * d * (
        LOG_2PI + math.log(sigma2)))  # fmt: skip


# --------------------------------------------------------------------------------------------
# Synthetic data with a known spectrum
# --------------------------------------------------------------------------------------------


def synthetic_data(
    eigenvalues: np.ndarray, n: int, *, seed: int = 0, exact: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Data x = U diag(√λ) ε with a random rotation U: its covariance has the spectrum λ.

    Parameters
    ----------
    eigenvalues : array-like of shape (d,)
        λ_1 ≥ … ≥ λ_d ≥ 0.
    n : int
        Number of points, n > d.
    seed : int, default 0
    exact : bool, default True
        Centre and whiten ε so that its 1/n sample covariance is exactly I: the data's sample
        mean is then 0 and its sample covariance exactly U diag(λ) Uᵀ (up to round-off).
        ``False`` draws plain iid ε ~ N(0, I).

    Returns
    -------
    x : ndarray of shape (n, d)
    basis : ndarray of shape (d, d)
        U, orthogonal; column j is the direction of variance λ_j.
    """
    eigenvalues = ppca._eigenvalues(eigenvalues)
    d = eigenvalues.size
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= d:
        raise ValueError(f"n must be an integer > d = {d} (to whiten the noise), got n={n!r}")
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    noise = rng.normal(size=(n, d))
    if exact:
        noise -= noise.mean(axis=0)
        values, vectors = np.linalg.eigh(noise.T @ noise / n)
        noise = noise @ (vectors / np.sqrt(values)) @ vectors.T  # whitened: εᵀε/n = I
    return (noise * np.sqrt(eigenvalues)) @ basis.T, basis


# --------------------------------------------------------------------------------------------
# Training the linear β-VAE
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BetaVAETraining:
    """A linear β-VAE trained by maximising ELBO_β with σ² fixed.

    Attributes
    ----------
    model : LinearVAE
        ``mean`` is the sample mean; σ² is not trained.
    beta, sigma2 : float
    singular_values : ndarray of shape (q,)
        Of the trained W, descending.
    rates : ndarray of shape (q,)
        Average KL of each latent (nats), in the order of the SVD of W.
    objective : float
        Final ELBO_β, nats per data point (re-evaluated in float64).
    optimum : float
        :func:`optimal_beta_elbo`.
    history : History
    seconds : float
    """

    model: LinearVAE
    beta: float
    sigma2: float
    singular_values: np.ndarray
    rates: np.ndarray
    objective: float
    optimum: float
    history: History
    seconds: float

    @property
    def gap(self) -> float:
        """optimum − objective (≥ 0 up to round-off), nats per data point."""
        return self.optimum - self.objective


def train_linear_beta_vae(
    data: np.ndarray | DataSpectrum,
    q: int,
    sigma2: float,
    beta: float = 1.0,
    *,
    optimiser: str = "lbfgs",
    steps: int = 500,
    lr: float = 1e-2,
    seed: int = 0,
    init_scale: float = 0.1,
    tolerance: float | None = 1e-13,
    record_every: int = 50,
) -> BetaVAETraining:
    """Maximise ELBO_β = recon − β KL of a linear VAE over (W, V, D) with σ² fixed.

    The analytic ELBO terms (lvae-recon), (lvae-kl) of :mod:`lincollapse.linear_vae` are
    evaluated from the full sample covariance in data coordinates (no eigenbasis, no optimal
    encoder, nothing copied from the closed form) and all three of W, V, log D are trained by
    :func:`lincollapse.training.maximise` from a seeded random start, in float64.

    Parameters
    ----------
    data : ndarray of shape (n, d) or DataSpectrum
    q : int
        0 < q < d.
    sigma2 : float
        Fixed decoder variance σ² > 0.
    beta : float, default 1
    optimiser : {"lbfgs", "adam"}
    steps : int, default 500
    lr : float, default 0.01
        Adam's learning rate.
    seed : int, default 0
    init_scale : float, default 0.1
        Standard deviation of the initial entries of W and V.
    tolerance : float or None
        Stop when a recording window improves ELBO_β by less than this.
    record_every : int, default 50

    Returns
    -------
    BetaVAETraining
    """
    start = time.perf_counter()
    beta = check_beta(beta)
    sigma2 = ppca._check_sigma2(sigma2)
    spectrum = data if isinstance(data, DataSpectrum) else ppca.data_spectrum(data)
    q = ppca._check_q(q, spectrum.eigenvalues, require_rank=False)
    if q == 0:
        raise ValueError("q must be >= 1: a linear β-VAE with no latents has nothing to train")
    model = LinearVAE(
        spectrum.d, q, mean=spectrum.mean, sigma2=sigma2, learn_sigma2=False,
        init_scale=init_scale, seed=seed,
    )  # fmt: skip
    covariance = torch.as_tensor(spectrum.covariance, dtype=torch.float64)

    def objective() -> torch.Tensor:
        reconstruction, kl = model.elbo_terms(covariance)
        return reconstruction - beta * kl

    history = maximise(
        objective, [model.W, model.V, model.log_D], steps=steps, optimiser=optimiser, lr=lr,
        record_every=record_every, tolerance=tolerance, name=f"linear β-VAE β={beta:g}",
    )  # fmt: skip
    with torch.no_grad():
        value = float(objective())
        W = model.W.numpy()
        V = model.V.numpy()
        D = model.D.numpy()
    left, values, right = np.linalg.svd(W, full_matrices=False)
    del left, right
    # Average KL per latent (lvae-kl), latent by latent: ½ [D_i − log D_i + (V S Vᵀ)_ii − 1]
    rates = 0.5 * (D - np.log(D) + np.einsum("id,de,ie->i", V, spectrum.covariance, V) - 1.0)
    order = np.argsort(-np.linalg.norm(W, axis=0))
    return BetaVAETraining(
        model=model,
        beta=beta,
        sigma2=sigma2,
        singular_values=values,
        rates=rates[order],
        objective=value,
        optimum=optimal_beta_elbo(spectrum, q, sigma2, beta),
        history=history,
        seconds=time.perf_counter() - start,
    )
