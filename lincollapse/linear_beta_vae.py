"""The linear β-VAE: its global optimum in closed form, and one trainer to check it against.

Chapters *β, σ² and KL annealing* (equations (beta-linear), (beta-encoder)) and *Beyond the
paper* (theorem ``thm-beyond-beta-optimum``). The model is the linear VAE of
:mod:`lincollapse.linear_vae` (decoder N(Wz + μ, σ² I), encoder N(V(x − μ), D) with D diagonal
and shared) trained on the **β-weighted** ELBO

    ELBO_β(W, V, D; σ²) = E_q log p(x | z) − β KL(q(z | x) ‖ p(z)),      β > 0,

with σ² **fixed**. Because E_q log p(x | z) is −‖x − Wz‖²/(2σ²) up to a term free of (W, V, D),

    ELBO_β(θ; σ²) = β · ELBO_1(θ; βσ²) + c(β, σ², d),

so the β-VAE at noise σ² has the maximisers of the plain linear VAE at noise βσ², and those are
the fixed-noise pPCA maximisers with orthogonal columns. Singular values of the optimal decoder:

    s_j = √(max(0, λ_j − βσ²)),  j = 1..q,

so latent j collapses iff λ_j ≤ βσ² — the statement of Wang & Ziyin (2022) for the linear VAE,
with their decoder variance η_dec = σ². Contents:

- closed form: :func:`optimal_singular_values`, :func:`collapsed_latents`, :func:`optimal_rates`,
  :func:`optimal_beta_elbo`;
- the β-objective :func:`linear_beta_objective` and its optimal encoder
  :func:`beta_optimal_encoder`;
- :func:`synthetic_data` with a prescribed covariance spectrum;
- :func:`train_linear_beta_vae`, which trains the β-objective itself (encoder learned jointly, or
  kept at :func:`beta_optimal_encoder`) and returns a :class:`LinearBetaFit`.

The general equivalence for any decoder lives in :mod:`lincollapse.beta_elbo`. Everything is
float64.

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

from lincollapse import gaussian, ppca, validation
from lincollapse.gaussian import LOG_2PI
from lincollapse.linear_vae import (
    LinearVAE,
    analytic_elbo_terms,
    optimal_encoder,
    rotate_model,
)
from lincollapse.linear_vae_training import ENCODERS
from lincollapse.ppca import DataSpectrum
from lincollapse.training import History, concatenate_histories, maximise
from lincollapse.validation import check_beta, check_sigma2

__all__ = [
    "ENCODERS",
    "LinearBetaFit",
    "beta_optimal_encoder",
    "collapsed_latents",
    "effective_sigma2",
    "linear_beta_objective",
    "optimal_beta_elbo",
    "optimal_rates",
    "optimal_singular_values",
    "synthetic_data",
    "train_linear_beta_vae",
]


# --------------------------------------------------------------------------------------------
# β, σ² and the effective noise βσ²
# --------------------------------------------------------------------------------------------


def effective_sigma2(sigma2: float, beta: float) -> float:
    """βσ²: the observation noise of the plain ELBO with the maximisers of ELBO_β(σ²)."""
    return check_beta(beta) * check_sigma2(sigma2)


# --------------------------------------------------------------------------------------------
# The closed-form optimum
# --------------------------------------------------------------------------------------------


def _top_q(eigenvalues: np.ndarray | DataSpectrum, q: int) -> np.ndarray:
    eigenvalues = ppca.eigenvalues_of(eigenvalues)
    q = validation.check_q(q, eigenvalues)
    return eigenvalues[:q]


def optimal_singular_values(
    eigenvalues: np.ndarray | DataSpectrum, q: int, sigma2: float, beta: float = 1.0
) -> np.ndarray:
    """Singular values of the optimal decoder W of a linear β-VAE: √(max(0, λ_j − βσ²)), j ≤ q.

    Chapter *Beyond the paper*, equation (beyond-beta-optimum); chapter *β, σ² and KL
    annealing*, equation (beta-linear).

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
    return np.sqrt(np.clip(top - effective_sigma2(sigma2, beta), 0.0, None))


def collapsed_latents(
    eigenvalues: np.ndarray | DataSpectrum, q: int, sigma2: float, beta: float = 1.0
) -> np.ndarray:
    """Which of the q latents collapse at the optimum: λ_j ≤ βσ².

    Parameters as :func:`optimal_singular_values`. Returns a bool ndarray of shape (q,); its sum
    is the collapsed count #{j ≤ q : λ_j ≤ βσ²}.
    """
    return _top_q(eigenvalues, q) <= effective_sigma2(sigma2, beta)


def optimal_rates(
    eigenvalues: np.ndarray | DataSpectrum, q: int, sigma2: float, beta: float = 1.0
) -> np.ndarray:
    """KL of each latent at the optimum, averaged over data: ½ log(λ_j / βσ²) if λ_j > βσ², else 0.

    Chapter *Beyond the paper*, equation (beyond-beta-rate). Parameters as
    :func:`optimal_singular_values`; returns nats, shape (q,), descending.
    """
    top = _top_q(eigenvalues, q)
    noise = effective_sigma2(sigma2, beta)
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
    eigenvalues = ppca.eigenvalues_of(eigenvalues)
    q = validation.check_q(q, eigenvalues)
    beta, sigma2 = check_beta(beta), check_sigma2(sigma2)
    d = eigenvalues.size
    s = beta * sigma2
    used = np.zeros(d, dtype=bool)
    used[:q] = eigenvalues[:q] > s
    kept = eigenvalues[used]
    rest = eigenvalues[~used]
    ell = -0.5 * (
        d * LOG_2PI + np.sum(np.log(kept) + 1.0) + np.sum(math.log(s) + rest / s)
    )  # fixed-noise pPCA maximum at s
    return float(
        beta * ell
        + 0.5 * beta * d * (LOG_2PI + math.log(s))
        - 0.5 * d * (LOG_2PI + math.log(sigma2))
    )


# --------------------------------------------------------------------------------------------
# The β-objective and its optimal encoder
# --------------------------------------------------------------------------------------------


def linear_beta_objective(
    covariance: torch.Tensor,
    W: torch.Tensor,
    V: torch.Tensor,
    D: torch.Tensor,
    sigma2: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Analytic ELBO_β of the linear VAE: reconstruction − β·KL, nats per image (differentiable).

    The two terms are :func:`lincollapse.linear_vae.analytic_elbo_terms` (equations (lvae-recon)
    and (lvae-kl) of chapter *The linear VAE*); chapter *Beyond the paper*, equation
    (beyond-beta-objective).

    Parameters
    ----------
    covariance : Tensor of shape (d, d) or (d,)
        Sample covariance S about μ, or its diagonal (S in its eigenbasis).
    W : Tensor of shape (d, q)
    V : Tensor of shape (q, d)
    D : Tensor of shape (q,)
        Encoder variances.
    sigma2 : Tensor of shape ()
    beta : float

    Returns
    -------
    Tensor of shape ()
    """
    reconstruction, kl = analytic_elbo_terms(covariance, W, V, D, sigma2)
    return reconstruction - check_beta(beta) * kl


def _beta_encoder(W: torch.Tensor, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta-encoder) with M_β = WᵀW + noise·I, noise = βσ²; differentiable in W."""
    # noise as a tensor: float / Tensor would multiply by the reciprocal (another rounding)
    noise = torch.as_tensor(noise, dtype=W.dtype, device=W.device)
    return gaussian.optimal_encoder(W, noise)


def beta_optimal_encoder(
    W: np.ndarray, sigma2: float, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """The encoder (V, D) maximising the linear ELBO_β(σ²) for a fixed decoder W of shape (d, q).

    Setting the derivatives of reconstruction − β·KL with respect to V and D to zero gives
    (equation (beta-encoder)) V = M_β⁻¹ Wᵀ, shape (q, d), and D_i = βσ² / (M_β)_ii, shape (q,),
    with M_β = WᵀW + βσ² I: the ELBO-optimal encoder (lvae-optimal-encoder) at noise βσ², as
    the equivalence says it must be, so this is :func:`lincollapse.linear_vae.optimal_encoder`
    evaluated at βσ².
    """
    return optimal_encoder(W, effective_sigma2(sigma2, beta))


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
    eigenvalues = ppca.eigenvalues_of(eigenvalues)
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
class LinearBetaFit:
    """A linear β-VAE trained by maximising ELBO_β with σ² fixed (:func:`train_linear_beta_vae`).

    Attributes
    ----------
    model : LinearVAE
        The trained parameters in data coordinates: ``W`` (d, q), ``V`` (q, d), ``D`` (q,);
        ``mean`` is the sample mean; σ² is not trained.
    encoder : {"learned", "optimal"}
        How the encoder was treated.
    beta, sigma2 : float
    singular_values : ndarray of shape (q,)
        Of the trained W, descending.
    rates : ndarray of shape (q,)
        Average KL of each latent, ½[D_i − log D_i + (V S Vᵀ)_ii − 1] (nats), latents in order of
        decreasing column norm ‖w_i‖; equation (beyond-beta-rate) at the optimum.
    objective : float
        Final ELBO_β(σ²), nats per data point (float64).
    optimum : float
        :func:`optimal_beta_elbo`, the largest value ELBO_β(σ²) can take.
    history : History
        ELBO_β recorded during training.
    seconds : float
    """

    model: LinearVAE
    encoder: str
    beta: float
    sigma2: float
    singular_values: np.ndarray
    rates: np.ndarray
    objective: float
    optimum: float
    history: History
    seconds: float

    @property
    def squared_singular_values(self) -> np.ndarray:
        """Squared singular values of the trained W, shape (q,), descending: (beta-linear)."""
        return self.singular_values**2

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
    encoder: str = "learned",
    optimiser: str = "lbfgs",
    steps: int | None = None,
    lr: float = 1e-2,
    seed: int = 0,
    init_scale: float | None = None,
    tolerance: float | None = 1e-13,
    record_every: int = 50,
    rotate_every: int = 20,
) -> LinearBetaFit:
    """Maximise ELBO_β = reconstruction − β·KL of a linear VAE with σ² fixed, from a random start.

    The objective is :func:`linear_beta_objective`, the analytic terms (lvae-recon) and (lvae-kl);
    nothing is copied from the closed form or from the equivalence with noise βσ². W and V start
    at the seeded Gaussian initialisation of :class:`lincollapse.linear_vae.LinearVAE`, and
    :func:`lincollapse.training.maximise` takes the steps, in float64. Two treatments of the
    encoder:

    ``encoder="learned"`` (chapter *Beyond the paper*)
        W, V and log D are trained jointly, in data coordinates with the full sample covariance.
    ``encoder="optimal"`` (chapter *β, σ² and KL annealing*)
        The encoder is kept at its exact maximiser for the current decoder,
        :func:`beta_optimal_encoder` (equation (beta-encoder), derived from ELBO_β itself), and
        the optimiser trains W alone, in the eigenbasis of S. Every ``rotate_every`` steps the
        latents are rotated so that WᵀW is diagonal (the β-objective with the optimal diagonal
        encoder prefers that rotation; without it gradient ascent crawls, see chapter *The linear
        VAE*), and the optimiser restarts. The result is returned in data coordinates.

    Parameters
    ----------
    data : ndarray of shape (n, d) or DataSpectrum
    q : int
        0 < q < d.
    sigma2 : float
        Fixed decoder variance σ² > 0.
    beta : float, default 1
        KL weight β > 0.
    encoder : {"learned", "optimal"}, default "learned"
    optimiser : {"lbfgs", "adam"}, default "lbfgs"
    steps : int, optional
        Optimiser steps in all (default 500 for ``"learned"``, 300 = 15 rotations for
        ``"optimal"``).
    lr : float, default 0.01
        Adam's learning rate.
    seed : int, default 0
    init_scale : float, optional
        Standard deviation of the initial entries of W and V (default 0.1 for ``"learned"``,
        0.01 for ``"optimal"``).
    tolerance : float or None, default 1e-13
        Stop when a recording window improves ELBO_β by less than this.
    record_every : int, default 50
        Steps between records (``"learned"``; ``"optimal"`` records once per rotation).
    rotate_every : int, default 20
        Steps between rotations of the latents (``"optimal"``).

    Returns
    -------
    LinearBetaFit
    """
    start = time.perf_counter()
    validation.check_choice(encoder, ENCODERS, "encoder")
    beta, sigma2 = check_beta(beta), check_sigma2(sigma2)
    spectrum = data if isinstance(data, DataSpectrum) else ppca.data_spectrum(data)
    q = validation.check_q(q, spectrum.eigenvalues)
    if q == 0:
        raise ValueError("q must be >= 1: a linear β-VAE with no latents has nothing to train")
    learned = encoder == "learned"
    steps = (500 if learned else 300) if steps is None else int(steps)
    if steps < 1 or rotate_every < 1:
        raise ValueError(f"steps and rotate_every must be >= 1, got {steps} and {rotate_every}")
    model = LinearVAE(
        spectrum.d,
        q,
        mean=spectrum.mean,
        sigma2=sigma2,
        learn_sigma2=False,
        init_scale=(0.1 if learned else 1e-2) if init_scale is None else init_scale,
        seed=seed,
    )
    noise = effective_sigma2(sigma2, beta)
    # learned: data coordinates, full S; optimal: eigenbasis of S, S = diag(λ)
    covariance = torch.as_tensor(
        spectrum.covariance if learned else spectrum.eigenvalues, dtype=torch.float64
    )

    def encoder_parameters() -> tuple[torch.Tensor, torch.Tensor]:
        return (model.V, model.D) if learned else _beta_encoder(model.W, noise)

    def objective() -> torch.Tensor:
        return linear_beta_objective(covariance, model.W, *encoder_parameters(), model.sigma2, beta)

    options = dict(
        optimiser=optimiser,
        lr=lr,
        tolerance=tolerance,
        progress=False,
        name=f"linear β-VAE β={beta:g}",
    )
    if learned:
        history = maximise(
            objective,
            [model.W, model.V, model.log_D],
            steps=steps,
            record_every=record_every,
            **options,
        )
    else:
        histories = []
        for done in range(0, steps, rotate_every):
            chunk = min(rotate_every, steps - done)
            histories.append(
                maximise(objective, [model.W], steps=chunk, record_every=chunk, **options)
            )
            with torch.no_grad():  # latents by decreasing ‖w_j‖, WᵀW diagonal
                _, rotation = torch.linalg.eigh(model.W.T @ model.W)
                model.W.copy_(model.W @ rotation.flip(1))
        history = concatenate_histories(histories)
    with torch.no_grad():
        value = float(objective())
        V, D = encoder_parameters()
        rates = _latent_rates(V.numpy(), D.numpy(), covariance.numpy())
        if not learned:  # store the optimal encoder, and go back to data coordinates
            model.V.copy_(V)
            model.log_D.copy_(torch.log(D))
            rotate_model(model, torch.as_tensor(spectrum.eigenvectors, dtype=torch.float64))
        W = model.W.numpy()
    order = np.argsort(-np.linalg.norm(W, axis=0), kind="stable")
    return LinearBetaFit(
        model=model,
        encoder=encoder,
        beta=beta,
        sigma2=sigma2,
        singular_values=np.linalg.svd(W, compute_uv=False),
        rates=rates[order],
        objective=value,
        optimum=optimal_beta_elbo(spectrum, q, sigma2, beta),
        history=history,
        seconds=time.perf_counter() - start,
    )


def _latent_rates(V: np.ndarray, D: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Average KL of each latent, ½[D_i − log D_i + (V S Vᵀ)_ii − 1], shape (q,): (lvae-kl).

    ``covariance`` is S, shape (d, d), or its diagonal, shape (d,).
    """
    if covariance.ndim == 1:
        quadratic = np.einsum("id,d,id->i", V, covariance, V)
    else:
        quadratic = np.einsum("id,de,ie->i", V, covariance, V)
    return 0.5 * (D - np.log(D) + quadratic - 1.0)
