"""Training a linear-decoder VAE (:mod:`lincollapse.linear_decoder_vae`): :func:`train_vae`.

:func:`train_vae` is the one training function of the chapters *Stochastic vs analytic ELBO*
and *Linear decoder, varying encoders*; it runs :func:`lincollapse.training.maximise`
(Adam, full batch) and records the analytic ELBO of the current parameters (float64, nats per
image), whichever estimator and arithmetic train them.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from lincollapse import ppca
from lincollapse.data import covariance_eigenvalues
from lincollapse.linear_decoder_vae import (
    DTYPE,
    LinearDecoderVAE,
    as_points,
    check_estimator,
    make_vae,
)
from lincollapse.training import History, Recorder, maximise

__all__ = ["EncoderTraining", "first_step_within", "train_vae"]


@dataclasses.dataclass
class EncoderTraining:
    """One training run of :func:`train_vae`.

    Attributes
    ----------
    model : LinearDecoderVAE
        The trained model.
    steps : ndarray of shape (k,)
        Adam steps at which the ELBO was recorded (0 = initialisation).
    elbo : ndarray of shape (k,)
        **Analytic** ELBO (nats per image) of the parameters at those steps, on all images,
        whatever estimator trained them.
    objective : ndarray of shape (k,)
        What the optimiser's estimator gave at those steps (equal to ``elbo`` for
        ``"analytic"``; a fresh single-sample estimate for ``"sample"``).
    optimum : float
        ℓ*(q), pPCA's maximum average log-likelihood (ppca-max-loglik): the ELBO's global
        maximum for every encoder kind (σ² learned).
    kind, estimator : str
    seconds : float
        Wall time of training.
    """

    model: LinearDecoderVAE
    steps: np.ndarray
    elbo: np.ndarray
    objective: np.ndarray
    optimum: float
    kind: str
    estimator: str
    seconds: float

    @property
    def gap(self) -> np.ndarray:
        """optimum − ELBO along training (nats per image)."""
        return self.optimum - self.elbo

    @property
    def final_gap(self) -> float:
        return float(self.gap[-1])

    def steps_to(self, tolerance: float) -> int | None:
        """First recorded step with a gap ≤ ``tolerance`` nats, or None if never reached."""
        return first_step_within(self.steps, self.gap, tolerance)


def first_step_within(steps: np.ndarray, gap: np.ndarray, tolerance: float) -> int | None:
    """First entry of ``steps`` where ``gap ≤ tolerance``, or None."""
    hits = np.flatnonzero(np.asarray(gap) <= tolerance)
    return int(np.asarray(steps)[hits[0]]) if hits.size else None


def train_vae(
    x: np.ndarray | torch.Tensor,
    q: int,
    *,
    kind: str = "linear",
    estimator: str = "analytic",
    steps: int = 1000,
    lr: float = 1e-3,
    seed: int = 0,
    hidden: Sequence[int] | None = None,
    sigma2_init: float = 1.0,
    record_every: int = 25,
    noise_seed: int | None = None,
    checkpoints: Sequence[int] = (),
    on_checkpoint: Callable[[int, LinearDecoderVAE], None] | None = None,
    dtype: torch.dtype = torch.float64,
    lr_schedule: Callable[[int], float] | None = None,
    eigenvalues: np.ndarray | None = None,
    progress: bool | None = None,
) -> EncoderTraining:
    """Train a linear-decoder VAE with Adam on the full batch (σ² learned).

    The objective is :func:`elbo` with ``estimator`` (a fresh ξ per image and step for
    ``"sample"``, drawn from a generator seeded by ``noise_seed``, default ``seed + 10_000``);
    the **analytic** ELBO of the current parameters is recorded every ``record_every`` steps,
    so curves of both estimators are comparable. Runs with the same ``seed`` start from the
    same parameters whatever the estimator.

    Parameters
    ----------
    x : array of shape (n, d)
    q : int
        Latent dimension, 1 ≤ q < numerical rank of the sample covariance.
    kind : {"linear", "deep-linear", "mlp"}
    estimator : {"analytic", "sample"}
    steps : int
    lr : float
        Adam's learning rate (constant).
    seed : int
        Initialisation (:func:`make_vae`).
    hidden : sequence of int, optional
        Hidden widths of the amortised encoders.
    sigma2_init : float, default 1.0
    record_every : int, default 25
    checkpoints : sequence of int
        Steps (multiples of ``record_every``, or 0) at which ``on_checkpoint(step, model)`` is
        called with the float64 model, under ``torch.no_grad()``.
    dtype : torch.dtype, default float64
        Arithmetic of the optimisation. ``torch.float32`` is about four times faster on a CPU;
        whatever it is, the model is initialised in float64 and every recorded ELBO, the
        returned model and the optimum are float64 (the trained parameters are copied into a
        float64 model to be evaluated).
    lr_schedule : callable (step) -> float, optional
        Multiplies ``lr`` at each step (1-based), as in :func:`lincollapse.training.maximise`;
        default constant.
    eigenvalues : ndarray of shape (d,), optional
        Eigenvalues of the sample covariance of ``x`` (for the optimum line); computed when
        omitted. Experiments training many runs on the same images pass them once.
    progress : bool, optional
        Progress bar (default: only for a person watching; never under CI).

    Returns
    -------
    EncoderTraining
    """
    check_estimator(estimator)
    x = as_points(x)
    if eigenvalues is None:
        eigenvalues = covariance_eigenvalues(x)
    optimum = ppca.max_log_likelihood(eigenvalues, q)  # checks q < rank
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    reference = make_vae(kind, x, q, seed=seed, hidden=hidden, sigma2=sigma2_init)
    model = reference if dtype == DTYPE else copy.deepcopy(reference).to(dtype)
    x_train = x.to(dtype)
    generator = torch.Generator().manual_seed(seed + 10_000 if noise_seed is None else noise_seed)
    wanted = set(int(c) for c in checkpoints)

    def objective() -> torch.Tensor:
        return model.objective(x_train, estimator, generator)

    def measure(step: int) -> dict[str, float]:
        if model is not reference and step > 0:
            reference.load_state_dict(model.state_dict())  # copies into float64
        elbo = float(reference.objective(x, "analytic", None))
        if step in wanted and on_checkpoint is not None:
            on_checkpoint(step, reference)
        return {"elbo": elbo}

    recorder = Recorder(measure)

    start = time.perf_counter()
    history: History = maximise(
        objective,
        model.parameters(),
        steps=steps,
        optimiser="adam",
        lr=lr,
        record_every=record_every,
        name=f"{kind} encoder, {estimator} ELBO, seed {seed}",
        progress=progress,
        lr_schedule=lr_schedule,
        on_record=recorder,
    )
    return EncoderTraining(
        model=reference,
        steps=history.steps,
        elbo=recorder.array("elbo"),
        objective=np.asarray(history.values, dtype=np.float64),
        optimum=float(optimum),
        kind=kind,
        estimator=estimator,
        seconds=time.perf_counter() - start,
    )
