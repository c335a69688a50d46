"""The Gaussian formulas every model of the book shares, each written once.

- :func:`kl_to_prior`: KL(N(μ, s²) ‖ N(0, 1)) per latent dimension, chapter *Posterior
  collapse*, equation (collapse-kl-dim), and the KL term (lvae-kl) of every diagonal-Gaussian
  encoder.
- :func:`log_likelihood`: log N(x; x̂, σ² I_d) from the squared error ‖x − x̂‖², the
  scalar-noise Gaussian decoder of every model (lvae-recon, deep-elbo).
- :func:`m_matrix`: M = WᵀW + σ² I, the q × q matrix of pPCA's posterior (ppca-posterior) and of
  the linear VAE's optimal encoder.
- :func:`optimal_encoder`: V* = M⁻¹Wᵀ, D* = σ² diag(M)⁻¹, equation (lvae-optimal-encoder).

Each function takes numpy arrays or torch tensors and computes with the library of its inputs
(numpy's or torch's ``log``, ``solve``, …), so numpy callers get numpy results and torch callers
stay differentiable. None checks its inputs: the public functions that call them do
(:mod:`lincollapse.validation`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["LOG_2PI", "kl_to_prior", "log_likelihood", "m_matrix", "optimal_encoder"]

LOG_2PI = math.log(2.0 * math.pi)


def _is_torch(*values: Any) -> bool:
    return any(isinstance(v, torch.Tensor) for v in values)


def kl_to_prior(mean: Any, variance: Any, log_variance: Any = None) -> Any:
    """KL(N(μ_i, s_i²) ‖ N(0, 1)) = ½ (μ_i² + s_i² − 1 − log s_i²), elementwise.

    Parameters
    ----------
    mean : ndarray or Tensor
        Encoder means μ_i.
    variance : ndarray or Tensor
        Encoder variances s_i² > 0, broadcasting against ``mean``.
    log_variance : ndarray or Tensor, optional
        log s_i², when the encoder returns it (then ``variance`` is its exponential); computed
        from ``variance`` otherwise.

    Returns
    -------
    ndarray or Tensor of the broadcast shape
        Nats, per point and latent dimension (sum the last axis for the KL of the point).
    """
    if log_variance is None:
        log_variance = torch.log(variance) if _is_torch(variance) else np.log(variance)
    return 0.5 * (mean**2 + variance - 1.0 - log_variance)  # (collapse-kl-dim)


def log_likelihood(squared_error: Any, d: int, log_sigma2: Any, sigma2: Any = None) -> Any:
    """log N(x; x̂, σ² I_d) = −½ (‖x − x̂‖²/σ² + d (log 2π + log σ²)), in nats.

    Parameters
    ----------
    squared_error : ndarray or Tensor
        ‖x − x̂‖² summed over the d pixels, any shape (one value per point, per run, …).
    d : int
        Number of pixels.
    log_sigma2 : float, ndarray or Tensor
        log σ², broadcasting against ``squared_error``.
    sigma2 : float, ndarray or Tensor, optional
        σ² itself when the caller holds it (the squared error is divided by it); otherwise the
        squared error is multiplied by exp(−log σ²).
    """
    if sigma2 is None:
        exp = torch.exp if _is_torch(log_sigma2) else np.exp
        scaled = squared_error * exp(-log_sigma2)
    else:
        scaled = squared_error / sigma2
    return -0.5 * (scaled + d * (LOG_2PI + log_sigma2))


def m_matrix(W: Any, sigma2: Any, gram: Any = None) -> Any:
    """M = WᵀW + σ² I_q, shape (q, q); ``gram`` replaces WᵀW when the caller has it."""
    gram = W.T @ W if gram is None else gram
    q = gram.shape[-1]
    if _is_torch(gram):
        return gram + sigma2 * torch.eye(q, dtype=gram.dtype, device=gram.device)
    return gram + sigma2 * np.eye(q)


def optimal_encoder(W: Any, sigma2: Any, log_sigma2: Any = None) -> tuple[Any, Any]:
    """The encoder maximising the ELBO for the decoder (W, σ²): V* = M⁻¹Wᵀ, D* = σ² diag(M)⁻¹.

    Chapter *The linear VAE*, equation (lvae-optimal-encoder). V* is the exact posterior mean
    map; D* the mean-field variance, never above the exact posterior variance σ² (M⁻¹)_ii.

    Returns
    -------
    V : ndarray or Tensor of shape (q, d)
    D : ndarray or Tensor of shape (q,)
        Or log D* = log σ² − log M_ii when ``log_sigma2`` is given.
    """
    M = m_matrix(W, sigma2)
    if _is_torch(M):
        V, diagonal, log = torch.linalg.solve(M, W.T), M.diagonal(), torch.log
    else:
        V, diagonal, log = np.linalg.solve(M, W.T), np.diag(M), np.log
    if log_sigma2 is not None:
        return V, log_sigma2 - log(diagonal)
    return V, sigma2 / diagonal  # (lvae-optimal-encoder)
