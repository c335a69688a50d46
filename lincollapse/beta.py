r"""β-weighted ELBOs, the effective observation noise βσ², and KL annealing.

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
Consequences implemented here:

- a squared-error loss with a KL term fixes σ² implicitly (:func:`loss_effective_sigma2`);
- the linear β-VAE collapses direction j exactly when λ_j ≤ βσ² (equation (beta-linear); the
  closed form and the trainer that checks it are in :mod:`lincollapse.linear_beta`);
- KL annealing (β rising from 0 to 1) raises the effective noise from 0 to σ²
  (:func:`linear_warmup`, :func:`train_annealed`, which also trains deep VAEs whose σ² is profiled
  out at its optimum, the mean squared error per pixel).

Conventions are those of :mod:`lincollapse.deep_vae` and :mod:`lincollapse.linear_vae`: ELBOs
in nats per image, reconstruction summed over pixels, KL summed over latents, averages over
images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from lincollapse import gaussian
from lincollapse.collapse import collapse_thresholds
from lincollapse.deep_vae import Architecture, BatchedGaussianVAE
from lincollapse.gaussian import LOG_2PI
from lincollapse.linear_beta import effective_sigma2
from lincollapse.training import maximise
from lincollapse.validation import check_beta, check_sigma2

# effective_sigma2 is lincollapse.linear_beta's, re-exported.
__all__ = [
    "AnnealedRuns",
    "EquivalenceCheck",
    "RunSpec",
    "beta_elbo_constant",
    "check_equivalence",
    "effective_sigma2",
    "gaussian_beta_elbo",
    "linear_warmup",
    "loss_effective_sigma2",
    "train_annealed",
]

MSE_REDUCTIONS = ("mean", "sum")
KL_REDUCTIONS = ("batchmean", "sum", "mean")
NOISE_MODES = ("fixed", "optimal")


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
        sigma2, beta, max(errors), min(wrong), np.array(constants),
        beta_elbo_constant(arch.data_dim, sigma2, beta),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# KL annealing in deep VAEs
# --------------------------------------------------------------------------------------------


def linear_warmup(warmup: int) -> Callable[[int], float]:
    """β of step t (1-based; t = 0 before training): min(1, t / warmup); 1 throughout if 0."""
    if int(warmup) != warmup or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer number of steps, got {warmup!r}")
    warmup = int(warmup)

    def beta(step: int) -> float:
        return 1.0 if warmup == 0 else min(1.0, step / warmup)

    return beta


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One deep-VAE run of :func:`train_annealed`.

    Attributes
    ----------
    sigma2 : float
        Observation noise (ignored when ``noise="optimal"``).
    warmup : int
        Steps of linear KL warm-up (0: β = 1 from the start).
    noise : {"fixed", "optimal"}
        ``"optimal"`` replaces σ² at every step by its maximiser, the mean squared error per
        pixel of the current single-sample reconstructions (lemma lem-deep-sigma2): the ELBO is
        profiled over σ², −(d/2)(1 + log 2π R/d) − KL.
    seed : int
        Initial weights and noise streams; runs with equal seeds start equal and see equal noise.
    """

    sigma2: float
    warmup: int = 0
    noise: str = "fixed"
    seed: int = 0

    def __post_init__(self) -> None:
        check_sigma2(self.sigma2)
        linear_warmup(self.warmup)
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {self.noise!r}")

    @property
    def label(self) -> str:
        if self.noise == "optimal":
            what = "σ² = MSE per pixel"
        else:
            what = f"σ² = {self.sigma2:g}" + (f", KL warm-up {self.warmup}" if self.warmup else "")
        return f"{what} (seed {self.seed})"


@dataclasses.dataclass
class AnnealedRuns:
    """What :func:`train_annealed` recorded.

    Attributes
    ----------
    specs : list of RunSpec
    steps : ndarray (k,)
        Record steps (0 = initialisation).
    elbo : ndarray (k, R)
        ELBO with β = 1 at the run's own σ² (σ²* for the optimal-noise runs), single sample with
        the evaluation noise, nats per image.
    beta : ndarray (k, R)
        β of the step just taken.
    effective_sigma2 : ndarray (k, R)
        βσ² (fixed noise) or the current optimal σ² (optimal noise).
    thresholds : ndarray (k, R, q)
        Per latent, the (1 − δ) order statistic of KL over the images
        (:func:`lincollapse.collapse.collapse_thresholds`).
    kl_mean : ndarray (k, R, q)
    seconds : float
    delta : float
    """

    specs: list[RunSpec]
    steps: np.ndarray
    elbo: np.ndarray
    beta: np.ndarray
    effective_sigma2: np.ndarray
    thresholds: np.ndarray
    kl_mean: np.ndarray
    seconds: float
    delta: float

    def collapsed_fraction(self, epsilon: float) -> np.ndarray:
        """Collapsed fraction at ``epsilon`` of every run at every record, (k, R)."""
        return (self.thresholds < epsilon).mean(axis=-1)

    def arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (for the results cache); :meth:`from_arrays` inverts it."""
        return {
            "sigma2": np.array([s.sigma2 for s in self.specs]),
            "warmup": np.array([s.warmup for s in self.specs]),
            "optimal": np.array([s.noise == "optimal" for s in self.specs]),
            "seed": np.array([s.seed for s in self.specs]),
            "steps": self.steps,
            "elbo": self.elbo,
            "beta": self.beta,
            "effective_sigma2": self.effective_sigma2,
            "thresholds": self.thresholds,
            "kl_mean": self.kl_mean,
            "seconds": np.array(self.seconds),
            "delta": np.array(self.delta),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> AnnealedRuns:
        specs = [
            RunSpec(float(s), int(w), "optimal" if o else "fixed", int(seed))
            for s, w, o, seed in zip(
                arrays["sigma2"], arrays["warmup"], arrays["optimal"], arrays["seed"], strict=True
            )
        ]
        return cls(
            specs, arrays["steps"], arrays["elbo"], arrays["beta"], arrays["effective_sigma2"],
            arrays["thresholds"], arrays["kl_mean"], float(arrays["seconds"]),
            float(arrays["delta"]),
        )  # fmt: skip


def train_annealed(
    x: np.ndarray | torch.Tensor,
    arch: Architecture,
    specs: Sequence[RunSpec],
    *,
    steps: int,
    lr: float = 1e-3,
    record_every: int = 50,
    delta: float = 0.01,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = "auto",
    progress: bool | None = None,
) -> AnnealedRuns:
    """Train the deep Gaussian VAE runs ``specs`` together (one batched model) with Adam.

    Run r maximises log N(x; f(z), σ_r²) − β_r(t)·KL with β_r = :func:`linear_warmup` of its
    warm-up (σ_r² replaced by the mean squared error per pixel for ``noise="optimal"``), on the
    full batch ``x`` (n, d), through :func:`lincollapse.training.maximise`. The model, its
    initial weights and its noise streams are :class:`lincollapse.deep_vae.BatchedGaussianVAE`'s.
    At each record (every ``record_every`` steps, step 0 and the last) the plain ELBO (β = 1),
    β, the effective noise and the collapse thresholds are recorded, from an evaluation with
    the evaluation noise stream (so recording never changes training).
    """
    specs = list(specs)
    if not specs:
        raise ValueError("need at least one run")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    model = BatchedGaussianVAE(
        arch, [s.sigma2 for s in specs], False, [s.seed for s in specs], dtype=dtype,
        device=device,
    )  # fmt: skip
    data = torch.tensor(np.asarray(x), dtype=dtype, device=model.device_)
    d = data.shape[-1]
    schedules = [linear_warmup(s.warmup) for s in specs]
    optimal = torch.tensor([s.noise == "optimal" for s in specs], device=model.device_)
    log_sigma2 = model.log_sigma2.detach()
    state = {"step": 0}
    stash: dict[str, torch.Tensor] = {}
    records: list[tuple[np.ndarray, ...]] = []

    def betas(step: int) -> torch.Tensor:
        return torch.tensor([b(step) for b in schedules], dtype=dtype, device=model.device_)

    def objective() -> torch.Tensor:
        training = torch.is_grad_enabled()
        if training:
            state["step"] += 1
        mean, logvar = model.encode(data)
        z = mean + torch.exp(0.5 * logvar) * model.draw_noise(mean.shape, mean)
        reconstruction = model.decode(z)
        squared = (data - reconstruction).pow(2).sum(-1).mean(-1)  # (R,) mean over images
        kl = gaussian.kl_to_prior(mean, torch.exp(logvar))  # (R, n, q)
        kl_total = kl.sum(-1).mean(-1)
        # Optimal runs plug in σ² = squared / d; its gradient term vanishes at the optimum.
        log_noise = torch.where(optimal, torch.log(squared / d), log_sigma2)
        squared_each = (data - reconstruction).pow(2).sum(-1)
        log_lik = gaussian.log_likelihood(squared_each, d, log_noise[:, None]).mean(-1)
        if training:
            return log_lik - betas(state["step"]) * kl_total
        stash.update(kl=kl, squared=squared)
        return log_lik - kl_total

    def record(step: int) -> None:
        beta = betas(step)
        noise = torch.where(optimal, stash["squared"] / d, beta * torch.exp(log_sigma2))
        records.append(
            (
                collapse_thresholds(stash["kl"], delta),
                stash["kl"].mean(-2).double().cpu().numpy(),
                beta.double().cpu().numpy(),
                noise.double().cpu().numpy(),
            )
        )

    history = maximise(
        objective, model.parameters(), steps=steps, lr=lr, record_every=record_every,
        name="deep VAE (KL annealing)", run_names=[s.label for s in specs], progress=progress,
        on_record=record,
    )  # fmt: skip
    return AnnealedRuns(
        specs=specs,
        steps=history.steps,
        elbo=np.asarray(history.values, dtype=np.float64).reshape(history.steps.size, -1),
        beta=np.stack([r[2] for r in records]),
        effective_sigma2=np.stack([r[3] for r in records]),
        thresholds=np.stack([r[0] for r in records]),
        kl_mean=np.stack([r[1] for r in records]),
        seconds=history.seconds,
        delta=delta,
    )
