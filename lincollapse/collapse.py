"""Measuring posterior collapse: per-dimension KLs and the (ε, δ)-collapse metric.

Chapter *Posterior collapse*, equations (collapse-kl-dim) and (collapse-metric). Works for any
encoder with Gaussian marginals N(μ_i(x), s_i²(x)) per latent dimension, on numpy arrays or
torch tensors (of any dtype and device).

The metric has one implementation, :func:`collapse_thresholds`: per latent, the order
statistic of its KLs above which it counts as collapsed. :func:`collapsed_mask`,
:func:`collapsed_fraction` and the training records of :mod:`lincollapse.deep_vae` and
:mod:`lincollapse.kl_annealing` all compare those thresholds with ε.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from lincollapse import gaussian

__all__ = [
    "collapse_quantile_index",
    "collapse_thresholds",
    "collapsed_fraction",
    "collapsed_fraction_from_thresholds",
    "collapsed_mask",
    "encoder_collapsed_fraction",
    "gaussian_kl_per_dimension",
    "linear_collapse_prediction",
]


def collapse_quantile_index(n: int, delta: float) -> int:
    """The order statistic k (1-based) such that "≥ (1 − δ)·n of the n KLs are < ε" ⇔ KL_(k) < ε."""
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    return max(1, math.ceil(round((1.0 - delta) * n, 9)))


def collapse_thresholds(kl: torch.Tensor | np.ndarray, delta: float = 0.01) -> np.ndarray:
    """Per latent, the smallest ε above which it is (ε, δ)-collapsed.

    Latent i is (ε, δ)-collapsed when P_x[KL_i(x) < ε] ≥ 1 − δ, i.e. when at least
    k = ⌈(1 − δ)·n⌉ of the n images have KL_i < ε, i.e. when the k-th smallest KL_i is < ε.
    That order statistic is returned, so the collapsed fraction at any ε is
    ``mean(thresholds < ε)`` (:func:`collapsed_fraction_from_thresholds`).

    Parameters
    ----------
    kl : array of shape (..., n, q)
        Per-image, per-latent KL to the prior.
    delta : float
        Fraction of images allowed to exceed ε.

    Returns
    -------
    ndarray of shape (..., q), float64
    """
    kl = torch.as_tensor(kl)
    k = collapse_quantile_index(kl.shape[-2], delta)
    values = torch.kthvalue(kl.detach(), k, dim=-2).values
    return values.double().cpu().numpy()


def collapsed_fraction_from_thresholds(
    thresholds: np.ndarray, epsilons: np.ndarray | Sequence[float] | float
) -> np.ndarray:
    """Fraction of latents with threshold < ε: shape ``thresholds.shape[:-1] + eps.shape``."""
    eps = np.asarray(epsilons, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    return (t[..., None] < eps.reshape(-1)).mean(axis=-2).reshape(t.shape[:-1] + eps.shape)


def gaussian_kl_per_dimension(means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """KL(N(μ_i, s_i²) ‖ N(0, 1)) for every data point and latent dimension.

    Chapter *Posterior collapse*, equation (collapse-kl-dim):
    KL_i(x) = ½ (μ_i(x)² + s_i(x)² − 1 − log s_i(x)²).

    Parameters
    ----------
    means : array-like of shape (n, q)
        Encoder means μ_i(x).
    variances : array-like of shape (n, q) or (q,)
        Encoder variances s_i(x)² > 0; shape (q,) for an encoder whose variances are shared by
        all data points (the linear VAE's D).

    Returns
    -------
    ndarray of shape (n, q)
        Nats.
    """
    means = np.asarray(means, dtype=np.float64)
    variances = np.asarray(variances, dtype=np.float64)
    if means.ndim != 2:
        raise ValueError(f"means must have shape (n, q), got {means.shape}")
    if variances.shape not in (means.shape, means.shape[1:]):
        raise ValueError(
            f"variances must have shape {means.shape} or ({means.shape[1]},), got {variances.shape}"
        )
    if not (np.all(np.isfinite(means)) and np.all(np.isfinite(variances))):
        raise ValueError("means and variances must be finite (no NaN or inf)")
    if np.any(variances <= 0):
        raise ValueError("variances must be > 0; pass variances, not log-variances")
    return gaussian.kl_to_prior(means, np.broadcast_to(variances, means.shape))


def collapsed_mask(kl: np.ndarray, epsilons: float | np.ndarray, delta: float = 0.01) -> np.ndarray:
    """Which latent dimensions are (ε, δ)-collapsed, for each ε.

    Chapter *Posterior collapse*, equation (collapse-metric): dimension i is collapsed when
    the fraction of data points with KL_i(x) < ε is at least 1 − δ.

    Parameters
    ----------
    kl : array-like of shape (n, q)
        Per-point, per-dimension KLs (:func:`gaussian_kl_per_dimension`), ≥ 0.
    epsilons : float or array-like of shape (m,)
        Thresholds ε ≥ 0.
    delta : float, default 0.01
        Allowed fraction of data points above ε, 0 ≤ δ < 1.

    Returns
    -------
    ndarray of bool, shape (m, q) (or (q,) for a scalar ε)
    """
    kl = np.asarray(kl, dtype=np.float64)
    if kl.ndim != 2 or kl.shape[0] == 0:
        raise ValueError(f"kl must have shape (n, q) with n >= 1, got {kl.shape}")
    if not np.all(np.isfinite(kl)):
        raise ValueError("kl contains NaN or infinite values")
    if np.any(kl < -1e-12):
        raise ValueError("kl must be >= 0; it is a KL divergence")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    scalar = np.ndim(epsilons) == 0
    epsilons = np.atleast_1d(np.asarray(epsilons, dtype=np.float64))
    if epsilons.ndim != 1 or not np.all(np.isfinite(epsilons)) or np.any(epsilons < 0):
        raise ValueError("epsilons must be a finite non-negative scalar or 1-D array")
    mask = collapse_thresholds(kl, delta)[None, :] < epsilons[:, None]  # (collapse-metric)
    return mask[0] if scalar else mask


def collapsed_fraction(
    kl: np.ndarray, epsilons: float | np.ndarray, delta: float = 0.01
) -> np.ndarray:
    """Fraction of the q latent dimensions that are (ε, δ)-collapsed, for each ε.

    Chapter *Posterior collapse*, equation (collapse-metric).

    Parameters
    ----------
    kl : array-like of shape (n, q)
    epsilons : float or array-like of shape (m,)
    delta : float, default 0.01

    Returns
    -------
    ndarray of shape (m,) (a 0-d array for a scalar ε)
    """
    mask = collapsed_mask(kl, epsilons, delta)
    return mask.mean(axis=-1) if mask.shape[-1] else np.zeros(mask.shape[:-1])


def encoder_collapsed_fraction(
    means: np.ndarray,
    variances: np.ndarray,
    epsilons: float | np.ndarray,
    delta: float = 0.01,
) -> np.ndarray:
    """Fraction of an encoder's latents that are (ε, δ)-collapsed, from its outputs on data.

    The first measurement of chapter *Diagnosing posterior collapse in your own VAE*: pass what
    any diagonal-Gaussian encoder returns on a data set (training or held-out images). It is
    :func:`collapsed_fraction` of :func:`gaussian_kl_per_dimension`, equations (collapse-kl-dim)
    and (collapse-metric) of chapter *Posterior collapse*.

    Parameters
    ----------
    means : array-like of shape (n, q)
        Encoder means μ_i(x), one row per data point.
    variances : array-like of shape (n, q) or (q,)
        Encoder variances s_i(x)² > 0 (``np.exp(logvar)`` for an encoder that returns
        log-variances; shape (q,) when they are shared by all points).
    epsilons : float or array-like of shape (m,)
        Thresholds ε ≥ 0, nats.
    delta : float, default 0.01
        Allowed fraction of data points with KL_i(x) ≥ ε.

    Returns
    -------
    ndarray of shape (m,) (a 0-d array for a scalar ε)

    See Also
    --------
    collapse_thresholds : the metric as per-latent thresholds, for many ε at once.
    """
    return collapsed_fraction(gaussian_kl_per_dimension(means, variances), epsilons, delta)


def linear_collapse_prediction(
    eigenvalues: np.ndarray, sigma2: np.ndarray | float, latent: int
) -> np.ndarray:
    """Linear-theory collapsed fraction max(0, q − #{λ_j > σ²})/q for each σ²."""
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    above = (np.asarray(eigenvalues)[:, None] > sigma2.reshape(-1)).sum(axis=0)
    return (np.maximum(0, latent - above) / latent).reshape(sigma2.shape)
