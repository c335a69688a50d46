"""Experiments of the chapter *Diagnosing posterior collapse in your own VAE*.

The chapter's decision procedure asks four questions of a VAE whose latents collapsed: is it the
noise σ² (or β), the encoder, the optimiser, or the data size? Each question is answered with
measurements the package already has (:mod:`lincollapse.collapse`,
:func:`lincollapse.beta_elbo.loss_effective_sigma2`,
:func:`lincollapse.collapse.linear_collapse_prediction`,
:func:`lincollapse.deep_vae.optimal_sigma2`, :func:`lincollapse.linear_vae.optimal_encoder`,
:func:`lincollapse.data.covariance_eigenvalues`). Each function below runs one step on a small
problem — linear VAEs on MNIST, the one model where every answer can be checked against a closed
form — and returns a result whose ``table()`` prints what it measured and whose
``glue_values()`` names the numbers the chapter's prose quotes. There are no figures here.

The linear VAEs are trained by :func:`lincollapse.linear_vae_training.ascend_elbo` with a *learned*
encoder: gradient steps (L-BFGS) on all of W, V, D (and σ² where it is learned) from a random
start, with no closed-form encoder, eigendecomposition or rotation inside the training. The
closed forms enter only as references: the best value of the objective, the linear count and the
best encoder for a trained decoder.

The ``reader`` preset (a chapter opened in Jupyter) computes everything as the ``book`` preset
does, but reads the trained linear VAEs from ``results/reader/`` instead of training them,
each with its behaviour probe, replayed on load (:mod:`lincollapse.experiments.diagnosis_runs`
trains them, and ships them with ``python -m lincollapse.reader ship diagnosis``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from lincollapse import collapse, linear_vae, ppca
from lincollapse.data import covariance_eigenvalues, load_mnist, numerical_rank
from lincollapse.deep_vae import optimal_sigma2
from lincollapse.experiments.diagnosis_runs import (
    effective_noise,
    encode,
    reader_runs,
    run_for,
    split_images,
)
from lincollapse.presets import ExperimentConfig, chapter_cost
from lincollapse.reporting import Report

__all__ = [
    "DataSizeCheck",
    "DiagnosisConfig",
    "EncoderCheck",
    "NoiseCheck",
    "OptimiserCheck",
    "data_size_check",
    "encoder_check",
    "noise_check",
    "optimiser_check",
]

KL_REDUCTION_TEXT = {
    "batchmean": "KL summed over latents, averaged over the batch",
    "sum": "KL summed over latents and the batch",
    "mean": "KL averaged over latents and the batch",
}


@dataclasses.dataclass(frozen=True)
class DiagnosisConfig(ExperimentConfig):
    """Linear VAEs on MNIST, one per loss convention, seed or step budget.

    ``conventions`` are (mse reduction, KL reduction) pairs of
    :func:`lincollapse.beta_elbo.loss_effective_sigma2`; the first is the "patient" (PyTorch's
    default ``mse_loss``), the second the model whose encoder and optimiser are examined. ``n``
    training images and ``n_heldout`` others are drawn together (seed ``seed``) and split at random.
    ``reader``: the ``book`` configuration, its trained models read from ``results/reader/``.
    """

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {
            "n": 300,
            "n_heldout": 300,
            "latent": 40,
            "data_sizes": (100, 300),
        },
        "reader": {},  # the book's trained models, read from results/reader/ (lincollapse.reader)
    }
    n: int = 1000
    n_heldout: int = 1000
    seed: int = 0
    latent: int = 50
    batch_size: int = 128
    conventions: tuple[tuple[str, str], ...] = (("mean", "batchmean"), ("sum", "sum"))
    epsilons: tuple[float, ...] = (0.01, 0.1)
    delta: float = 0.01
    steps: int = 300
    tolerance: float = 1e-7
    early_steps: int = 10
    seeds: tuple[int, ...] = (0, 1)
    converged_gap: float = 0.01
    lagging: int = 5
    data_sizes: tuple[int, ...] = (100, 300, 1000, 3000)
    data_sigma2: float = 0.01
    data_latent: int = 200


def full_rerun(*, run: bool = False) -> dict[str, Any]:
    """Retrain the models that the ``reader`` preset read from ``results/reader/``, with the
    ``book`` preset, and redo every step; print the expected time first. With ``run=False``
    (the default) only print what it would do. Returns the steps' results by name."""
    config = DiagnosisConfig.for_preset("book")
    print(
        f"Full experiment of this chapter at the book preset: {len(reader_runs(config))} linear "
        "VAEs trained, then every step of the procedure."
    )
    print(f"Expected time for the whole chapter: {chapter_cost('diagnosis', 'book')}.")
    if not run:
        print("Not started. To start it, set RUN_FULL = True in this cell and run it again.")
        return {}
    steps = (noise_check, encoder_check, optimiser_check, data_size_check)
    return {step.__name__: step(config) for step in steps}


# --------------------------------------------------------------------------------------------
# Is it σ² (or β)?
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NoiseCheck(Report):
    """The noise each loss assumes, the linear count it implies, and what training measured.

    Attributes
    ----------
    labels : tuple of str, length k
        The loss conventions, then a row with σ² learned.
    sigma2 : ndarray of shape (k,)
        The effective σ² of each convention (the final σ² of the learned row).
    lambda_1 : float
        Largest eigenvalue of the training images' covariance.
    linear : ndarray of shape (k,)
        Linear count max(0, q − #{λ_j > σ²})/q.
    measured : ndarray of shape (k, e)
        (ε, δ)-collapsed fraction of the trained linear VAE's encoder at each ε.
    optimal_sigma2 : ndarray of shape (k,)
        Mean squared error per pixel of each trained model's reconstructions (one sample of z
        per image): the σ² at which its likelihood would be best (``lem-deep-sigma2``).
    epsilons : ndarray of shape (e,)
    latent, n : int
    """

    labels: tuple[str, ...]
    sigma2: np.ndarray
    lambda_1: float
    linear: np.ndarray
    measured: np.ndarray
    optimal_sigma2: np.ndarray
    epsilons: np.ndarray
    latent: int
    n: int

    def table(self) -> str:
        """Markdown table: one row per loss convention."""
        eps = " | ".join(f"collapsed, ε = {e:g}" for e in self.epsilons)
        lines = [
            f"| loss | σ² it assumes | σ² / λ₁ | linear count | {eps} | MSE per pixel |",
            "| --- " * (5 + self.epsilons.size) + "|",
        ]
        for k, label in enumerate(self.labels):
            measured = " | ".join(f"{f:.3f}" for f in self.measured[k])
            lines.append(
                f"| {label} | {self.sigma2[k]:.4g} | {self.sigma2[k] / self.lambda_1:.3g} | "
                f"{self.linear[k]:.3f} | {measured} | {self.optimal_sigma2[k]:.3g} |"
            )
        return "\n".join(lines)

    def glue_values(self, prefix: str = "noise") -> dict[str, float]:
        """Per row k: ``sigma2_k``, ``ratio_k`` (σ²/λ₁), ``linear_k``, ``measured_k`` (first ε),
        ``mse_k`` and ``excess_k`` (σ² / MSE per pixel); and ``lambda_1``, ``epsilon``,
        ``latent``."""
        values: dict[str, float] = {
            "lambda_1": self.lambda_1,
            "epsilon": float(self.epsilons[0]),
            "latent": self.latent,
        }
        for k in range(len(self.labels)):
            values |= {
                f"sigma2_{k}": float(self.sigma2[k]),
                f"ratio_{k}": float(self.sigma2[k] / self.lambda_1),
                f"linear_{k}": float(self.linear[k]),
                f"measured_{k}": float(self.measured[k, 0]),
                f"mse_{k}": float(self.optimal_sigma2[k]),
                f"excess_{k}": float(self.sigma2[k] / self.optimal_sigma2[k]),
            }
        return {f"{prefix}_{name}": value for name, value in values.items()}


def noise_check(config: DiagnosisConfig | None = None) -> NoiseCheck:
    """Step "σ²/β": each loss convention's σ², the linear count, and trained linear VAEs."""
    config = config or DiagnosisConfig.for_preset()
    x, _, spectrum = split_images(config.n, config.n_heldout, config.seed)
    epsilons = np.asarray(config.epsilons, dtype=np.float64)
    generator = np.random.default_rng(config.seed)
    labels, noises, measured, mse = [], [], [], []
    settings = [
        (f"mse_loss(reduction={m!r}) + {KL_REDUCTION_TEXT[k]}", effective_noise(config, m, k))
        for m, k in config.conventions
    ] + [("σ² learned with the model", None)]
    for label, sigma2 in settings:
        trained = run_for(config, sigma2)
        model = trained.model
        means, variances = encode(model, x)
        z = means + np.sqrt(variances) * generator.normal(size=means.shape)
        params = model.numpy_parameters()
        reconstruction = z @ params["W"].T + params["mean"]
        labels.append(label)
        noises.append(float(model.sigma2.detach()) if sigma2 is None else sigma2)
        measured.append(
            collapse.encoder_collapsed_fraction(means, variances, epsilons, config.delta)
        )
        mse.append(optimal_sigma2(x, reconstruction))
    noises = np.asarray(noises)
    return NoiseCheck(
        labels=tuple(labels),
        sigma2=noises,
        lambda_1=float(spectrum.eigenvalues[0]),
        linear=collapse.linear_collapse_prediction(spectrum.eigenvalues, noises, config.latent),
        measured=np.asarray(measured),
        optimal_sigma2=np.asarray(mse),
        epsilons=epsilons,
        latent=config.latent,
        n=config.n,
    )


# --------------------------------------------------------------------------------------------
# Is it the encoder?
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EncoderCheck(Report):
    """Encoders of one trained decoder against the best encoder for that decoder.

    Attributes
    ----------
    labels : tuple of str, length k
        ``"trained"`` (the model's own encoder) and ``"lagging"`` (the same encoder with its
        weakest active latents switched off by hand: V row 0, variance 1).
    sigma2 : float
        The decoder's fixed σ².
    measured : ndarray of shape (k,)
        Collapsed fraction of each encoder at ``epsilon``.
    best : float
        Collapsed fraction of the best encoder for the decoder (lvae-optimal-encoder).
    elbo : ndarray of shape (k,)
        ELBO of the decoder with each encoder (lvae-elbo), nats per image.
    best_elbo : float
        ELBO with the best encoder.
    epsilon : float
    latent : int
    """

    labels: tuple[str, ...]
    sigma2: float
    measured: np.ndarray
    best: float
    elbo: np.ndarray
    best_elbo: float
    epsilon: float
    latent: int

    def blames_encoder(self) -> np.ndarray:
        """Per encoder: does the best encoder for the same decoder collapse fewer latents?

        Compared in latents (one latent = 1/q), so round-off never decides.
        """
        return np.rint((self.measured - self.best) * self.latent) >= 1

    def table(self) -> str:
        """Markdown table: one row per encoder, and the best encoder."""
        lines = [
            f"| encoder | collapsed (ε = {self.epsilon:g}) | ELBO (nats/image) | "
            "ELBO with the best encoder | blame |",
            "| --- | --- | --- | --- | --- |",
        ]
        for label, measured, elbo, blame in zip(
            self.labels, self.measured, self.elbo, self.blames_encoder(), strict=True
        ):
            verdict = "encoder" if blame else "decoder (the model)"
            lines.append(
                f"| {label} | {measured:.3f} | {elbo:.2f} | {self.best_elbo:.2f} | {verdict} |"
            )
        lines.append(
            f"| best for this decoder | {self.best:.3f} | {self.best_elbo:.2f} | "
            f"{self.best_elbo:.2f} | — |"
        )
        return "\n".join(lines)

    def glue_values(self, prefix: str = "encoder") -> dict[str, float]:
        """``measured_k``, ``elbo_loss_k`` (best ELBO − ELBO) per encoder; ``best``,
        ``sigma2``."""
        values: dict[str, float] = {
            "best": self.best,
            "sigma2": self.sigma2,
        }
        for k in range(len(self.labels)):
            values[f"measured_{k}"] = float(self.measured[k])
            values[f"elbo_loss_{k}"] = float(self.best_elbo - self.elbo[k])
        return {f"{prefix}_{name}": value for name, value in values.items()}


def encoder_check(
    config: DiagnosisConfig | None = None,
) -> EncoderCheck:
    """Step "encoder": the trained and a lagging encoder against the best one for the decoder.

    The decoder is the linear VAE trained with the second loss convention. The lagging encoder is
    made by hand from the trained one: the ``config.lagging`` active latents with the smallest
    average KL get a zero row of V and variance 1, as an encoder that has not yet learned to use
    latents its decoder already uses (a lagging inference network).
    """
    config = config or DiagnosisConfig.for_preset()
    x, _, spectrum = split_images(config.n, config.n_heldout, config.seed)
    sigma2 = effective_noise(config, *config.conventions[1])
    params = run_for(config, sigma2).model.numpy_parameters()
    W, V, D = params["W"], params["V"], params["D"]
    epsilon = float(config.epsilons[0])

    def fraction(V: np.ndarray, D: np.ndarray) -> float:
        means = (x - params["mean"]) @ V.T  # the linear encoder (lvae-encoder)
        return float(collapse.encoder_collapsed_fraction(means, D, epsilon, config.delta))

    kl_mean = collapse.gaussian_kl_per_dimension((x - params["mean"]) @ V.T, D).mean(axis=0)
    active = np.flatnonzero(kl_mean >= epsilon)
    dropped = active[np.argsort(kl_mean[active], kind="stable")[: config.lagging]]
    V_lag, D_lag = V.copy(), D.copy()
    V_lag[dropped], D_lag[dropped] = 0.0, 1.0
    V_best, D_best = linear_vae.optimal_encoder(W, sigma2)
    encoders = {"trained": (V, D), "lagging (made by hand)": (V_lag, D_lag)}
    return EncoderCheck(
        labels=tuple(encoders),
        sigma2=sigma2,
        measured=np.array([fraction(*e) for e in encoders.values()]),
        best=fraction(V_best, D_best),
        elbo=np.array(
            [linear_vae.elbo_terms(spectrum, W, *e, sigma2).elbo for e in encoders.values()]
        ),
        best_elbo=linear_vae.elbo_terms(spectrum, W, V_best, D_best, sigma2).elbo,
        epsilon=epsilon,
        latent=config.latent,
    )


# --------------------------------------------------------------------------------------------
# Is it the optimiser?
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptimiserCheck(Report):
    """Runs at one σ² from several seeds and one stopped early, against the best value.

    Attributes
    ----------
    labels : tuple of str, length k
    steps : ndarray of shape (k,)
        Optimiser steps taken.
    gap : ndarray of shape (k,)
        Best log-likelihood at this σ² (the fixed-σ² maximiser) minus the run's ELBO, nats per
        image: 0 at the global maximum.
    measured : ndarray of shape (k, e)
        Collapsed fraction at each ε.
    linear : float
        #{j ≤ q : λ_j ≤ σ²}/q, the collapsed fraction of the global maximum.
    sigma2 : float
    epsilons : ndarray of shape (e,)
    latent : int
    tolerance : float
        A run with ``gap`` below this counts as converged.
    """

    labels: tuple[str, ...]
    steps: np.ndarray
    gap: np.ndarray
    measured: np.ndarray
    linear: float
    sigma2: float
    epsilons: np.ndarray
    latent: int
    tolerance: float

    def converged(self) -> np.ndarray:
        """Runs whose gap to the global maximum is below :attr:`tolerance`."""
        return self.gap < self.tolerance

    def table(self) -> str:
        """Markdown table: one row per run."""
        eps = " | ".join(f"collapsed, ε = {e:g}" for e in self.epsilons)
        lines = [
            f"| run | steps | gap to the best ELBO (nats/image) | {eps} | converged |",
            "| --- " * (4 + self.epsilons.size) + "|",
        ]
        for k, label in enumerate(self.labels):
            measured = " | ".join(f"{f:.3f}" for f in self.measured[k])
            lines.append(
                f"| {label} | {self.steps[k]} | {self.gap[k]:.2g} | {measured} | "
                f"{'yes' if self.converged()[k] else 'no'} |"
            )
        return "\n".join(lines)

    def glue_values(self, prefix: str = "optimiser") -> dict[str, float]:
        """``linear``, ``sigma2``, ``max_converged_gap``, ``converged_gap`` (the tolerance),
        ``converged_measured`` (first ε, first converged run), ``early_gap``, ``early_measured``
        (first ε), ``early_measured_last`` (last ε), ``converged_spread`` (largest difference
        in the collapsed fraction between converged runs, any ε), ``seeds``."""
        done = self.converged()
        early = ~done
        return {
            f"{prefix}_{name}": value
            for name, value in {
                "linear": self.linear,
                "sigma2": self.sigma2,
                "max_converged_gap": float(self.gap[done].max()) if done.any() else np.nan,
                "early_gap": float(self.gap[early][0]) if early.any() else np.nan,
                "early_measured": float(self.measured[early][0, 0]) if early.any() else np.nan,
                "early_measured_last": (
                    float(self.measured[early][0, -1]) if early.any() else np.nan
                ),
                "converged_measured": float(self.measured[done][0, 0]) if done.any() else np.nan,
                "converged_gap": self.tolerance,
                "converged_spread": float(np.ptp(self.measured[done], axis=0).max())
                if done.any()
                else np.nan,
                "seeds": int(done.sum()),
            }.items()
        }


def optimiser_check(config: DiagnosisConfig | None = None) -> OptimiserCheck:
    """Step "optimiser": converged runs from several seeds and one run stopped early."""
    config = config or DiagnosisConfig.for_preset()
    x, _, spectrum = split_images(config.n, config.n_heldout, config.seed)
    sigma2 = effective_noise(config, *config.conventions[1])
    epsilons = np.asarray(config.epsilons, dtype=np.float64)
    runs = {f"seed {s}": run_for(config, sigma2, train_seed=s) for s in config.seeds}
    runs[f"seed {config.seeds[0]}, stopped after {config.early_steps} steps"] = run_for(
        config, sigma2, steps=config.early_steps, tolerance=None
    )
    measured = []
    for trained in runs.values():
        means, variances = encode(trained.model, x)
        measured.append(
            collapse.encoder_collapsed_fraction(means, variances, epsilons, config.delta)
        )
    return OptimiserCheck(
        labels=tuple(runs),
        steps=np.array([t.steps for t in runs.values()]),
        gap=np.array([t.gap for t in runs.values()]),
        measured=np.asarray(measured),
        linear=ppca.collapsed_column_count(spectrum, config.latent, sigma2) / config.latent,
        sigma2=sigma2,
        epsilons=epsilons,
        latent=config.latent,
        tolerance=config.converged_gap,
    )


# --------------------------------------------------------------------------------------------
# Is it the data size?
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataSizeCheck(Report):
    """The linear count against the number of images, and collapse on held-out images.

    Attributes
    ----------
    sizes : ndarray of shape (m,)
        Numbers of images N.
    rank : ndarray of shape (m,)
        Numerical rank of their sample covariance (at most N − 1).
    above : ndarray of shape (m,)
        #{j : λ_j > σ²} at ``sigma2``.
    linear : ndarray of shape (m,)
        Linear count max(0, q − above)/q for ``latent`` latents.
    sigma2 : float
    latent : int
    train_measured, heldout_measured : float
        Collapsed fraction (first ε) of the second loss convention's trained model on its
        training images and on held-out images.
    epsilon : float
    """

    sizes: np.ndarray
    rank: np.ndarray
    above: np.ndarray
    linear: np.ndarray
    sigma2: float
    latent: int
    train_measured: float
    heldout_measured: float
    epsilon: float

    def table(self) -> str:
        """Markdown table: one row per number of images."""
        lines = [
            f"| images N | rank of S | #{{λ_j > σ²}} at σ² = {self.sigma2:g} | "
            f"linear count (q = {self.latent}) |",
            "| --- | --- | --- | --- |",
        ]
        for row in zip(self.sizes, self.rank, self.above, self.linear, strict=True):
            n, rank, above, linear = row
            lines.append(f"| {n} | {rank} | {above} | {linear:.3f} |")
        return "\n".join(lines)

    def glue_values(self, prefix: str = "data") -> dict[str, float]:
        """``linear_first``/``linear_last``, ``above_first``/``above_last``, ``size_first``/
        ``size_last``, ``sigma2``, ``latent``, ``train_measured``, ``heldout_measured``."""
        values = {
            "size_first": int(self.sizes[0]),
            "size_last": int(self.sizes[-1]),
            "above_first": int(self.above[0]),
            "above_last": int(self.above[-1]),
            "linear_first": float(self.linear[0]),
            "linear_last": float(self.linear[-1]),
            "sigma2": self.sigma2,
            "latent": self.latent,
            "train_measured": self.train_measured,
            "heldout_measured": self.heldout_measured,
        }
        return {f"{prefix}_{name}": value for name, value in values.items()}


def data_size_check(config: DiagnosisConfig | None = None) -> DataSizeCheck:
    """Step "data size": eigenvalues of N images for several N, and held-out collapse."""
    config = config or DiagnosisConfig.for_preset()
    ranks, above, linear = [], [], []
    for size in config.data_sizes:
        eigenvalues = covariance_eigenvalues(load_mnist(size, seed=config.seed).images)
        ranks.append(numerical_rank(eigenvalues)[0])
        above.append(int(np.count_nonzero(eigenvalues > config.data_sigma2)))
        linear.append(
            float(
                collapse.linear_collapse_prediction(
                    eigenvalues, config.data_sigma2, config.data_latent
                )
            )
        )
    x, heldout, _ = split_images(config.n, config.n_heldout, config.seed)
    model = run_for(config, effective_noise(config, *config.conventions[1])).model
    epsilon = float(config.epsilons[0])
    measured = [
        float(collapse.encoder_collapsed_fraction(*encode(model, images), epsilon, config.delta))
        for images in (x, heldout)
    ]
    return DataSizeCheck(
        sizes=np.asarray(config.data_sizes),
        rank=np.asarray(ranks),
        above=np.asarray(above),
        linear=np.asarray(linear),
        sigma2=config.data_sigma2,
        latent=config.data_latent,
        train_measured=measured[0],
        heldout_measured=measured[1],
        epsilon=epsilon,
    )
