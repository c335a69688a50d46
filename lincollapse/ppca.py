"""Probabilistic PCA in closed form (Tipping & Bishop, 1999), in float64 numpy.

The model is p(z) = N(0, I_q), p(x | z) = N(W z + μ, σ² I_d), so that the marginal is
p(x) = N(μ, C) with C = W Wᵀ + σ² I_d. Everything here is derived in the chapter
*Probabilistic PCA*; each function names the equation it implements.

Conventions: data ``x`` has shape (n, d); the sample covariance S is the maximum-likelihood one
(1/n, not 1/(n − 1)); log-likelihoods are **averaged over data points** (nats per point) unless a
name says ``total``.

References
----------
M. E. Tipping and C. M. Bishop, "Probabilistic principal component analysis", JRSS-B 61(3),
611–622, 1999.
J. Lucas, G. Tucker, R. Grosse and M. Norouzi, "Don't Blame the ELBO! A Linear VAE Perspective on
Posterior Collapse", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np

from lincollapse import gaussian, validation
from lincollapse.data import numerical_rank, sample_covariance
from lincollapse.gaussian import LOG_2PI
from lincollapse.validation import RankDeficientError, check_data

__all__ = [
    "DataSpectrum",
    "PPCAFit",
    "PPCAPosterior",
    "RankDeficientError",
    "collapsed_column_count",
    "data_spectrum",
    "eigenvalues_of",
    "fit",
    "fixed_sigma2_maximiser",
    "average_log_likelihood",
    "log_likelihood_from_covariance",
    "marginal_covariance",
    "max_log_likelihood",
    "perturbation_change",
    "posterior",
    "sample_moments",
    "sigma2_mle",
    "spectrum_from_covariance",
    "stationary_point",
]


# --------------------------------------------------------------------------------------------
# The data's spectrum
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataSpectrum:
    """Sample mean and eigendecomposition of the sample covariance of a data set.

    Attributes
    ----------
    mean : ndarray of shape (d,)
        Sample mean μ̂.
    eigenvalues : ndarray of shape (d,)
        λ_1 ≥ … ≥ λ_d of the 1/n sample covariance S, clipped at 0 (round-off can make the
        zero eigenvalues of a rank-deficient S slightly negative).
    eigenvectors : ndarray of shape (d, d)
        Orthonormal eigenvectors u_j as **columns**, in the order of ``eigenvalues``.
    n : int
        Number of data points S was estimated from.
    """

    mean: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    n: int

    @property
    def d(self) -> int:
        """Data dimension."""
        return int(self.eigenvalues.shape[0])

    @functools.cached_property
    def covariance(self) -> np.ndarray:
        """S = U Λ Uᵀ, shape (d, d), rebuilt once from the (clipped) eigendecomposition."""
        return (self.eigenvectors * self.eigenvalues) @ self.eigenvectors.T

    @property
    def trace(self) -> float:
        """tr S = Σ_j λ_j (total variance)."""
        return float(self.eigenvalues.sum())

    @property
    def numerical_rank(self) -> int:
        """Number of eigenvalues above d · ε_machine · λ_1 (≈ 585 for 1000 MNIST images)."""
        return numerical_rank(self.eigenvalues)[0]


def data_spectrum(x: np.ndarray) -> DataSpectrum:
    """Sample mean and eigendecomposition of the 1/n sample covariance of ``x``.

    Parameters
    ----------
    x : array-like of shape (n, d)
        Data, one point per row; finite, n ≥ 2.

    Returns
    -------
    DataSpectrum
    """
    x = check_data(x, "x")
    mean, covariance = sample_moments(x)
    return spectrum_from_covariance(covariance, mean, n=x.shape[0])


def spectrum_from_covariance(
    covariance: np.ndarray, mean: np.ndarray | None = None, *, n: int = 0
) -> DataSpectrum:
    """:class:`DataSpectrum` of a given covariance matrix (``mean`` defaults to zeros).

    Parameters
    ----------
    covariance : array-like of shape (d, d)
        Symmetric positive semi-definite S.
    mean : array-like of shape (d,), optional
    n : int, default 0
        Number of points behind S, if known (0 = unknown; only used for totals).
    """
    covariance = validation.check_covariance(covariance)
    d = covariance.shape[0]
    mean = np.zeros(d) if mean is None else validation.check_vector(mean, d, "mean")
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    return DataSpectrum(
        mean=mean,
        eigenvalues=np.clip(eigenvalues[order], 0.0, None),
        eigenvectors=eigenvectors[:, order],
        n=int(n),
    )


# --------------------------------------------------------------------------------------------
# Log-likelihood
# --------------------------------------------------------------------------------------------


def marginal_covariance(W: np.ndarray, sigma2: float) -> np.ndarray:
    """The model's covariance C = W Wᵀ + σ² I_d of the marginal p(x) = N(μ, C).

    Chapter *Probabilistic PCA*, equation (ppca-marginal). The log-likelihood never forms C (see
    :func:`log_likelihood_from_covariance`); this is for small d, e.g. to draw the model's
    ellipse in two dimensions.

    Parameters
    ----------
    W : ndarray of shape (d, q)
        Factor loadings, q < d.
    sigma2 : float
        Noise variance σ² > 0.

    Returns
    -------
    ndarray of shape (d, d)
    """
    W = validation.check_loadings(W)
    return W @ W.T + validation.check_sigma2(sigma2) * np.eye(W.shape[0])  # (ppca-marginal)


def log_likelihood_from_covariance(covariance: np.ndarray, W: np.ndarray, sigma2: float) -> float:
    """Average pPCA log-likelihood given the data's second moment about the model mean.

    Chapter *Probabilistic PCA*, equation (ppca-loglik):

        (1/n) Σ_i log N(x_i | μ, C) = −½ [d log 2π + log|C| + tr(C⁻¹ S_μ)],  C = W Wᵀ + σ² I,

    where S_μ = (1/n) Σ_i (x_i − μ)(x_i − μ)ᵀ. No d × d inverse or determinant is formed: with
    M = Wᵀ W + σ² I (q × q),

        log|C| = (d − q) log σ² + log|M|                       (determinant lemma)
        tr(C⁻¹ S_μ) = (tr S_μ − tr(M⁻¹ Wᵀ S_μ W)) / σ²        (Woodbury),

    which costs O(d² q + d q² + q³) instead of O(d³).

    Parameters
    ----------
    covariance : ndarray of shape (d, d)
        S_μ, the second moment of the data about the model mean μ.
    W : ndarray of shape (d, q)
        Factor loadings; q = 0 is allowed.
    sigma2 : float
        Noise variance σ² > 0.

    Returns
    -------
    float
        Nats per data point.
    """
    covariance = validation.check_covariance(covariance)
    d = covariance.shape[0]
    W = validation.check_loadings(W, d)
    sigma2 = validation.check_sigma2(sigma2)
    q = W.shape[1]
    M = gaussian.m_matrix(W, sigma2)
    chol = np.linalg.cholesky(M)
    log_det_M = 2.0 * np.sum(np.log(np.diag(chol)))
    log_det_C = (d - q) * math.log(sigma2) + log_det_M  # determinant lemma
    SW = covariance @ W
    inner = np.linalg.solve(chol, W.T @ SW)  # L⁻¹ WᵀSW, so tr(M⁻¹ WᵀSW) = tr(L⁻ᵀ L⁻¹ WᵀSW)
    trace_term = (np.trace(covariance) - np.trace(np.linalg.solve(chol.T, inner))) / sigma2
    return -0.5 * (d * LOG_2PI + log_det_C + trace_term)  # (ppca-loglik)


def average_log_likelihood(
    data: np.ndarray | DataSpectrum,
    W: np.ndarray,
    sigma2: float,
    mean: np.ndarray | None = None,
) -> float:
    """Average log-likelihood of pPCA with parameters (W, σ², μ) on a data set.

    Chapter *Probabilistic PCA*, equation (ppca-loglik). The second moment about μ is
    S_μ = S + (μ̂ − μ)(μ̂ − μ)ᵀ, so μ = μ̂ (the default) maximises it for any W, σ².

    Parameters
    ----------
    data : ndarray of shape (n, d) or DataSpectrum
        The data points, or their spectrum (then nothing of size n is touched).
    W : ndarray of shape (d, q)
    sigma2 : float
        σ² > 0.
    mean : ndarray of shape (d,), optional
        Model mean μ; defaults to the sample mean μ̂.

    Returns
    -------
    float
        Nats per data point.

    See Also
    --------
    log_likelihood_from_covariance : the same, given S_μ directly.
    """
    sample_mean, covariance = sample_moments(data)
    if mean is not None:
        offset = sample_mean - validation.check_vector(mean, sample_mean.shape[0], "mean")
        covariance = covariance + np.outer(offset, offset)  # S_μ = S + (μ̂ − μ)(μ̂ − μ)ᵀ
    return log_likelihood_from_covariance(covariance, W, sigma2)


def sample_moments(data: np.ndarray | DataSpectrum) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean (d,) and 1/n sample covariance (d, d) of data or of a spectrum."""
    if isinstance(data, DataSpectrum):
        return data.mean, data.covariance
    x = check_data(data, "x")
    return x.mean(axis=0), sample_covariance(x)


def eigenvalues_of(eigenvalues: np.ndarray | DataSpectrum) -> np.ndarray:
    """The eigenvalues of a :class:`DataSpectrum`, or an array of them checked
    (:func:`lincollapse.validation.check_eigenvalues`): float64, descending, clipped at 0."""
    if isinstance(eigenvalues, DataSpectrum):
        return eigenvalues.eigenvalues
    return validation.check_eigenvalues(eigenvalues)


# --------------------------------------------------------------------------------------------
# Maximum likelihood
# --------------------------------------------------------------------------------------------


def sigma2_mle(eigenvalues: np.ndarray | DataSpectrum, q: int) -> float:
    """σ²_MLE(q): the mean of the d − q discarded eigenvalues.

    Chapter *Probabilistic PCA*, equation (ppca-sigma-mle): σ²_MLE = (1/(d − q)) Σ_{j>q} λ_j.

    Parameters
    ----------
    eigenvalues : ndarray of shape (d,) or DataSpectrum
        Eigenvalues of S in descending order.
    q : int
        Latent dimension, 0 ≤ q < numerical rank of S.

    Raises
    ------
    RankDeficientError
        q at or above the numerical rank r of S (σ²_MLE would be 0 and ℓ* infinite).
    """
    eigenvalues = eigenvalues_of(eigenvalues)
    q = validation.check_q(q, eigenvalues, numerical_rank(eigenvalues)[0])
    return float(eigenvalues[q:].mean())  # (ppca-sigma-mle)


def max_log_likelihood(eigenvalues: np.ndarray | DataSpectrum, q: int) -> float:
    """ℓ*(q), the maximum average log-likelihood of pPCA with q latent dimensions.

    Chapter *Probabilistic PCA*, equation (ppca-max-loglik):

        ℓ*(q) = −½ [d log 2π + Σ_{j≤q} log λ_j + (d − q) log σ²_MLE(q) + d].

    Parameters
    ----------
    eigenvalues : ndarray of shape (d,) or DataSpectrum
    q : int
        0 ≤ q < numerical rank of S.

    Returns
    -------
    float
        Nats per data point.
    """
    eigenvalues = eigenvalues_of(eigenvalues)
    d = eigenvalues.shape[0]
    noise = sigma2_mle(eigenvalues, q)
    return (
        -0.5
        * (  # (ppca-max-loglik)
            d * LOG_2PI + np.sum(np.log(eigenvalues[:q])) + (d - q) * math.log(noise) + d
        )
    )


@dataclasses.dataclass(frozen=True)
class PPCAFit:
    """Maximum-likelihood pPCA.

    Attributes
    ----------
    mean : ndarray of shape (d,)
        μ_MLE = sample mean.
    W : ndarray of shape (d, q)
        W_MLE = U_q (Λ_q − σ² I)^{1/2} (R = I).
    sigma2 : float
        σ²_MLE(q).
    q : int
    log_likelihood : float
        ℓ*(q), nats per data point.
    """

    mean: np.ndarray
    W: np.ndarray
    sigma2: float
    q: int
    log_likelihood: float


def fit(data: np.ndarray | DataSpectrum, q: int) -> PPCAFit:
    """Maximum-likelihood pPCA with q latent dimensions, in closed form.

    Parameters
    ----------
    data : ndarray of shape (n, d) or DataSpectrum
    q : int
        0 ≤ q < numerical rank of the sample covariance.

    Returns
    -------
    PPCAFit

    Raises
    ------
    RankDeficientError
        q at or above the numerical rank of S.
    """
    spectrum = data if isinstance(data, DataSpectrum) else data_spectrum(data)
    noise = sigma2_mle(spectrum, q)
    return PPCAFit(
        mean=spectrum.mean.copy(),
        W=fixed_sigma2_maximiser(spectrum, q, noise),
        sigma2=noise,
        q=q,
        log_likelihood=max_log_likelihood(spectrum, q),
    )


# --------------------------------------------------------------------------------------------
# Stationary points and their stability for fixed σ²
# --------------------------------------------------------------------------------------------


def stationary_point(
    spectrum: DataSpectrum, columns: Sequence[int | None], sigma2: float
) -> np.ndarray:
    """A stationary point of the log-likelihood in W for fixed σ², built column by column.

    Chapter *Probabilistic PCA*, equation (ppca-stationary): W = U_q (K_q − σ² I)^{1/2} R with,
    for each column, either K_jj = λ_i for an eigenvector u_i (column u_i √(λ_i − σ²), needs
    λ_i > σ²) or K_jj = σ² (a zero column). R = I here.

    Parameters
    ----------
    spectrum : DataSpectrum
    columns : sequence of int or None, length q
        ``columns[j] = i`` puts eigenvector u_i (0-based) in column j; ``None`` makes column j
        zero. Indices must be distinct.
    sigma2 : float
        The fixed σ² > 0.

    Returns
    -------
    ndarray of shape (d, q)

    Raises
    ------
    ValueError
        Repeated or out-of-range indices, or an eigenvector with λ_i ≤ σ² (whose column would
        be zero: pass None instead).
    """
    sigma2 = validation.check_sigma2(sigma2)
    used = [i for i in columns if i is not None]
    if len(set(used)) != len(used):
        raise ValueError(f"eigenvector indices must be distinct, got {list(columns)}")
    W = np.zeros((spectrum.d, len(columns)))
    for j, i in enumerate(columns):
        if i is None:
            continue
        if not 0 <= i < spectrum.d:
            raise ValueError(f"eigenvector index {i} out of range 0..{spectrum.d - 1}")
        excess = spectrum.eigenvalues[i] - sigma2
        if excess <= 0:
            raise ValueError(
                f"λ_{i} = {spectrum.eigenvalues[i]:.4g} ≤ σ² = {sigma2:.4g}: that column can "
                "only be zero at a stationary point; pass None for it"
            )
        W[:, j] = spectrum.eigenvectors[:, i] * math.sqrt(excess)  # (ppca-stationary)
    return W


def fixed_sigma2_maximiser(spectrum: DataSpectrum, q: int, sigma2: float) -> np.ndarray:
    """The maximiser of the log-likelihood over W for a fixed σ².

    Column j (j = 1..q) is u_j √(λ_j − σ²) if λ_j > σ², else 0 — equation (ppca-fixed-maximiser)
    of theorem ``thm-ppca-fixed-sigma2`` (chapter *Probabilistic PCA*): the global maximum for this
    σ², whose zero columns are collapsed latents; every other stationary point is a saddle or a
    minimum.

    Parameters
    ----------
    spectrum : DataSpectrum
    q : int
        0 ≤ q < d.
    sigma2 : float
        σ² > 0.

    Returns
    -------
    ndarray of shape (d, q)
    """
    sigma2 = validation.check_sigma2(sigma2)
    q = validation.check_q(q, spectrum.eigenvalues)
    excess = np.clip(spectrum.eigenvalues[:q] - sigma2, 0.0, None)
    return spectrum.eigenvectors[:, :q] * np.sqrt(excess)  # zero columns where λ_j ≤ σ²


def collapsed_column_count(eigenvalues: np.ndarray | DataSpectrum, q: int, sigma2: float) -> int:
    """#{j ≤ q : λ_j ≤ σ²}: columns of the fixed-σ² maximiser that are zero (collapsed latents).

    Chapter *Probabilistic PCA*, theorem ``thm-ppca-fixed-sigma2``: the rank of the global
    maximiser is #{j ≤ q : λ_j > σ²}.
    """
    eigenvalues = eigenvalues_of(eigenvalues)
    q = validation.check_q(q, eigenvalues)
    return int(np.count_nonzero(eigenvalues[:q] <= validation.check_sigma2(sigma2)))


def perturbation_change(
    eigenvalue: float | np.ndarray, sigma2: float, epsilon: float | np.ndarray, n: int = 1
) -> float | np.ndarray:
    """Second-order change of the total log-likelihood when a zero column becomes ε·u_i.

    Chapter *Probabilistic PCA*, equation (ppca-perturbation): for u_i an eigenvector not used by
    the other columns of W,

        L(W + ε u_i e_jᵀ) − L(W) = (n/2) ε² (λ_i − σ²) / σ⁴ + O(ε⁴),

    positive (a saddle: the zero column wants to grow) when λ_i > σ², negative (a local
    maximum in this direction) when λ_i ≤ σ².

    Parameters
    ----------
    eigenvalue : float or ndarray
        λ_i.
    sigma2 : float
        The fixed σ² > 0.
    epsilon : float or ndarray
        Perturbation size ε (broadcast against ``eigenvalue``).
    n : int, default 1
        Number of data points (1 gives the change of the average log-likelihood).
    """
    sigma2 = validation.check_sigma2(sigma2)
    return 0.5 * n * np.square(epsilon) * (np.asarray(eigenvalue) - sigma2) / sigma2**2


# --------------------------------------------------------------------------------------------
# Posterior
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PPCAPosterior:
    """The exact posterior p(z | x) = N(M⁻¹ Wᵀ (x − μ), σ² M⁻¹) for each data point.

    Attributes
    ----------
    mean : ndarray of shape (n, q)
        Posterior means, one row per data point.
    covariance : ndarray of shape (q, q)
        σ² M⁻¹, the same for every data point.
    """

    mean: np.ndarray
    covariance: np.ndarray


def posterior(x: np.ndarray, W: np.ndarray, sigma2: float, mean: np.ndarray) -> PPCAPosterior:
    """Exact pPCA posterior of the latents, equation (ppca-posterior).

    p(z | x) = N(M⁻¹ Wᵀ (x − μ), σ² M⁻¹) with M = Wᵀ W + σ² I. A zero column j of W gives
    z_j the prior N(0, 1) whatever x is: collapse in the exact model.

    Parameters
    ----------
    x : ndarray of shape (n, d)
    W : ndarray of shape (d, q)
    sigma2 : float
    mean : ndarray of shape (d,)

    Returns
    -------
    PPCAPosterior
    """
    x = np.asarray(x, dtype=np.float64)
    validation.check_points(x)
    d = x.shape[1]
    W = validation.check_loadings(W, d)
    sigma2 = validation.check_sigma2(sigma2)
    mean = validation.check_vector(mean, d, "mean")
    M = gaussian.m_matrix(W, sigma2)
    return PPCAPosterior(
        mean=np.linalg.solve(M, W.T @ (x - mean).T).T,  # (ppca-posterior)
        covariance=sigma2 * np.linalg.inv(M),
    )
