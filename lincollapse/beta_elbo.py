r"""β-weighted ELBOs and the effective observation noise βσ².

Chapter *β, σ² and KL annealing*. For a Gaussian decoder p(x | z) = N(f(z), σ² I_d) the
β-weighted ELBO of one image is

.. math::

    \mathrm{ELBO}_β(σ^2) = E_q[\log N(x; f(z), σ^2 I)] − β\,KL(q(z|x) \,\|\, p(z)),

and for every encoder and decoder (equation (beta-equivalence) of the chapter)

.. math::

    \mathrm{ELBO}_β(σ^2) = β\,\mathrm{ELBO}_1(βσ^2) + C, \qquad
    C = −\tfrac d2\bigl(\log 2πσ^2 − β \log 2πβσ^2\bigr),

with C independent of the parameters: weighting the KL by β has exactly the maximisers of the plain
ELBO with observation noise βσ² (:func:`beta_elbo_constant`, :func:`effective_sigma2`).
Consequences:

- a squared-error loss with a KL term fixes σ² implicitly (:func:`loss_effective_sigma2`);
- the linear β-VAE collapses direction j exactly when λ_j ≤ βσ² (equation (beta-linear); the
  closed form and the trainer that checks it are in :mod:`lincollapse.linear_beta_vae`);
- KL annealing (β rising from 0 to 1) raises the effective noise from 0 to σ²; its trainer is
  :mod:`lincollapse.kl_annealing`.

Conventions are those of :mod:`lincollapse.deep_vae` and :mod:`lincollapse.linear_vae`: ELBOs
in nats per image, reconstruction summed over pixels, KL summed over latents, averages over
images.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from lincollapse import gaussian
from lincollapse.deep_vae import Architecture
from lincollapse.gaussian import LOG_2PI
from lincollapse.linear_beta_vae import effective_sigma2
from lincollapse.validation import check_beta, check_sigma2

# effective_sigma2 is lincollapse.linear_beta_vae's, re-exported.
__all__ = [
    "EquivalenceCheck",
    "beta_elbo_constant",
    "check_equivalence",
    "effective_sigma2",
    "gaussian_beta_elbo",
    "loss_effective_sigma2",
]

MSE_REDUCTIONS = ("mean", "sum")
KL_REDUCTIONS = ("batchmean", "sum", "mean")


# --------------------------------------------------------------------------------------------
# The equivalence
# --------------------------------------------------------------------------------------------


def beta_elbo_constant(d: int, sigma2: float, beta: float) -> float:
    """C in ELBO_β(σ²) = β·ELBO_1(βσ²) + C, equation (beta-equivalence): per image, in nats.

    C = −(d/2)(log 2πσ² − β log 2πβσ²); it depends on d, σ² and β only, never on the encoder,
    the decoder or the data, and vanishes at β = 1.
    """
    if int(d) != d or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    sigma2, beta = check_sigma2(sigma2), check_beta(beta)
    return -0.5 * d * (LOG_2PI + math.log(sigma2) - beta * (LOG_2PI + math.log(beta * sigma2)))


def gaussian_beta_elbo(
    x: torch.Tensor,
    reconstruction: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    sigma2: float,
    beta: float,
) -> torch.Tensor:
    """ELBO_β(σ²) = log N(x; f, σ² I) − β Σ_i KL_i, averaged over images (differentiable).

    Parameters
    ----------
    x, reconstruction : Tensor of shape (..., n, d)
        Images and decoder means f(z) at the sampled latents.
    mean, logvar : Tensor of shape (..., n, q)
        Encoder means and log-variances.
    sigma2, beta : float
        Observation noise (> 0) and KL weight (> 0).

    Returns
    -------
    Tensor of shape (...)
        Nats per image.
    """
    sigma2, beta = check_sigma2(sigma2), check_beta(beta)
    log_sigma2 = torch.tensor(math.log(sigma2), dtype=x.dtype, device=x.device)
    log_lik = gaussian.log_likelihood((x - reconstruction).pow(2).sum(-1), x.shape[-1], log_sigma2)
    kl = gaussian.kl_to_prior(mean, torch.exp(logvar)).sum(-1)
    return (log_lik - beta * kl).mean(-1)


def loss_effective_sigma2(
    d: int,
    *,
    mse_reduction: str = "mean",
    kl_reduction: str = "batchmean",
    beta: float = 1.0,
    batch_size: int | None = None,
    latent: int | None = None,
) -> float:
    """The σ² whose plain ELBO has the minimisers of ``mse_loss(f, x) + β·KL``.

    The loss is ``torch.nn.functional.mse_loss(f, x, reduction=mse_reduction) + beta * KL`` on a
    batch of n images, with the KL reduced by ``kl_reduction``: ``"batchmean"`` (summed over
    latents, averaged over images: the usual one), ``"sum"`` (summed over both) or ``"mean"``
    (averaged over both). Writing the loss as a·Σ_n‖x_n − f_n‖² + b·Σ_n KL_n, it is
    2aσ²_eff · (−Σ_n ELBO_n(σ²_eff)) + const with σ²_eff = b/(2a), equation (beta-mse):

    =========  ===========  ============
    MSE        KL           σ²_eff
    =========  ===========  ============
    mean       batchmean    β d / 2
    sum        sum          β / 2
    sum        batchmean    β / (2n)
    mean       sum          β n d / 2
    mean       mean         β d / (2q)
    sum        mean         β / (2nq)
    =========  ===========  ============

    Parameters
    ----------
    d : int
        Pixels per image.
    mse_reduction : {"mean", "sum"}
    kl_reduction : {"batchmean", "sum", "mean"}
    beta : float
        KL weight, > 0.
    batch_size : int, optional
        n; needed when the two reductions treat the batch differently.
    latent : int, optional
        q; needed for ``kl_reduction="mean"``.
    """
    if int(d) != d or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    if mse_reduction not in MSE_REDUCTIONS:
        raise ValueError(f"mse_reduction must be one of {MSE_REDUCTIONS}, got {mse_reduction!r}")
    if kl_reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl_reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
    beta = check_beta(beta)
    batch_mean = {"mean": True, "sum": False}[mse_reduction]
    kl_batch_mean = kl_reduction in ("batchmean", "mean")
    if batch_mean != kl_batch_mean and batch_size is None:
        raise ValueError(
            f"mse_reduction={mse_reduction!r} with kl_reduction={kl_reduction!r} weighs the batch "
            "differently in the two terms, so σ²_eff depends on the batch size: pass batch_size"
        )
    if kl_reduction == "mean" and latent is None:
        raise ValueError("kl_reduction='mean' averages over latents too: pass latent=q")
    n = 1 if batch_mean == kl_batch_mean else int(batch_size)  # n cancels when both average
    if n < 1 or (latent is not None and latent < 1):
        raise ValueError("batch_size and latent must be positive integers")
    a = 1.0 / (n * d) if mse_reduction == "mean" else 1.0
    b = {"batchmean": beta / n, "sum": beta, "mean": beta / (n * (latent or 1))}[kl_reduction]
    return b / (2.0 * a)


@dataclasses.dataclass(frozen=True)
class EquivalenceCheck:
    """ELBO_β(σ²) against β·ELBO_1(βσ²) on one random deep VAE (:func:`check_equivalence`).

    Attributes
    ----------
    sigma2, beta : float
    gradient_relative_error : float
        ‖∇ELBO_β(σ²) − β∇ELBO_1(βσ²)‖ / ‖∇ELBO_β(σ²)‖ over all weights.
    wrong_noise_relative_error : float
        The same with ELBO_1 at σ² instead of βσ² (best scalar multiple): how far off the
        comparison is when the noise is not rescaled.
    constant_measured : ndarray (m,)
        ELBO_β(σ²) − β·ELBO_1(βσ²) for m models with different weights and data.
    constant_formula : float
        :func:`beta_elbo_constant`.
    """

    sigma2: float
    beta: float
    gradient_relative_error: float
    wrong_noise_relative_error: float
    constant_measured: np.ndarray
    constant_formula: float


def check_equivalence(
    sigma2: float, beta: float, *, arch: Architecture | None = None, models: int = 3, n: int = 64
) -> EquivalenceCheck:
    """Evaluate both sides of (beta-equivalence) on random float64 deep VAEs and random data.

    Each model (:class:`lincollapse.deep_vae.GaussianVAE`, seeds 0..models−1) sees its own
    uniform data and one fixed reparameterisation noise, shared by both sides.
    """
    from lincollapse.deep_vae import GaussianVAE

    sigma2, beta = check_sigma2(sigma2), check_beta(beta)
    arch = arch or Architecture(data_dim=784, latent=20, encoder_hidden=(64,), decoder_hidden=(64,))
    constants, errors, wrong = [], [], []
    for seed in range(models):
        model = GaussianVAE(arch, seed=seed, dtype=torch.float64, device="cpu")
        generator = torch.Generator().manual_seed(1000 + seed)
        x = torch.rand(n, arch.data_dim, generator=generator, dtype=torch.float64)
        eps = torch.randn(n, arch.latent, generator=generator, dtype=torch.float64)
        parameters = list(model.parameters())
        mean, logvar = model.encode(x)
        recon = model.decode(mean + torch.exp(0.5 * logvar) * eps)
        sides = [
            gaussian_beta_elbo(x, recon, mean, logvar, sigma2, beta),
            gaussian_beta_elbo(x, recon, mean, logvar, beta * sigma2, 1.0),
            gaussian_beta_elbo(x, recon, mean, logvar, sigma2, 1.0),
        ]
        grads = [
            torch.cat(
                [g.reshape(-1) for g in torch.autograd.grad(side, parameters, retain_graph=True)]
            )
            for side in sides
        ]
        errors.append(float((grads[0] - beta * grads[1]).norm() / grads[0].norm()))
        scale = (grads[0] @ grads[2]) / (grads[2] @ grads[2])
        wrong.append(float((grads[0] - scale * grads[2]).norm() / grads[0].norm()))
        constants.append(float(sides[0].detach() - beta * sides[1].detach()))
    return EquivalenceCheck(
        sigma2,
        beta,
        max(errors),
        min(wrong),
        np.array(constants),
        beta_elbo_constant(arch.data_dim, sigma2, beta),
    )
