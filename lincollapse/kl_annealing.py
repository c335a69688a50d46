"""KL annealing in deep Gaussian VAEs: β rising from 0 to 1, or σ² profiled out at its optimum.

Chapter *β, σ² and KL annealing*. With a β-weighted ELBO the effective observation noise is βσ²
(:mod:`lincollapse.beta_elbo`), so a warm-up β(t) = min(1, t / warm-up) (:func:`linear_warmup`)
raises it from 0 to σ² during training. :func:`train_annealed` trains R such deep VAEs together
(:class:`lincollapse.deep_vae.BatchedGaussianVAE`), each with its σ², warm-up and seed, or with
σ² replaced at every step by its maximiser, the mean squared error per pixel; it records the
ELBO, β, the effective noise and the collapse thresholds (:class:`AnnealedRuns`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lincollapse import gaussian
from lincollapse.collapse import collapse_thresholds
from lincollapse.deep_vae import Architecture, BatchedGaussianVAE
from lincollapse.training import Recorder
from lincollapse.training_state import CHECKPOINT_EVERY, load_state, maximise_in_chunks
from lincollapse.validation import check_sigma2

__all__ = ["NOISE_MODES", "AnnealedRuns", "RunSpec", "linear_warmup", "train_annealed"]

NOISE_MODES = ("fixed", "optimal")


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
            specs,
            arrays["steps"],
            arrays["elbo"],
            arrays["beta"],
            arrays["effective_sigma2"],
            arrays["thresholds"],
            arrays["kl_mean"],
            float(arrays["seconds"]),
            float(arrays["delta"]),
        )


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
    checkpoint: Path | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> AnnealedRuns:
    """Train the deep Gaussian VAE runs ``specs`` together (one batched model) with Adam.

    Run r maximises log N(x; f(z), σ_r²) − β_r(t)·KL with β_r = :func:`linear_warmup` of its
    warm-up (σ_r² replaced by the mean squared error per pixel for ``noise="optimal"``), on the
    full batch ``x`` (n, d), through :func:`lincollapse.training.maximise`. The model, its
    initial weights and its noise streams are :class:`lincollapse.deep_vae.BatchedGaussianVAE`'s.
    At each record (every ``record_every`` steps, step 0 and the last) the plain ELBO (β = 1),
    β, the effective noise and the collapse thresholds are recorded, from an evaluation with
    the evaluation noise stream (so recording never changes training). With ``checkpoint`` (a
    file path) the state is saved there every few hundred steps and an interrupted training
    resumes from it to the same numbers (:func:`lincollapse.training_state.maximise_in_chunks`).
    """
    specs = list(specs)
    if not specs:
        raise ValueError("need at least one run")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    model = BatchedGaussianVAE(
        arch,
        [s.sigma2 for s in specs],
        False,
        [s.seed for s in specs],
        dtype=dtype,
        device=device,
    )
    data = torch.tensor(np.asarray(x), dtype=dtype, device=model.device_)
    d = data.shape[-1]
    schedules = [linear_warmup(s.warmup) for s in specs]
    optimal = torch.tensor([s.noise == "optimal" for s in specs], device=model.device_)
    log_sigma2 = model.log_sigma2.detach()
    state = {"step": 0}
    stash: dict[str, torch.Tensor] = {}

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

    def measure(step: int) -> dict[str, np.ndarray]:
        beta = betas(step)
        noise = torch.where(optimal, stash["squared"] / d, beta * torch.exp(log_sigma2))
        return {
            "thresholds": collapse_thresholds(stash["kl"], delta),
            "kl_mean": stash["kl"].mean(-2).double().cpu().numpy(),
            "beta": beta.double().cpu().numpy(),
            "effective_sigma2": noise.double().cpu().numpy(),
        }

    recorder = Recorder(measure)
    recorded_steps, values, seconds = maximise_in_chunks(
        objective,
        model,
        recorder,
        steps=steps,
        record_every=record_every,
        checkpoint=checkpoint,
        saved=load_state(checkpoint, steps) if checkpoint is not None else None,
        checkpoint_every=checkpoint_every,
        counters=state,
        lr=lr,
        name="deep VAE (KL annealing)",
        run_names=[s.label for s in specs],
        progress=progress,
    )
    return AnnealedRuns(
        specs=specs,
        steps=recorded_steps,
        elbo=values,
        beta=recorder.stack("beta"),
        effective_sigma2=recorder.stack("effective_sigma2"),
        thresholds=recorder.stack("thresholds"),
        kl_mean=recorder.stack("kl_mean"),
        seconds=seconds,
        delta=delta,
    )
