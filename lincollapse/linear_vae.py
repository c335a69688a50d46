"""The linear VAE of Lucas et al. (2019): a pPCA decoder with a linear Gaussian encoder.

Decoder p(x | z) = N(W z + μ, σ² I_d), prior p(z) = N(0, I_q), encoder q(z | x) = N(V(x − μ), D)
with D diagonal and **shared by all data points**. Its ELBO has a closed form that depends on the
data only through the sample covariance S, derived in the chapter *The linear VAE*; each function
names the equation it implements. Conventions: the ELBO is **averaged over data points** (nats per
image) and summed over pixels and latents; everything is float64.

μ is fixed at the sample mean μ̂. That is no restriction: the ELBO depends on μ only through the
average of two quadratic forms in x − μ, ‖(I − WV)(x − μ)‖² and ‖V(x − μ)‖², both minimised at
μ = μ̂ whatever the other parameters are.

References
----------
J. Lucas, G. Tucker, R. Grosse and M. Norouzi, "Don't Blame the ELBO! A Linear VAE Perspective on
Posterior Collapse", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from lincollapse import gaussian, ppca, validation
from lincollapse.ppca import DataSpectrum

__all__ = [
    "ELBOTerms",
    "LinearDecoderParameters",
    "LinearVAE",
    "analytic_elbo_terms",
    "elbo_gap",
    "elbo_terms",
    "leading_gram",
    "off_diagonal_ratio",
    "optimal_encoder",
    "optimal_encoder_elbo",
    "rotate_model",
]


# --------------------------------------------------------------------------------------------
# The ELBO in closed form
# --------------------------------------------------------------------------------------------


def analytic_elbo_terms(
    covariance: torch.Tensor,
    W: torch.Tensor,
    V: torch.Tensor,
    D: torch.Tensor,
    sigma2: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction term and KL term of the ELBO, averaged over data (differentiable).

    Chapter *The linear VAE*, equations (lvae-recon) and (lvae-kl). With S the covariance of
    the data about μ:

        E_q log p(x | z) = −(1/(2σ²)) [tr(W D Wᵀ) + tr S − 2 tr(W V S) + tr(Wᵀ W V S Vᵀ)]
                           − (d/2) log(2πσ²)
        KL(q(z | x) ‖ p(z)) = ½ [tr D − log det D + tr(V S Vᵀ) − q]

    and the ELBO (lvae-elbo) is their difference.

    Parameters
    ----------
    covariance : Tensor of shape (d, d) or (d,)
        S, or its diagonal when S is diagonal (in the eigenbasis of S). The diagonal form costs
        O(d q²) per evaluation instead of O(q d²).
    W : Tensor of shape (d, q)
    V : Tensor of shape (q, d)
    D : Tensor of shape (q,)
        Diagonal of the encoder covariance, > 0.
    sigma2 : Tensor of shape ()
        Decoder noise variance, > 0.

    Returns
    -------
    reconstruction, kl : Tensor of shape ()
        Nats per data point.
    """
    d, q = W.shape
    if covariance.ndim == 1:
        VS = V * covariance  # V S for diagonal S
        trace_S = covariance.sum()
    else:
        VS = V @ covariance
        trace_S = covariance.diagonal().sum()
    VSVt = VS @ V.T
    gram = W.T @ W
    kl = 0.5 * (D.sum() - torch.log(D).sum() + VSVt.diagonal().sum() - q)  # (lvae-kl)
    squared_error = (
        (gram.diagonal() * D).sum()  # tr(W D Wᵀ)
        + trace_S
        - 2.0 * (W * VS.T).sum()  # tr(W V S)
        + (gram * VSVt).sum()  # tr(WᵀW V S Vᵀ), both factors symmetric
    )
    reconstruction = gaussian.log_likelihood(squared_error, d, torch.log(sigma2), sigma2)
    return reconstruction, kl  # (lvae-recon), (lvae-kl)


@dataclasses.dataclass(frozen=True)
class ELBOTerms:
    """The analytic ELBO and its two terms, in nats per data point.

    Attributes
    ----------
    elbo : float
        reconstruction − kl, equation (lvae-elbo).
    reconstruction : float
        E_q log p(x | z), equation (lvae-recon).
    kl : float
        KL(q(z | x) ‖ p(z)) averaged over data, equation (lvae-kl).
    """

    elbo: float
    reconstruction: float
    kl: float


def elbo_terms(
    data: np.ndarray | DataSpectrum,
    W: np.ndarray,
    V: np.ndarray,
    D: np.ndarray,
    sigma2: float,
) -> ELBOTerms:
    """The analytic ELBO of a linear VAE on a data set (μ = sample mean), in float64.

    Chapter *The linear VAE*, equations (lvae-elbo), (lvae-recon), (lvae-kl).

    Parameters
    ----------
    data : ndarray of shape (n, d) or DataSpectrum
    W : ndarray of shape (d, q)
    V : ndarray of shape (q, d)
    D : ndarray of shape (q,)
        Encoder variances, > 0.
    sigma2 : float
        > 0.

    Returns
    -------
    ELBOTerms
    """
    _, covariance = ppca.sample_moments(data)
    d = covariance.shape[0]
    W = validation.check_loadings(W, d)
    q = W.shape[1]
    V = np.asarray(V, dtype=np.float64)
    if V.shape != (q, d):
        raise ValueError(f"V must have shape (q, d) = ({q}, {d}), got {V.shape}")
    D = _check_variances(D, q)
    sigma2 = validation.check_sigma2(sigma2)
    tensors = [torch.as_tensor(a, dtype=torch.float64) for a in (covariance, W, V, D, sigma2)]
    reconstruction, kl = (float(t) for t in analytic_elbo_terms(*tensors))
    return ELBOTerms(elbo=reconstruction - kl, reconstruction=reconstruction, kl=kl)


def optimal_encoder(W: np.ndarray, sigma2: float) -> tuple[np.ndarray, np.ndarray]:
    """The encoder that maximises the ELBO for a given decoder (W, σ²).

    Chapter *The linear VAE*, equation (lvae-optimal-encoder): V* = M⁻¹ Wᵀ, D* = σ² diag(M)⁻¹,
    with M = Wᵀ W + σ² I. V* is the exact posterior mean map; D* is the mean-field variance,
    never larger than the exact posterior variance σ² (M⁻¹)_ii.

    Parameters
    ----------
    W : ndarray of shape (d, q)
    sigma2 : float

    Returns
    -------
    V : ndarray of shape (q, d)
    D : ndarray of shape (q,)
    """
    W = validation.check_weights(W)
    sigma2 = validation.check_sigma2(sigma2)
    return gaussian.optimal_encoder(W, sigma2)  # (lvae-optimal-encoder)


def elbo_gap(W: np.ndarray, sigma2: float) -> float:
    """log p − ELBO* for a decoder (W, σ²): ½ (Σ_i log M_ii − log det M) ≥ 0.

    Chapter *The linear VAE*, equation (lvae-elbo-gap). Zero exactly when M = WᵀW + σ²I is
    diagonal, i.e. when the columns of W are orthogonal (Hadamard's inequality). It does not
    depend on the data.

    Parameters
    ----------
    W : ndarray of shape (d, q)
    sigma2 : float

    Returns
    -------
    float
        Nats per data point.
    """
    W = validation.check_weights(W)
    sigma2 = validation.check_sigma2(sigma2)
    M = gaussian.m_matrix(W, sigma2)
    _, log_det = np.linalg.slogdet(M)
    return 0.5 * (float(np.sum(np.log(np.diag(M)))) - float(log_det))  # (lvae-elbo-gap)


def optimal_encoder_elbo(data: np.ndarray | DataSpectrum, W: np.ndarray, sigma2: float) -> float:
    """ELBO*(W, σ²): the ELBO maximised over the encoder, = log p − gap.

    Chapter *The linear VAE*, equation (lvae-elbo-gap):
    ELBO*(W, σ²) = (1/n) log p(X | W, σ²) − ½ (Σ_i log M_ii − log det M). It equals the pPCA
    log-likelihood iff WᵀW is diagonal.

    Parameters
    ----------
    data : ndarray of shape (n, d) or DataSpectrum
    W : ndarray of shape (d, q)
    sigma2 : float

    Returns
    -------
    float
        Nats per data point.
    """
    return ppca.average_log_likelihood(data, W, sigma2) - elbo_gap(W, sigma2)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class LinearDecoderParameters:
    """``d``, ``q`` and σ² of a module whose decoder is p(x | z) = N(W z + μ, σ² I): it holds
    ``W`` (d, q) and ``log_sigma2``. Shared by :class:`LinearVAE` and
    :class:`lincollapse.linear_decoder_vae.LinearDecoder`."""

    W: torch.Tensor
    log_sigma2: torch.Tensor

    @property
    def d(self) -> int:
        return self.W.shape[0]

    @property
    def q(self) -> int:
        return self.W.shape[1]

    @property
    def sigma2(self) -> torch.Tensor:
        """Decoder noise variance σ², shape ()."""
        return torch.exp(self.log_sigma2)


class LinearVAE(LinearDecoderParameters, nn.Module):
    """Linear VAE with a shared diagonal encoder covariance.

    Chapter *The linear VAE*, equations (lvae-encoder)–(lvae-elbo).

    Parameters
    ----------
    d, q : int
        Data and latent dimensions (q = 0 allowed).
    mean : array-like of shape (d,), optional
        μ, a buffer (not trained; see the module docstring). Defaults to zeros.
    sigma2 : float, default 1.0
        Initial (or fixed) decoder noise variance.
    learn_sigma2 : bool, default True
        Whether σ² is trained (``log_sigma2.requires_grad``).
    init_scale : float, default 0.01
        Standard deviation of the seeded Gaussian initialisation of W and V.
    seed : int, default 0
    dtype, device
        float64 by default; any torch device.

    Attributes
    ----------
    W : Parameter of shape (d, q)
        Decoder weights.
    V : Parameter of shape (q, d)
        Encoder weights: the encoder mean is V (x − μ).
    log_D : Parameter of shape (q,)
        Log of the diagonal encoder covariance (initialised at 0: D = I, the prior's).
    log_sigma2 : Parameter of shape ()
        Log of the decoder noise variance.
    mean : buffer of shape (d,)
    """

    def __init__(
        self,
        d: int,
        q: int,
        *,
        mean: np.ndarray | torch.Tensor | None = None,
        sigma2: float = 1.0,
        learn_sigma2: bool = True,
        init_scale: float = 1e-2,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        d, q = validation.check_dimensions(d, q)
        sigma2 = validation.check_sigma2(sigma2)
        generator = torch.Generator().manual_seed(seed)
        W = torch.randn(d, q, generator=generator, dtype=dtype) * init_scale
        V = torch.randn(q, d, generator=generator, dtype=dtype) * init_scale
        self.W = nn.Parameter(W.to(device))
        self.V = nn.Parameter(V.to(device))
        self.log_D = nn.Parameter(torch.zeros(q, dtype=dtype, device=device))
        self.log_sigma2 = nn.Parameter(
            torch.tensor(math.log(sigma2), dtype=dtype, device=device), requires_grad=learn_sigma2
        )
        mean = torch.zeros(d, dtype=dtype) if mean is None else torch.as_tensor(mean, dtype=dtype)
        if mean.shape != (d,):
            raise ValueError(f"mean must have shape ({d},), got {tuple(mean.shape)}")
        self.register_buffer("mean", mean.to(device))

    @property
    def D(self) -> torch.Tensor:
        """Encoder variances, shape (q,)."""
        return torch.exp(self.log_D)

    def elbo_terms(
        self, covariance: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, kl) averaged over data, from the covariance S about :attr:`mean`.

        See :func:`analytic_elbo_terms`; ``covariance`` may be (d, d) or its diagonal (d,).
        """
        covariance = self._as_tensor(covariance)
        if covariance.shape not in ((self.d, self.d), (self.d,)):
            raise ValueError(
                f"covariance must have shape ({self.d}, {self.d}) or ({self.d},), "
                f"got {tuple(covariance.shape)}"
            )
        return analytic_elbo_terms(covariance, self.W, self.V, self.D, self.sigma2)

    def elbo(self, covariance: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Analytic ELBO, equation (lvae-elbo), nats per data point (differentiable)."""
        reconstruction, kl = self.elbo_terms(covariance)
        return reconstruction - kl

    def encode(self, x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder means V(x − μ) and variances D for each row of ``x``.

        Parameters
        ----------
        x : Tensor or ndarray of shape (n, d)

        Returns
        -------
        means : Tensor of shape (n, q)
        variances : Tensor of shape (n, q)
            D repeated for every row (the encoder covariance is shared).
        """
        x = self._check_points(x)
        means = (x - self.mean) @ self.V.T
        return means, self.D.expand(x.shape[0], self.q)

    @torch.no_grad()
    def set_optimal_encoder(self) -> None:
        """Set (V, D) to their optimum for the current (W, σ²), equation (lvae-optimal-encoder)."""
        V, log_D = gaussian.optimal_encoder(self.W, self.sigma2, self.log_sigma2)
        self.V.copy_(V)
        self.log_D.copy_(log_D)

    def decoder_column_norms(self) -> np.ndarray:
        """‖W_{:, j}‖ for each latent j, shape (q,): zero columns are collapsed latents."""
        return self.W.detach().norm(dim=0).cpu().numpy()

    def numpy_parameters(self) -> dict[str, np.ndarray | float]:
        """W (d, q), V (q, d), D (q,), sigma2 and mean (d,) as float64 numpy values."""
        return {
            "W": self.W.detach().cpu().double().numpy().copy(),
            "V": self.V.detach().cpu().double().numpy().copy(),
            "D": self.D.detach().cpu().double().numpy().copy(),
            "sigma2": float(self.sigma2.detach()),
            "mean": self.mean.detach().cpu().double().numpy().copy(),
        }

    def _as_tensor(self, array: torch.Tensor | np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=self.W.dtype, device=self.W.device)

    def _check_points(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = self._as_tensor(x)
        validation.check_points(x, self.d)
        return x


# --------------------------------------------------------------------------------------------
# Measurements of a decoder
# --------------------------------------------------------------------------------------------


def leading_gram(W: np.ndarray | torch.Tensor, block: int | None = None) -> np.ndarray:
    """WᵀW with the latents ordered by decreasing ‖w_j‖, its top-left ``block`` × ``block``.

    Parameters
    ----------
    W : ndarray or Tensor of shape (d, q)
    block : int, optional
        Size of the leading block (all q latents when ``None`` or larger than q).

    Returns
    -------
    ndarray of shape (min(block, q), min(block, q))
    """
    W = W.detach().cpu().double().numpy() if isinstance(W, torch.Tensor) else np.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"W must have shape (d, q), got {W.shape}")
    if block is not None and block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    gram = W.T @ W
    order = np.argsort(-np.diag(gram), kind="stable")[:block]
    return gram[np.ix_(order, order)]


def off_diagonal_ratio(gram: np.ndarray) -> float:
    """‖G − diag(G)‖_F / ‖diag(G)‖_F: 0 exactly when the columns behind G are orthogonal.

    Parameters
    ----------
    gram : ndarray of shape (m, m)
        A Gram matrix WᵀW (or a block of it). A zero matrix gives 0.
    """
    gram = np.asarray(gram, dtype=np.float64)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square matrix, got shape {gram.shape}")
    diagonal = np.linalg.norm(np.diag(gram))
    if diagonal == 0.0:
        return 0.0
    return float(np.linalg.norm(gram - np.diag(np.diag(gram))) / diagonal)


@torch.no_grad()
def rotate_model(model: LinearVAE, basis: torch.Tensor) -> None:
    """Change data coordinates x → Bᵀx... as W → B W, V → V Bᵀ (B orthogonal, (d, d))."""
    model.W.copy_(basis @ model.W)
    model.V.copy_(model.V @ basis.T)


def _check_variances(D: np.ndarray, q: int) -> np.ndarray:
    D = np.asarray(D, dtype=np.float64)
    if D.shape != (q,):
        raise ValueError(f"D must have shape (q,) = ({q},), got {D.shape}")
    if not np.all(np.isfinite(D)) or np.any(D <= 0):
        raise ValueError("encoder variances D must be finite and > 0")
    return D
