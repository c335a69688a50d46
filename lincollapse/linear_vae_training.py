"""Training the linear VAE: the rotation-aided fast path and training that does not know the answer.

Chapter *The linear VAE*. :func:`train_linear_vae` maximises the ELBO of
:class:`lincollapse.linear_vae.LinearVAE` in the eigenbasis of S, with the encoder in closed form
or learned, and rotates the decoder's columns onto principal directions: a fast path that builds
the orthogonality in. :func:`ascend_elbo` is the chapter's evidence: gradient steps from a seeded
random start in pixel coordinates, with no eigendecomposition and no rotation, recording the
ELBO, σ², the CPU time and the Gram ratio along the way (:class:`TrainingTrace`). Both run
:func:`lincollapse.training.maximise`. Everything is float64.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
from torch import nn

from lincollapse import gaussian, ppca, validation
from lincollapse.data import numerical_rank
from lincollapse.linear_vae import (
    LinearVAE,
    leading_gram,
    off_diagonal_ratio,
    rotate_model,
)
from lincollapse.ppca import DataSpectrum
from lincollapse.profiled_elbo import ProfiledELBO
from lincollapse.training import History, Recorder, concatenate_histories, maximise
from lincollapse.training_state import load_module_arrays, module_arrays

__all__ = [
    "ENCODERS",
    "OPTIMISERS",
    "AscentTraining",
    "LinearVAETraining",
    "TrainingTrace",
    "ascend_elbo",
    "covariance_rank",
    "train_linear_vae",
]

OPTIMISERS = ("lbfgs", "adam")
ENCODERS = ("optimal", "learned")


@dataclasses.dataclass
class LinearVAETraining:
    """A trained linear VAE and how it compares with the exact optimum.

    Attributes
    ----------
    model : LinearVAE
        In the pixel basis, with ``mean`` the sample mean.
    history : History
        ELBO (nats per image) recorded during training; ``history.evaluations`` counts ELBO
        evaluations (each with its gradient).
    elbo : float
        Final analytic ELBO of ``model``, re-evaluated in float64 from the full covariance S.
    optimum : float
        The best achievable value: ℓ*(q) (ppca-max-loglik) when σ² is learned; the maximum
        log-likelihood over W at the fixed σ² otherwise.
    gap : float
        ``optimum − elbo`` (≥ 0 up to round-off), nats per image.
    q : int
    optimiser : str
        ``"lbfgs"`` or ``"adam"``.
    encoder : str
        ``"optimal"`` or ``"learned"`` (see :func:`train_linear_vae`).
    steps : int
        Optimiser steps taken (all phases).
    seconds : float
        Wall time of the whole training, set-up included.
    """

    model: LinearVAE
    history: History
    elbo: float
    optimum: float
    gap: float
    q: int
    optimiser: str
    encoder: str
    steps: int
    seconds: float

    @property
    def evaluations(self) -> int:
        """ELBO-and-gradient evaluations."""
        return self.history.evaluations


def train_linear_vae(
    data: np.ndarray | DataSpectrum,
    q: int,
    *,
    optimiser: str = "lbfgs",
    encoder: str | None = None,
    steps: int | None = None,
    lr: float = 1e-3,
    seed: int = 0,
    learn_sigma2: bool = True,
    sigma2_init: float = 1.0,
    init_scale: float = 1e-2,
    rotate_every: int = 20,
    polish_steps: int = 10,
    tolerance: float | None = 1e-6,
    record_every: int | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> LinearVAETraining:
    """Train a linear VAE by maximising its analytic ELBO (lvae-elbo) on the full batch.

    Two ways of treating the encoder:

    ``encoder="learned"`` (the paper's)
        W, V, log D and log σ² are all trained jointly by ``optimiser``. With Adam this runs in
        the pixel basis (what the paper did; each step costs O(q d²)); with L-BFGS it runs in
        the eigenbasis of S (L-BFGS is invariant to that orthogonal change of coordinates, and
        each step costs O(d q²)).
    ``encoder="optimal"`` (default for L-BFGS)
        Coordinate ascent on the same ELBO: the encoder is kept at its exact optimum for the
        current decoder (lvae-optimal-encoder), and the optimiser maximises the resulting ELBO*
        (lvae-elbo-gap) over (W, σ²). W is trained in the eigenbasis of S, rescaled row by row by
        (λ_k + c)^{1/2} with c = 1 % of the mean eigenvalue (a fixed linear change of variables:
        a preconditioner, not a constraint). Every ``rotate_every`` steps the latent space is
        rotated so that WᵀW is diagonal — an exact maximisation of the ELBO over the rotation
        W → WR (log p does not change, the gap (lvae-elbo-gap) drops to 0). The ELBO's weak
        preference among rotations is what makes plain gradient ascent slow. Rows of W along
        null directions of S (λ_k = 0) are set to zero once, an exact ascent step (they only
        add non-negative penalties), and stay there. Finally
        ``polish_steps`` joint L-BFGS steps over all four parameters continue from there.

    Nothing is copied from the closed form: W starts at a seeded random matrix and every step
    increases the ELBO; the reported ELBO is re-evaluated from the final parameters.

    Parameters
    ----------
    data : ndarray of shape (n, d) or DataSpectrum
    q : int
        Latent dimension, 0 ≤ q < d (and q < rank S when σ² is learned).
    optimiser : {"lbfgs", "adam"}
    encoder : {"optimal", "learned"}, optional
        Default ``"optimal"`` for L-BFGS, ``"learned"`` for Adam.
    steps : int, optional
        Optimiser steps (default 400 for L-BFGS, 12,000 for Adam, the official notebook's).
    lr : float, default 1e-3
        Adam's learning rate.
    seed : int, default 0
        Seed of the random initialisation of W and V.
    learn_sigma2 : bool, default True
    sigma2_init : float, default 1.0
        Initial σ², or the fixed σ² when ``learn_sigma2=False``.
    init_scale : float, default 0.01
        Standard deviation of the initial entries of W and V.
    rotate_every : int, default 20
        Steps between rotations (``encoder="optimal"``).
    polish_steps : int, default 10
        Joint L-BFGS steps after the ``"optimal"`` phase (0 to skip).
    tolerance : float or None, default 1e-6
        Stop when a recording window improves the ELBO by less than this (nats per image); for
        ``encoder="optimal"``, when two consecutive rounds of ``rotate_every`` steps each do.
    record_every : int, optional
        Steps between records of the ELBO (default: ``rotate_every`` for ``"optimal"``,
        ``max(1, steps // 200)`` otherwise).
    device : torch device, optional
    progress : bool, optional
        Progress bars (default: only on an interactive terminal).

    Returns
    -------
    LinearVAETraining

    Raises
    ------
    ppca.RankDeficientError
        σ² learned and q at or above the numerical rank of S (the optimum is +∞).
    """
    start = time.perf_counter()
    validation.check_choice(optimiser, OPTIMISERS, "optimiser")
    encoder = encoder or ("optimal" if optimiser == "lbfgs" else "learned")
    validation.check_choice(encoder, ENCODERS, "encoder")
    spectrum = data if isinstance(data, DataSpectrum) else ppca.data_spectrum(data)
    d = spectrum.d
    q = validation.check_q(q, spectrum.eigenvalues)
    sigma2_init = validation.check_sigma2(sigma2_init)
    if learn_sigma2:
        optimum = ppca.max_log_likelihood(spectrum, q)  # raises RankDeficientError for q >= r
    else:
        best_W = ppca.fixed_sigma2_maximiser(spectrum, q, sigma2_init)
        optimum = ppca.average_log_likelihood(spectrum, best_W, sigma2_init)
    steps = (400 if optimiser == "lbfgs" else 12_000) if steps is None else int(steps)
    if steps < 0 or rotate_every < 1 or polish_steps < 0:
        raise ValueError("steps and polish_steps must be >= 0 and rotate_every >= 1")
    options = dict(optimiser=optimiser, lr=lr, tolerance=tolerance, progress=progress)

    model = LinearVAE(
        d,
        q,
        sigma2=sigma2_init,
        learn_sigma2=learn_sigma2,
        init_scale=init_scale,
        seed=seed,
        device=device,
    )
    eigenvalues = torch.as_tensor(spectrum.eigenvalues, dtype=torch.float64, device=device)
    eigenvectors = torch.as_tensor(spectrum.eigenvectors, dtype=torch.float64, device=device)
    histories: list[History] = []
    trainable = _trainable(model.parameters())
    if encoder == "learned" and optimiser == "adam":
        # The paper's set-up: pixel basis, full covariance.
        covariance = torch.as_tensor(spectrum.covariance, dtype=torch.float64, device=device)
        histories.append(
            _run(
                lambda: model.elbo(covariance),
                trainable,
                steps=steps,
                record_every=record_every or max(1, steps // 200),
                name=f"linear VAE q={q}",
                **options,
            )
        )
        model.mean.copy_(torch.as_tensor(spectrum.mean, dtype=torch.float64))
    else:
        rotate_model(model, eigenvectors.T)  # into the eigenbasis: S = diag(λ)
        if encoder == "learned":
            histories.append(
                _run(
                    lambda: model.elbo(eigenvalues),
                    trainable,
                    steps=steps,
                    record_every=record_every or max(1, steps // 200),
                    name=f"linear VAE q={q}",
                    **options,
                )
            )
        else:
            histories.extend(
                _train_optimal_encoder(
                    model,
                    eigenvalues,
                    steps,
                    rotate_every,
                    record_every or rotate_every,
                    options,
                )
            )
            if polish_steps and optimiser == "lbfgs" and trainable:
                histories.append(
                    _run(
                        lambda: model.elbo(eigenvalues),
                        trainable,
                        steps=polish_steps,
                        record_every=polish_steps,
                        name=f"linear VAE q={q} (joint)",
                        **options,
                    )
                )
        rotate_model(model, eigenvectors)  # back to pixels
        model.mean.copy_(torch.as_tensor(spectrum.mean, dtype=torch.float64))

    history = concatenate_histories(histories)
    covariance = torch.as_tensor(spectrum.covariance, dtype=torch.float64, device=device)
    with torch.no_grad():
        elbo = float(model.elbo(covariance))
    return LinearVAETraining(
        model=model,
        history=history,
        elbo=elbo,
        optimum=float(optimum),
        gap=float(optimum) - elbo,
        q=q,
        optimiser=optimiser,
        encoder=encoder,
        steps=int(sum(h.steps[-1] for h in histories)),
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------------------------
# Training that does not know the answer
# --------------------------------------------------------------------------------------------


def covariance_rank(covariance: np.ndarray) -> int:
    """Numerical rank of a positive semi-definite matrix by pivoted Cholesky (LAPACK ``dpstrf``).

    Pivots below d · ε_machine · max_k S_kk count as zero. No eigendecomposition: this is the
    rank check of :func:`ascend_elbo`.
    """
    from scipy.linalg import lapack

    covariance = np.array(covariance, dtype=np.float64, order="F")
    if covariance.ndim != 2 or covariance.shape[0] != covariance.shape[1]:
        raise ValueError(f"covariance must be a square matrix, got shape {covariance.shape}")
    if not covariance.any():
        return 0
    _, _, rank, info = lapack.dpstrf(covariance, lower=1, tol=-1.0)
    if info < 0:  # pragma: no cover - only for invalid arguments
        raise ValueError(f"dpstrf failed with info={info}")
    return int(rank)


@dataclasses.dataclass(frozen=True)
class TrainingTrace:
    """What :func:`ascend_elbo` recorded, every ``record_every`` optimiser steps (and step 0).

    Attributes
    ----------
    steps : ndarray of shape (k,)
        Optimiser steps at each record.
    seconds : ndarray of shape (k,)
        Wall time since training began (recording included).
    cpu_seconds : ndarray of shape (k,)
        CPU time of the process since training began: the wall time one free core would take
        with one thread, whatever else runs on the machine.
    elbo : ndarray of shape (k,)
        The objective, nats per image: ELBO*(W, σ²) (lvae-elbo-gap) — the ELBO with the optimal
        encoder — for ``encoder="optimal"``; the ELBO (lvae-elbo) for ``encoder="learned"``.
    gram_ratio : ndarray of shape (k,)
        :func:`off_diagonal_ratio` of :func:`leading_gram` (W, ``block``).
    sigma2 : ndarray of shape (k,)
        The decoder noise variance σ².
    """

    steps: np.ndarray
    seconds: np.ndarray
    cpu_seconds: np.ndarray
    elbo: np.ndarray
    gram_ratio: np.ndarray
    sigma2: np.ndarray


@dataclasses.dataclass
class AscentTraining:
    """A linear VAE trained by :func:`ascend_elbo`.

    Attributes
    ----------
    model : LinearVAE
        In the pixel basis, with ``mean`` the sample mean.
    elbo : float
        Analytic ELBO (lvae-elbo) of ``model``, re-evaluated in float64 from the full (d, d)
        covariance S — not from the objective the optimiser saw.
    trace : TrainingTrace
    q : int
    encoder, optimiser : str
    steps, evaluations : int
        Optimiser steps, and objective evaluations (each with its gradient).
    seconds, cpu_seconds : float
        Wall time and process CPU time, set-up and final evaluation included.
    block : int
        Size of the Gram block behind ``trace.gram_ratio``.
    """

    model: LinearVAE
    elbo: float
    trace: TrainingTrace
    q: int
    encoder: str
    optimiser: str
    steps: int
    evaluations: int
    seconds: float
    cpu_seconds: float
    block: int

    _SCALARS = (
        "elbo",
        "q",
        "encoder",
        "optimiser",
        "steps",
        "evaluations",
        "seconds",
        "cpu_seconds",
        "block",
    )

    def arrays(self) -> dict[str, np.ndarray]:
        """The run as named arrays (the results cache's form; :meth:`from_arrays` inverts it)."""
        model = module_arrays(self.model, "model:")
        trace = {
            f"trace:{field.name}": np.asarray(getattr(self.trace, field.name))
            for field in dataclasses.fields(self.trace)
        }
        scalars = {name: np.asarray(getattr(self, name)) for name in self._SCALARS}
        learn = np.asarray(self.model.log_sigma2.requires_grad)
        return model | trace | scalars | {"learn_sigma2": learn}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> AscentTraining:
        """The run that :meth:`arrays` wrote (the model in float64 on the CPU)."""
        d, q = arrays["model:W"].shape
        model = LinearVAE(d, q, learn_sigma2=bool(arrays["learn_sigma2"]))
        load_module_arrays(model, arrays, "model:")
        trace = TrainingTrace(
            **{f.name: arrays[f"trace:{f.name}"] for f in dataclasses.fields(TrainingTrace)}
        )
        scalars = {name: arrays[name].item() for name in cls._SCALARS}
        return cls(model=model, trace=trace, **scalars)

    def gram(self, block: int | None = None) -> np.ndarray:
        """:func:`leading_gram` of the trained W (default: the ``block`` of the trace)."""
        return leading_gram(self.model.W, self.block if block is None else block)

    @property
    def gram_ratio(self) -> float:
        """Final off-diagonal/diagonal ratio of the leading Gram block."""
        return off_diagonal_ratio(self.gram())


def ascend_elbo(
    data: np.ndarray,
    q: int,
    *,
    encoder: str = "optimal",
    optimiser: str = "lbfgs",
    steps: int | None = None,
    lr: float = 1e-3,
    seed: int = 0,
    learn_sigma2: bool = True,
    sigma2_init: float = 1.0,
    init_scale: float = 1e-2,
    tolerance: float | None = None,
    record_every: int | None = None,
    block: int = 30,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> AscentTraining:
    """Maximise the linear VAE's ELBO by gradient steps from a random start — nothing else.

    No eigendecomposition, no singular value decomposition and no rotation of W anywhere: the
    training sees the sample mean and covariance S of ``data`` in pixel coordinates, a seeded
    random W (entries N(0, ``init_scale``²)) and σ² = ``sigma2_init``, and follows the
    gradient. It makes the chapter *The linear VAE*'s evidence that the ELBO's maximum is
    pPCA's, with orthogonal columns; the rotation-aided :func:`train_linear_vae` is a fast path
    that builds the orthogonality in and is never that evidence.

    ``encoder="optimal"`` (coordinate ascent on the ELBO)
        The encoder is profiled out: for the current decoder it is the closed-form optimum
        (lvae-optimal-encoder), V* = M⁻¹Wᵀ, D* = σ² diag(M)⁻¹ with M = WᵀW + σ²I, which needs
        a Cholesky factor of M only; the optimiser maximises the resulting ELBO*(W, σ²)
        (lvae-elbo-gap), with its hand-written gradient
        (:class:`~lincollapse.profiled_elbo.ProfiledELBO`, P = S, G = I).
        Each evaluation costs O(k² q), k the number of non-constant pixels.
    ``encoder="learned"`` (the paper's)
        All of W, V, log D and log σ² are trained jointly on the ELBO (lvae-elbo), by autograd.

    Rows of W (and columns of V) at pixels with zero sample variance (up to round-off: at most
    d · ε_machine times the largest) are held at zero: they
    only add non-negative penalties to the ELBO (through tr(W D Wᵀ) and tr(WᵀW V S Vᵀ)), so
    that is an exact ascent step, and it uses the pixel variances only.

    Parameters
    ----------
    data : ndarray of shape (n, d)
        The data themselves (not a :class:`~lincollapse.ppca.DataSpectrum`, which carries the
        eigendecomposition of S).
    q : int
        Latent dimension, 0 ≤ q < number of non-constant pixels (and q < rank S when σ² is
        learned: the ELBO is unbounded otherwise).
    encoder : {"optimal", "learned"}
    optimiser : {"lbfgs", "adam"}
        Full-batch L-BFGS with strong-Wolfe line search, or Adam with learning rate ``lr``.
    steps : int, optional
        Optimiser steps (default 3,000 for L-BFGS, 12,000 for Adam, the official notebook's).
    lr : float, default 1e-3
        Adam's learning rate (the paper's).
    seed : int, default 0
        Seed of the random initialisation of W (and V).
    learn_sigma2 : bool, default True
    sigma2_init : float, default 1.0
        Initial σ² (the official notebook's), or the fixed σ² when ``learn_sigma2=False``.
    init_scale : float, default 0.01
    tolerance : float, optional
        Stop when a recording window improves the objective by less than this (nats per image).
    record_every : int, optional
        Steps between records of the trace (default 25 for L-BFGS, 100 for Adam).
    block : int, default 30
        Size of the leading Gram block whose off-diagonal ratio is recorded.
    device : torch device, optional
    progress : bool, optional

    Returns
    -------
    AscentTraining

    Raises
    ------
    ppca.RankDeficientError
        σ² learned and q at or above the rank of S (:func:`covariance_rank`).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    validation.check_choice(optimiser, OPTIMISERS, "optimiser")
    validation.check_choice(encoder, ENCODERS, "encoder")
    if isinstance(data, DataSpectrum):
        raise TypeError(
            "ascend_elbo takes the data (n, d), not a DataSpectrum: it never uses the "
            "eigendecomposition of S"
        )
    mean, covariance = ppca.sample_moments(data)
    d = covariance.shape[0]
    variances = np.diag(covariance)
    support = variances > numerical_rank(variances)[1]  # the non-constant pixels
    k = int(support.sum())
    if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 0 <= q < k:
        raise ValueError(
            f"q must be an integer with 0 <= q < {k} (the number of non-constant coordinates), "
            f"got {q!r}"
        )
    q = int(q)
    sigma2_init = validation.check_sigma2(sigma2_init)
    if learn_sigma2 and q >= (rank := covariance_rank(covariance)):
        raise ppca.RankDeficientError(
            f"q={q} is at or above the numerical rank r={rank} of the sample covariance; the "
            "ELBO grows without bound as σ² → 0 — choose q < r or fix σ²"
        )
    steps = (3000 if optimiser == "lbfgs" else 12_000) if steps is None else int(steps)
    record_every = record_every or (25 if optimiser == "lbfgs" else 100)
    if steps < 0 or record_every < 1 or block < 1:
        raise ValueError("steps must be >= 0, record_every and block >= 1")

    covariance_k = torch.as_tensor(covariance[np.ix_(support, support)], device=device)
    trace_S = float(np.trace(covariance))
    model_k = LinearVAE(
        k,
        q,
        sigma2=sigma2_init,
        learn_sigma2=learn_sigma2,
        init_scale=init_scale,
        seed=seed,
        device=device,
    )
    if encoder == "optimal":

        def objective() -> torch.Tensor:  # (lvae-elbo-gap): ELBO with the optimal encoder
            return ProfiledELBO.apply(model_k.W, model_k.log_sigma2, None, covariance_k, trace_S, d)

        parameters = _trainable([model_k.W, model_k.log_sigma2])
    else:

        def objective() -> torch.Tensor:  # (lvae-elbo), plus the d − k constant pixels
            constant_pixels = gaussian.log_likelihood(0.0, d - k, model_k.log_sigma2)
            return model_k.elbo(covariance_k) + constant_pixels

        parameters = _trainable(model_k.parameters())

    clock, cpu_clock = time.perf_counter(), time.process_time()

    def measure(step: int) -> dict[str, float]:
        return {
            "seconds": time.perf_counter() - clock,
            "cpu_seconds": time.process_time() - cpu_clock,
            "gram_ratio": off_diagonal_ratio(leading_gram(model_k.W, block)),
            "sigma2": float(model_k.sigma2),
        }

    on_record = Recorder(measure)

    if parameters and steps > 0:
        history = maximise(
            objective,
            parameters,
            steps=steps,
            optimiser=optimiser,
            lr=lr,
            record_every=record_every,
            name=f"linear VAE q={q} ({encoder}, {optimiser})",
            tolerance=tolerance,
            progress=progress,
            on_record=on_record,
        )
    else:
        history = _run(objective, parameters, steps=0)
        on_record(0)

    model = LinearVAE(d, q, mean=mean, sigma2=sigma2_init, learn_sigma2=learn_sigma2, device=device)
    mask = torch.as_tensor(support, device=model.W.device)
    with torch.no_grad():
        model.W.zero_()
        model.W[mask] = model_k.W
        model.log_sigma2.copy_(model_k.log_sigma2)
        if encoder == "learned":
            model.V.zero_()
            model.V[:, mask] = model_k.V
            model.log_D.copy_(model_k.log_D)
    if encoder == "optimal":
        model.set_optimal_encoder()
    with torch.no_grad():
        elbo = float(model.elbo(torch.as_tensor(covariance, device=model.W.device)))
    trace = TrainingTrace(
        steps=np.asarray(history.steps, dtype=np.int64),
        seconds=on_record.array("seconds", np.float64),
        cpu_seconds=on_record.array("cpu_seconds", np.float64),
        elbo=np.asarray(history.values, dtype=np.float64),
        gram_ratio=on_record.array("gram_ratio", np.float64),
        sigma2=on_record.array("sigma2", np.float64),
    )
    return AscentTraining(
        model=model,
        elbo=elbo,
        trace=trace,
        q=q,
        encoder=encoder,
        optimiser=optimiser,
        steps=int(history.steps[-1]),
        evaluations=int(history.evaluations),
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
        block=block,
    )


def _train_optimal_encoder(
    model: LinearVAE,
    eigenvalues: torch.Tensor,
    steps: int,
    rotate_every: int,
    record_every: int,
    options: dict,
) -> list[History]:
    """Maximise ELBO*(W, σ²) in whitened eigen-coordinates, rotating the latents between rounds.

    ``model`` is in the eigenbasis of S; on return its encoder is the optimal one.
    """
    q, d = model.q, model.d
    # Rows of W along null directions of S (λ_k = 0: constant pixels, or d > n) only add
    # non-negative penalties to the ELBO — tr(W D Wᵀ) and tr(WᵀW V S Vᵀ) — so setting them to
    # zero is an exact ascent step, and they stay zero: optimise the other rows only.
    support = eigenvalues > numerical_rank(eigenvalues.cpu().numpy())[1]
    active = eigenvalues[support]
    floor = 0.01 * float(eigenvalues.mean())
    row_scale = torch.sqrt(active + floor)[:, None]  # W = row_scale * W_hat
    # The seeded Gaussian W of ``model`` (still iid Gaussian in the eigenbasis) is taken as the
    # initial W_hat: the decoder starts at (S + cI)^{1/2} G in pixel coordinates, G random.
    W_hat = nn.Parameter(model.W.detach()[support].clone().contiguous())
    log_sigma2 = model.log_sigma2

    metric = row_scale[:, 0].square()  # W = diag(row_scale) Ŵ: G = diag(row_scale²),
    projected = metric * active  # P = diag(row_scale² λ)
    trace_S = active.sum()

    def profiled_elbo() -> torch.Tensor:
        return ProfiledELBO.apply(W_hat, log_sigma2, metric, projected, trace_S, d)

    histories = []
    parameters = _trainable([W_hat, log_sigma2])
    done, previous, slow_rounds = 0, -math.inf, 0
    while done < steps and parameters:
        chunk = min(rotate_every, steps - done)
        history = _run(
            profiled_elbo,
            parameters,
            steps=chunk,
            record_every=min(record_every, chunk),
            name=f"linear VAE q={q}",
            **options,
        )
        done += int(history.steps[-1])
        with torch.no_grad():
            if q >= 2:  # exact ascent over rotations W → WR: make WᵀW diagonal
                W = row_scale * W_hat
                _, rotation = torch.linalg.eigh(W.T @ W)
                W_hat.copy_(W_hat @ rotation.flip(1))  # latents by decreasing ‖w_j‖
            value = float(profiled_elbo())
        history.values[-1] = value
        histories.append(history)
        # Stop after two consecutive rounds that each gain less than the tolerance: a single
        # slow round can be a plateau (seen on MNIST at q = 200).
        stop = options.get("tolerance")
        slow_rounds = slow_rounds + 1 if stop is not None and value - previous < stop else 0
        if slow_rounds >= 2:
            break
        previous = value
    with torch.no_grad():
        model.W.zero_()
        model.W[support] = row_scale * W_hat
    model.set_optimal_encoder()
    return histories


def _run(objective, parameters: list[nn.Parameter], *, steps: int, **options) -> History:
    """:func:`training.maximise`, or a single evaluation when there is nothing to train."""
    if parameters and steps > 0:
        return maximise(objective, parameters, steps=steps, **options)
    with torch.no_grad():
        value = float(objective())
    return History(np.zeros(1, dtype=int), np.array([value]), 0.0, 1)


def _trainable(parameters) -> list[nn.Parameter]:
    """Parameters an optimiser can move (L-BFGS cannot handle an empty or all-empty list)."""
    return [p for p in parameters if p.requires_grad and p.numel() > 0]
