"""Experiments of the chapter *β, σ² and KL annealing* (``beta_annealing``).

Two figures:

``linear-beta-collapse``
    The linear β-VAE on MNIST, trained on its own β-weighted objective for a grid of β at a fixed
    σ², against the closed form at noise βσ² (:mod:`lincollapse.linear_beta_vae`): collapsed latents
    against β, and the trained decoder's squared singular values against max(0, λ_j − βσ²).
``kl-annealing``
    Deep Gaussian VAEs at a collapsing σ², trained with and without a linear KL warm-up (same
    seeds, so each pair starts from the same weights and sees the same noise), beside runs whose
    σ² is set at every step to its optimum, the mean squared error per pixel.

``kl-annealing-convergence``
    Is the book preset long enough? Its annealing runs against long runs of the same models
    (more steps, two seeds), shipped in ``results/kl_annealing_long_book.{npz,json}`` with the
    command, machine, date and code fingerprint (a test fails when they are stale).
    Regenerate them with::

        python -m lincollapse.experiments.beta --long --preset book --write-reference

The deep runs go through :mod:`lincollapse.results_cache` (one entry per configuration,
fingerprinted by the code of :mod:`lincollapse.kl_annealing`, :mod:`lincollapse.deep_vae`,
:mod:`lincollapse.gaussian`, :mod:`lincollapse.collapse` and
:mod:`lincollapse.training`), so a rebuild of the book reads them instead of retraining.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lincollapse.beta_elbo import loss_effective_sigma2
from lincollapse.collapse import linear_collapse_prediction
from lincollapse.data import covariance_eigenvalues
from lincollapse.deep_runs import FAST_ARCHITECTURE, TOLERANCE, data_for, plateau_range
from lincollapse.deep_vae import Architecture, resolve_device
from lincollapse.experiments import figure
from lincollapse.kl_annealing import AnnealedRuns, RunSpec, train_annealed
from lincollapse.linear_beta_vae import (
    collapsed_latents,
    optimal_rates,
    optimal_singular_values,
    train_linear_beta_vae,
)
from lincollapse.ppca import data_spectrum
from lincollapse.presets import READER, ExperimentConfig, results_preset
from lincollapse.reader import shipped_or_compute
from lincollapse.references import (
    PROBE_STEPS,
    Probe,
    load_shipped,
    reference_info,
    save_shipped,
    shipped_provenance,
)
from lincollapse.reporting import Report
from lincollapse.results_cache import ReferenceResultError, ResultsCache, source_fingerprint

CHAPTER = "beta_annealing"
COMPUTING_MODULES = (
    "lincollapse.collapse",
    "lincollapse.deep_vae",
    "lincollapse.gaussian",
    "lincollapse.kl_annealing",
    "lincollapse.training",
)
# Its own binding (not deep's imported by value), so patching one module never leaks into the other.
RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"


# --------------------------------------------------------------------------------------------
# The linear β-VAE
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MnistLinearBetaConfig(ExperimentConfig):
    """The linear β-VAE on MNIST; defaults are the ``book`` preset.

    ``book``: the book's 1000 images in [0, 1], q = 50 latents, σ² = 1/2 (the noise of a loss "sum
    of squared errors + β·KL", see :func:`lincollapse.beta_elbo.loss_effective_sigma2`), 14 values
    of β from 0.05 to 20 (so βσ² runs from 0.025 to 10, across λ_1 ≈ 5.3 down to λ_50), each trained
    for 300 L-BFGS steps with the β-optimal encoder, the latents rotated every 20. ``paper``: q =
    200 and 25 values of β. ``fast``: 200 images, q = 5, four β.

    Attributes
    ----------
    n, data_seed, latent : int
    sigma2 : float
        The fixed observation noise of the β-objective.
    betas : tuple of float
    steps, rotate_every : int
        Training of each model (:func:`lincollapse.linear_beta_vae.train_linear_beta_vae` with
        ``encoder="optimal"``): L-BFGS steps, and steps between rotations of the latents.
    seed : int
        Seed of the random initial decoder.
    epsilon : float
        A latent counts as collapsed when its average KL is below ε (nats).
    """

    COSTS: ClassVar[dict[str, str]] = {
        "fast": "≈ 3 s",
        "book": "17 s on 2 cores (measured)",
        "paper": "≈ 5 min (estimated)",
        "reader": "< 1 s (the book's result, shipped in results/reader/)",
    }
    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "reader": {},  # the book's result, read from results/reader/ (lincollapse.reader)
        "fast": {"n": 200, "latent": 5, "betas": (0.1, 1.0, 4.0, 16.0), "steps": 60},
        "paper": {"latent": 200, "betas": tuple(float(b) for b in np.logspace(-2, 1.3, 25))},
    }
    n: int = 1000
    data_seed: int = 0
    latent: int = 50
    sigma2: float = 0.5
    betas: tuple[float, ...] = tuple(float(b) for b in np.logspace(np.log10(0.05), 1.3, 14))
    steps: int = 300
    rotate_every: int = 20
    seed: int = 0
    epsilon: float = 0.01


@dataclasses.dataclass(frozen=True)
class MnistLinearBetaResult(Report):
    """Trained linear β-VAEs against the closed form at noise βσ².

    Attributes
    ----------
    betas : ndarray (B,)
    sigma2 : float
    latent : int
    eigenvalues : ndarray (d,)
        Of the images' sample covariance, decreasing.
    trained_squared_singular_values, optimum_squared_singular_values : ndarray (B, q)
        Of the trained decoders, and max(0, λ_j − βσ²).
    trained_kl, optimum_kl : ndarray (B, q)
        Average KL per latent, decreasing: trained, and ½ max(0, log λ_j/βσ²).
    trained_collapsed : ndarray (B,)
        Trained latents with KL < ε.
    predicted_collapsed : ndarray (B,)
        #{j ≤ q : ½ log(λ_j/βσ²) < ε}: the closed form's count at the same ε.
    theory_collapsed : ndarray (B,)
        #{j ≤ q : λ_j ≤ βσ²} (the ε → 0 count).
    max_singular_error : float
        max |trained − closed-form| squared singular value over all β and latents.
    epsilon, seconds : float
    preset : str
    """

    betas: np.ndarray
    sigma2: float
    latent: int
    eigenvalues: np.ndarray
    trained_squared_singular_values: np.ndarray
    optimum_squared_singular_values: np.ndarray
    trained_kl: np.ndarray
    optimum_kl: np.ndarray
    trained_collapsed: np.ndarray
    predicted_collapsed: np.ndarray
    theory_collapsed: np.ndarray
    max_singular_error: float
    epsilon: float
    seconds: float
    preset: str

    @property
    def mismatch(self) -> int:
        """Values of β where the trained count of collapsed latents differs from the closed
        form's."""
        return int(np.sum(self.trained_collapsed != self.predicted_collapsed))

    @property
    def max_kl_error(self) -> float:
        """max |trained − closed-form| KL per latent over all β and latents, nats."""
        return float(np.abs(self.trained_kl - self.optimum_kl).max())

    def table(self) -> str:
        """Per β: βσ², the linear count, the closed form's and the trained counts at ε; then the
        largest errors against the closed form."""
        lines = [
            f"q = {self.latent}, σ² = {self.sigma2:g}, {self.betas.size} values of β, "
            f"trained in {self.seconds:.0f} s",
            f"{'β':>7} {'βσ²':>7} {'#{λ_j ≤ βσ²}':>13} {'closed form, KL<ε':>18} "
            f"{'trained, KL<ε':>14}",
        ]
        rows = zip(
            self.betas,
            self.theory_collapsed,
            self.predicted_collapsed,
            self.trained_collapsed,
            strict=True,
        )
        for beta, theory, predicted, trained in rows:
            lines.append(
                f"{beta:>7.3g} {beta * self.sigma2:>7.3g} {theory:>13d} {predicted:>18d} "
                f"{trained:>14d}"
            )
        lines.append(
            f"largest |trained − closed form|: squared singular value "
            f"{self.max_singular_error:.1e}, KL per latent {self.max_kl_error:.1e} nats; β with a "
            f"different count: {self.mismatch}"
        )
        return "\n".join(lines)

    def glue_values(self) -> dict[str, Any]:
        """The largest errors against the closed form, the mismatches and q."""
        return {
            "sv_error": self.max_singular_error,
            "kl_error": self.max_kl_error,
            "mismatch": self.mismatch,
            "latent": self.latent,
        }


# Loss conventions: the effective noise of a squared-error loss
LOSS_CONVENTIONS = (
    ("mean", "mse_loss(mean) + KL (sum latents, mean batch)", "mean", "batchmean"),
    ("sum", "mse_loss(sum) + KL (sum latents, sum batch)", "sum", "sum"),
    ("meanmean", "mse_loss(mean) + KL (mean latents, mean batch)", "mean", "mean"),
    ("sumbatch", "mse_loss(sum) + KL (sum latents, mean batch)", "sum", "batchmean"),
)


@dataclasses.dataclass(frozen=True)
class LossConventions(Report):
    """The σ² that common ways of writing "squared error + KL" assume, and the linear count there.

    Attributes
    ----------
    eigenvalues : ndarray (d,)
        Of the images' sample covariance, decreasing.
    names, labels : tuple of str
        Of the conventions (:data:`LOSS_CONVENTIONS`).
    sigma2 : ndarray (k,)
        The effective σ² of each (:func:`lincollapse.beta_elbo.loss_effective_sigma2`).
    collapsed : ndarray (k,) of int
        Linear count of collapsed latents at that σ² (of ``latent``).
    d, latent, batch_size : int
    """

    eigenvalues: np.ndarray
    names: tuple[str, ...]
    labels: tuple[str, ...]
    sigma2: np.ndarray
    collapsed: np.ndarray
    d: int
    latent: int
    batch_size: int

    def table(self) -> str:
        """λ_1, then one row per convention: its effective σ² and the linear count there."""
        lines = [
            f"λ_1 = {self.eigenvalues[0]:.2f}; batch size n = {self.batch_size} where it matters",
            f"{'loss':<50} {'σ²_eff':>10} {'collapsed of 200 (linear)':>26}",
        ]
        for label, sigma2, collapsed in zip(self.labels, self.sigma2, self.collapsed, strict=True):
            lines.append(f"{label:<50} {sigma2:>10.4g} {collapsed:>26d}")
        return "\n".join(lines)

    def glue_values(self) -> dict[str, Any]:
        """``mse_sigma2_<name>``, ``mse_collapsed_<name>`` per convention, and ``lambda_1``."""
        values: dict[str, Any] = {}
        for name, sigma2, collapsed in zip(self.names, self.sigma2, self.collapsed, strict=True):
            values[f"mse_sigma2_{name}"] = float(sigma2)
            values[f"mse_collapsed_{name}"] = int(collapsed)
        values["lambda_1"] = float(self.eigenvalues[0])
        return values


def loss_conventions(
    eigenvalues: np.ndarray, d: int = 784, latent: int = 200, batch_size: int = 128
) -> LossConventions:
    """:class:`LossConventions` of :data:`LOSS_CONVENTIONS` for data with these eigenvalues."""
    sigma2s, counts = [], []
    for _, _, mse, kl in LOSS_CONVENTIONS:
        sigma2 = loss_effective_sigma2(
            d, mse_reduction=mse, kl_reduction=kl, batch_size=batch_size, latent=latent
        )
        sigma2s.append(sigma2)
        counts.append(int(collapsed_latents(eigenvalues, latent, sigma2, 1.0).sum()))
    return LossConventions(
        eigenvalues=np.asarray(eigenvalues),
        names=tuple(c[0] for c in LOSS_CONVENTIONS),
        labels=tuple(c[1] for c in LOSS_CONVENTIONS),
        sigma2=np.asarray(sigma2s, dtype=np.float64),
        collapsed=np.asarray(counts),
        d=d,
        latent=latent,
        batch_size=batch_size,
    )


@figure(
    "linear-beta-collapse",
    chapter=CHAPTER,
    plot="lincollapse.plotting.beta:plot_linear_beta",
    config=MnistLinearBetaConfig,
)
def linear_beta_collapse(config: MnistLinearBetaConfig | None = None) -> MnistLinearBetaResult:
    """Linear β-VAE on MNIST: collapsed latents against β, trained vs #{λ_j ≤ βσ²}."""
    config = config or MnistLinearBetaConfig.for_preset()
    result, provenance = shipped_or_compute(config, _linear_beta_collapse, MnistLinearBetaResult)
    if config.preset == READER:
        print("runs:", provenance)
    return result


def _linear_beta_collapse(config: MnistLinearBetaConfig) -> MnistLinearBetaResult:
    start = time.perf_counter()
    images = data_for(config)[0]  # the deep-VAE chapter's subset
    spectrum = data_spectrum(images)
    trained_sv, optimum_sv, trained_kl, optimum_kl, theory = [], [], [], [], []
    for beta in config.betas:
        problem = (spectrum, config.latent, config.sigma2, beta)
        fit = train_linear_beta_vae(
            *problem,
            encoder="optimal",
            steps=config.steps,
            rotate_every=config.rotate_every,
            seed=config.seed,
        )
        trained_sv.append(fit.squared_singular_values)
        trained_kl.append(fit.rates)
        optimum_sv.append(optimal_singular_values(*problem) ** 2)
        optimum_kl.append(optimal_rates(*problem))
        theory.append(int(collapsed_latents(*problem).sum()))
    trained_sv, optimum_sv = np.array(trained_sv), np.array(optimum_sv)
    trained_kl, optimum_kl = np.array(trained_kl), np.array(optimum_kl)
    return MnistLinearBetaResult(
        betas=np.asarray(config.betas, dtype=np.float64),
        sigma2=config.sigma2,
        latent=config.latent,
        eigenvalues=spectrum.eigenvalues,
        trained_squared_singular_values=trained_sv,
        optimum_squared_singular_values=optimum_sv,
        trained_kl=trained_kl,
        optimum_kl=optimum_kl,
        trained_collapsed=(trained_kl < config.epsilon).sum(axis=1),
        predicted_collapsed=(optimum_kl < config.epsilon).sum(axis=1),
        theory_collapsed=np.array(theory),
        max_singular_error=float(np.abs(trained_sv - optimum_sv).max()),
        epsilon=config.epsilon,
        seconds=time.perf_counter() - start,
        preset=config.preset,
    )


# --------------------------------------------------------------------------------------------
# KL annealing in deep VAEs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AnnealingConfig(ExperimentConfig):
    """Deep VAEs with and without KL warm-up, and with the optimal σ²; defaults = ``book``.

    ``book``: the deep chapter's book model (1000 images in [0, 1], q = 200, encoder 784-256-128,
    decoder 128-256-784, Adam at a constant 1e-3, full batch) at σ² = 0.1, where its long run
    collapses 95 % of the latents (linear count 66 %); seed 0 with β = 1 throughout and with a
    linear warm-up of β over the first 500 steps, and one run with σ² at its optimum, 2,200 steps
    each. Its *long runs* (:meth:`long_config`: the same models for 6,000 steps, seeds 0 and 1,
    so seed 0's book runs are their first 2,200 steps) are shipped in ``results/`` and compared
    with the book runs by :func:`kl_annealing_convergence`.
    ``paper``: the paper's widths, Adam 5e-4, 20,000 steps, warm-up 5,000, three seeds.
    ``fast``: a smoke test.

    Attributes
    ----------
    n, data_seed, latent : int
    encoder_hidden, decoder_hidden : tuple of int
    sigma2 : float
        The (collapsing) fixed observation noise.
    warmup : int
        Steps over which β rises linearly from 0 to 1 in the annealed runs.
    steps, lr, record_every : int, float, int
    seeds : tuple of int
        One constant-β and one annealed run per seed.
    optimal_seeds : tuple of int
        One run with σ² at its optimum (β = 1) per seed.
    delta, epsilon : float
        The (ε, δ)-collapse metric.
    long_steps, long_seeds, long_record_every : int, tuple of int, int
        The long runs of the convergence check (:meth:`long_config`).
    """

    COSTS: ClassVar[dict[str, str]] = {
        "fast": "≈ 3 s",
        "book": "≈ 4.5 min for the whole chapter (268 s measured, 2 cores)",
        "paper": "hours on a CPU; minutes on a GPU",
        "reader": "< 1 s (the book's runs: the first steps of the shipped long runs)",
    }
    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        # The book's runs, read from the shipped long runs instead of trained (see
        # ``annealing_runs``): with a constant learning rate they are the long runs' first steps.
        "reader": {},
        "fast": {
            **FAST_ARCHITECTURE,
            "steps": 60,
            "warmup": 20,
            "lr": 2e-3,
            "record_every": 20,
            "seeds": (0, 1),
            "long_steps": 120,
            "long_record_every": 20,
        },
        "paper": {
            "encoder_hidden": (1024, 512),
            "decoder_hidden": (512, 1024),
            "steps": 20_000,
            "warmup": 5_000,
            "lr": 5e-4,
            "record_every": 250,
            "seeds": (0, 1, 2),
            "optimal_seeds": (0, 1, 2),
            "long_steps": 40_000,
            "long_seeds": (0, 1, 2),
            "long_record_every": 500,
        },
    }
    n: int = 1000
    data_seed: int = 0
    latent: int = 200
    encoder_hidden: tuple[int, ...] = (256, 128)
    decoder_hidden: tuple[int, ...] = (128, 256)
    sigma2: float = 0.1
    warmup: int = 500
    steps: int = 2200
    lr: float = 1e-3
    record_every: int = 50
    seeds: tuple[int, ...] = (0,)
    optimal_seeds: tuple[int, ...] = (0,)
    delta: float = 0.01
    epsilon: float = 0.01
    long_steps: int = 6000
    long_seeds: tuple[int, ...] = (0, 1)
    long_record_every: int = 100

    @property
    def arch(self) -> Architecture:
        return Architecture(784, self.latent, self.encoder_hidden, self.decoder_hidden)

    def long_config(self) -> AnnealingConfig:
        """The same runs trained ``long_steps`` steps for ``long_seeds`` (constant learning rate:
        each run of this config with a seed in ``long_seeds`` is their first ``steps`` steps)."""
        return dataclasses.replace(
            self,
            steps=self.long_steps,
            seeds=self.long_seeds,
            optimal_seeds=self.long_seeds,
            record_every=self.long_record_every,
        )

    def specs(self) -> list[RunSpec]:
        """Constant-β runs, annealed runs (same seeds), then optimal-σ² runs."""
        return (
            [RunSpec(self.sigma2, 0, "fixed", s) for s in self.seeds]
            + [RunSpec(self.sigma2, self.warmup, "fixed", s) for s in self.seeds]
            + [RunSpec(self.sigma2, 0, "optimal", s) for s in self.optimal_seeds]
        )


@dataclasses.dataclass(frozen=True)
class AnnealingResult(Report):
    """Collapse during training with and without KL warm-up, and with the optimal σ².

    Attributes
    ----------
    runs : AnnealedRuns
        Everything recorded (ELBO, β, effective σ², collapse thresholds per record).
    labels : list of str
        One per run.
    kind : ndarray (R,) of str
        ``"constant"``, ``"annealed"`` or ``"optimal"``.
    fraction : ndarray (k, R)
        Collapsed fraction at ε per record.
    final_fraction, final_elbo, final_sigma2 : ndarray (R,)
        At the last record: collapsed fraction, ELBO (β = 1, own σ²), effective σ².
    annealing_effect : ndarray (S,)
        Per seed: final collapsed fraction annealed − constant.
    linear_count : float
        Linear-theory collapsed fraction at σ² (chapter *Deep Gaussian VAEs*).
    linear_count_optimal : ndarray (R,)
        The same at each run's final effective σ².
    eigenvalues : ndarray (784,)
        Of the images' sample covariance, decreasing.
    sigma2, epsilon : float
    warmup, steps, latent : int
    preset, provenance : str
    """

    runs: AnnealedRuns
    labels: list[str]
    kind: np.ndarray
    fraction: np.ndarray
    final_fraction: np.ndarray
    final_elbo: np.ndarray
    final_sigma2: np.ndarray
    annealing_effect: np.ndarray
    linear_count: float
    linear_count_optimal: np.ndarray
    eigenvalues: np.ndarray
    sigma2: float
    epsilon: float
    warmup: int
    steps: int
    latent: int
    preset: str
    provenance: str

    def differing_latents(self) -> np.ndarray:
        """Per seed: latents collapsed in only one of the annealed and constant runs, (S,)."""
        seeds = sorted({s.seed for s in self.runs.specs if s.noise != "optimal"})
        return differing_latents(self.runs, self.epsilon, seeds)

    def table(self) -> str:
        """Final collapsed fraction, ELBO and effective σ² of every run; the annealing effect, the
        linear counts, the step at which half of the latents are collapsed again, and the latents
        that differ between annealed and constant runs."""
        optimal = self.kind == "optimal"
        lines = [
            f"{'run':<36} {'final collapsed':>16} {'final ELBO (β = 1)':>19} {'final σ²_eff':>13}"
        ]
        for r, label in enumerate(self.labels):
            lines.append(
                f"{label:<36} {self.final_fraction[r]:>16.3f} {self.final_elbo[r]:>19.1f} "
                f"{self.final_sigma2[r]:>13.4g}"
            )
        effect = ", ".join(f"{e:+.3f}" for e in self.annealing_effect)
        counts = ", ".join(f"{c:.3f}" for c in self.linear_count_optimal[optimal])
        half = self.half_collapsed_steps()
        steps = ", ".join(f"{label}: {h:g}" for label, h in zip(self.labels, half, strict=True))
        differing = ", ".join(map(str, self.differing_latents()))
        lines += [
            f"annealed − constant, final collapsed fraction per seed: {effect}",
            f"linear count at σ² = {self.sigma2:g}: {self.linear_count:.3f}; at the optimal "
            f"run's final σ²: {counts}",
            f"step at which half of the latents are collapsed: {steps}",
            f"latents collapsed in only one of the annealed and constant runs, per seed: "
            f"{differing} of {self.latent}",
        ]
        return "\n".join(lines)

    def glue_values(self) -> dict[str, Any]:
        """Means over seeds per kind of run (constant, annealed, optimal) that the prose quotes."""
        constant, annealed = self.kind == "constant", self.kind == "annealed"
        optimal = self.kind == "optimal"
        half = self.half_collapsed_steps()
        elbo = self.final_elbo
        return {
            "half_constant": float(half[constant].mean()),
            "half_annealed": float(half[annealed].mean()),
            "constant_final": float(self.final_fraction[constant].mean()),
            "annealed_final": float(self.final_fraction[annealed].mean()),
            "effect_max": float(np.abs(self.annealing_effect).max()),
            "differing": int(self.differing_latents().max()),
            "elbo_gap": float(elbo[annealed].mean() - elbo[constant].mean()),
            "optimal_sigma2": float(self.final_sigma2[optimal].mean()),
            "optimal_final": float(self.final_fraction[optimal].mean()),
            "optimal_linear": float(self.linear_count_optimal[optimal].mean()),
            "optimal_elbo": float(elbo[optimal].mean()),
            "constant_elbo": float(elbo[constant].mean()),
            "steps": self.steps,
            "warmup": self.warmup,
        }

    def half_collapsed_steps(self) -> np.ndarray:
        """First recorded step at which half of each run's latents are collapsed again, after
        the initial drop below one half (NaN where it never happens): shape (R,)."""
        steps = np.full(self.fraction.shape[1], np.nan)
        for r, fraction in enumerate(self.fraction.T):
            below = np.flatnonzero(fraction < 0.5)
            if below.size:
                reached = np.flatnonzero(fraction[below[0] :] >= 0.5) + below[0]
                if reached.size:
                    steps[r] = float(self.runs.steps[reached[0]])
        return steps


def differing_latents(runs: AnnealedRuns, epsilon: float, seeds: Sequence[int]) -> np.ndarray:
    """Per seed: latents collapsed at ``epsilon`` in exactly one of its annealed and constant runs.

    Both runs of a seed start from the same weights, so latent i is the same unit in both; the
    count is over the final record. Equal collapsed *fractions* can hide different collapsed
    *sets*: this is the size of their symmetric difference, shape (S,).
    """
    kind = run_kinds(runs)
    column = {(kind[r], spec.seed): r for r, spec in enumerate(runs.specs)}
    collapsed = runs.thresholds[-1] < epsilon  # (R, q)
    return np.array(
        [
            int(np.sum(collapsed[column["annealed", s]] != collapsed[column["constant", s]]))
            for s in seeds
        ]
    )


def run_kinds(runs: AnnealedRuns) -> np.ndarray:
    """``"constant"``, ``"annealed"`` or ``"optimal"`` per run, (R,)."""
    return np.array(
        [
            "optimal" if s.noise == "optimal" else "annealed" if s.warmup else "constant"
            for s in runs.specs
        ]
    )


def annealing_key(config: AnnealingConfig, data_id: str) -> dict[str, Any]:
    """Everything that determines the deep runs: their results-cache key."""
    fields = config.as_dict()
    for name in ("preset", "epsilon", "long_steps", "long_seeds", "long_record_every"):
        fields.pop(name)  # reading the results, or other runs
    return {"experiment": "kl_annealing", "data": data_id, "dtype": "float32", **fields}


def default_cache() -> ResultsCache:
    """Results cache fingerprinted by the code that trains the runs."""
    return ResultsCache(fingerprint=source_fingerprint(COMPUTING_MODULES))


def annealing_runs(
    config: AnnealingConfig,
    *,
    cache: ResultsCache | None = None,
    device: str | torch.device | None = "auto",
    progress: bool | None = None,
) -> tuple[AnnealedRuns, str]:
    """The runs of ``config``: from the results cache, else trained now (and cached).

    The ``reader`` preset first reads them from the shipped long runs (:func:`book_runs_from_long`).
    """
    if config.preset == READER:
        runs, provenance = book_runs_from_long(config, cache=cache)
        if runs is not None:
            return runs, provenance
    cache = cache or default_cache()
    images, data_id = data_for(config)
    key = annealing_key(config, data_id)
    loaded = cache.load(key)
    if loaded is not None:
        info = loaded[1].get("info", {})
        return AnnealedRuns.from_arrays(loaded[0]), (
            f"read from the results cache (trained {loaded[1].get('created', '?')[:10]} in "
            f"{info.get('seconds', float('nan')):.0f} s with {info.get('threads', '?')} thread(s))"
        )
    cache.check_writable()  # before training: runs that cannot be cached are not started
    runs = train_annealed(
        images,
        config.arch,
        config.specs(),
        steps=config.steps,
        lr=config.lr,
        record_every=config.record_every,
        delta=config.delta,
        device=device,
        progress=progress,
    )
    info = {"seconds": runs.seconds, "threads": torch.get_num_threads()}
    cache.save(key, runs.arrays(), info)
    return runs, (
        f"trained now on {resolve_device(device)} in {runs.seconds:.0f} s "
        f"with {torch.get_num_threads()} thread(s)"
    )


@figure(
    "kl-annealing",
    chapter=CHAPTER,
    plot="lincollapse.plotting.beta:plot_annealing",
    config=AnnealingConfig,
)
def kl_annealing(
    config: AnnealingConfig | None = None,
    *,
    cache: ResultsCache | None = None,
    device: str | torch.device | None = "auto",
) -> AnnealingResult:
    """Deep VAE at a collapsing σ²: collapse vs step with and without KL warm-up, and optimal σ²."""
    config = config or AnnealingConfig.for_preset()
    runs, provenance = annealing_runs(config, cache=cache, device=device)
    fraction = runs.collapsed_fraction(config.epsilon)
    kind = run_kinds(runs)
    constant = {s.seed: r for r, s in enumerate(runs.specs) if kind[r] == "constant"}
    annealed = {s.seed: r for r, s in enumerate(runs.specs) if kind[r] == "annealed"}
    effect = np.array([fraction[-1, annealed[s]] - fraction[-1, constant[s]] for s in config.seeds])
    eigenvalues = covariance_eigenvalues(data_for(config)[0])
    return AnnealingResult(
        runs=runs,
        labels=[s.label for s in runs.specs],
        kind=kind,
        fraction=fraction,
        final_fraction=fraction[-1],
        final_elbo=runs.elbo[-1],
        final_sigma2=runs.effective_sigma2[-1],
        annealing_effect=effect,
        linear_count=float(linear_collapse_prediction(eigenvalues, config.sigma2, config.latent)),
        linear_count_optimal=linear_collapse_prediction(
            eigenvalues, runs.effective_sigma2[-1], config.latent
        ),
        eigenvalues=eigenvalues,
        sigma2=config.sigma2,
        epsilon=config.epsilon,
        warmup=config.warmup,
        steps=config.steps,
        latent=config.latent,
        preset=config.preset,
        provenance=provenance,
    )


# --------------------------------------------------------------------------------------------
# Is the book preset long enough?
# --------------------------------------------------------------------------------------------

KINDS = ("constant", "annealed", "optimal")


def annealing_reference_path(preset: str) -> Path:
    """Stem of the shipped long runs of ``preset``: ``results/kl_annealing_long_<preset>``."""
    return RESULTS_DIR / f"kl_annealing_long_{preset}"


def long_annealing_runs(
    config: AnnealingConfig,
    *,
    cache: ResultsCache | None = None,
    device: str | torch.device | None = "auto",
    train_missing: bool = False,
    progress: bool | None = None,
) -> tuple[AnnealedRuns | None, str]:
    """The long runs of ``config`` (:meth:`AnnealingConfig.long_config`) and where they came from.

    In order: the shipped reference (validated: checksums and configuration; its behaviour is
    checked by the tests, :func:`annealing_probe`), the
    results cache, training now (only when ``train_missing``). ``(None, reason)`` otherwise.
    """
    cache = cache or default_cache()
    long = config.long_config()
    key = annealing_key(long, data_for(long)[1])
    stem = annealing_reference_path(results_preset(config.preset))
    try:
        arrays, meta = load_shipped(stem, key)
        return AnnealedRuns.from_arrays(arrays), shipped_provenance(stem, meta)
    except ReferenceResultError as error:
        problem = str(error)
    if not train_missing and cache.load(key) is None:
        return None, f"{problem}; not in the results cache either"
    return annealing_runs(long, cache=cache, device=device, progress=progress)


def book_runs_from_long(
    config: AnnealingConfig, *, cache: ResultsCache | None = None
) -> tuple[AnnealedRuns | None, str]:
    """The runs of ``config`` cut from its long runs (shipped or cached, never trained).

    With a constant learning rate each run of ``config`` whose seed is in ``long_seeds`` is the
    first ``steps`` steps of a long run (same weights, noise and rate), so its records are the
    long run's up to ``steps``, at the long runs' record spacing. ``(None, reason)`` when the
    long runs are absent, lack a record at ``steps`` or do not hold every run of ``config``.
    """
    long, provenance = long_annealing_runs(config, cache=cache, train_missing=False)
    if long is None:
        return None, provenance
    if config.steps not in long.steps:
        return None, f"the long runs have no record at step {config.steps}"
    try:
        columns = [long.specs.index(spec) for spec in config.specs()]
    except ValueError:
        return None, "the long runs do not hold every run of this configuration"
    rows = long.steps <= config.steps
    runs = AnnealedRuns(
        specs=config.specs(),
        steps=long.steps[rows],
        elbo=long.elbo[rows][:, columns],
        beta=long.beta[rows][:, columns],
        effective_sigma2=long.effective_sigma2[rows][:, columns],
        thresholds=long.thresholds[rows][:, columns],
        kl_mean=long.kl_mean[rows][:, columns],
        seconds=float("nan"),
        delta=long.delta,
    )
    return runs, (
        f"the book preset's runs, read as the first {config.steps:,} steps of its long runs "
        f"(records every {config.long_record_every} steps; {provenance})"
    )


@dataclasses.dataclass(frozen=True)
class AnnealingConvergence(Report):
    """The book preset's annealing runs against long runs of the same models.

    Attributes
    ----------
    book : AnnealingResult
        The preset's runs (what the chapter's figure shows).
    long : AnnealedRuns or None
        The long runs (``None`` when neither shipped, cached nor trained).
    long_kind : ndarray (R2,) of str
    long_fraction : ndarray (k2, R2) or None
        Collapsed fraction at ε of the long runs per record.
    provenance : str
        Where the long runs came from, or why they are absent.
    book_end, long_end : dict of str to float
        Per kind: mean over seeds of the final collapsed fraction (NaN when absent).
    gap : dict of str to float
        Per kind: ``book_end − long_end``.
    plateau_range : dict of str to float
        Per kind: largest (over seeds) max − min of the long runs' fraction over their last
        quarter of steps: how much they still move.
    prefix_difference : float
        Largest |book − long| collapsed fraction at the steps both recorded, over the runs both
        have (same kind and seed): 0 up to float round-off, since the book runs are the long
        runs' first steps (NaN without long runs).
    elbo_advantage : ndarray (k2, S)
        Per long-run seed and record: ELBO (β = 1) annealed − constant, nats per image.
    annealing_effect : ndarray (S,)
        Per long-run seed: final collapsed fraction annealed − constant.
    tolerance : float
    """

    book: AnnealingResult
    long: AnnealedRuns | None
    long_kind: np.ndarray
    long_fraction: np.ndarray | None
    provenance: str
    book_end: dict[str, float]
    long_end: dict[str, float]
    gap: dict[str, float]
    plateau_range: dict[str, float]
    prefix_difference: float
    elbo_advantage: np.ndarray
    annealing_effect: np.ndarray
    tolerance: float

    @property
    def long_available(self) -> bool:
        return self.long is not None

    def differing_latents(self) -> np.ndarray:
        """Per long-run seed: latents collapsed in only one of the annealed and constant runs
        at the end (empty without long runs)."""
        if self.long is None:
            return np.zeros(0, dtype=int)
        seeds = sorted({s.seed for s in self.long.specs})
        return differing_latents(self.long, self.book.epsilon, seeds)

    def agrees(self, kind: str) -> bool:
        """|gap| ≤ tolerance for ``kind`` (False without long runs)."""
        return bool(abs(self.gap[kind]) <= self.tolerance)

    def table(self) -> str:
        """The book runs against the long runs: prefix check, end states per kind, the annealing
        effect and ELBO advantage per seed, and the latents that differ (empty without long
        runs)."""
        if not self.long_available:
            return ""
        lines = [
            f"book runs = first steps of the long runs: largest difference in collapsed fraction "
            f"{self.prefix_difference:.3g}",
            f"{'kind':<9} {'book end':>9} {'long end':>9} {'gap':>7} {'long, last 25 % range':>22}",
        ]
        for kind in KINDS:
            lines.append(
                f"{kind:<9} {self.book_end[kind]:>9.3f} {self.long_end[kind]:>9.3f} "
                f"{self.gap[kind]:>+7.3f} {self.plateau_range[kind]:>22.3f}"
            )
        lines.append(
            "annealed − constant at the end, per seed: collapsed fraction "
            + ", ".join(f"{e:+.3f}" for e in self.annealing_effect)
            + "; ELBO "
            + ", ".join(f"{a:+.1f}" for a in self.elbo_advantage[-1])
            + " nats"
        )
        lines.append(
            "latents collapsed in only one of the two long runs, per seed: "
            + ", ".join(map(str, self.differing_latents()))
        )
        return "\n".join(lines)

    def verdict(self) -> str:
        """Whether the book preset's end state agrees with the long runs, in one paragraph."""
        preset = self.book.preset
        bad = [k for k in ("constant", "annealed") if not self.agrees(k)]
        if not self.long_available:
            text = "The long runs are ABSENT, so the book preset's end state is unchecked: "
            text += self.provenance
        elif not bad:
            text = (
                f"With and without the warm-up, the {preset} preset's final collapsed fraction "
                f"agrees with the long runs within {self.tolerance:g}."
            )
        else:
            text = (
                f"The {preset} preset does NOT agree with the long runs within "
                f"{self.tolerance:g} for the {' and '.join(bad)} runs."
            )
        if self.long_available and not self.agrees("optimal"):
            text += (
                f" The optimal-σ² run does NOT: it ends {self.gap['optimal']:+.3f} from the "
                f"long runs, so its book-preset number is a snapshot of a run in motion."
            )
        return text

    def glue_values(self) -> dict[str, Any]:
        """End states, gaps and plateau ranges per kind, the annealing effect, the differing
        latents and ELBO advantages, the verdict and the long runs' length (NaN or a dash
        without long runs)."""
        values: dict[str, Any] = {}
        for kind in KINDS:
            values[f"long_{kind}"] = self.long_end[kind] if self.long_available else math.nan
            values[f"gap_{kind}"] = self.gap[kind] if self.long_available else math.nan
            values[f"plateau_{kind}"] = (
                self.plateau_range[kind] if self.long_available else math.nan
            )
        if self.long_available:
            book_row = list(self.long.steps).index(self.book.steps)
            values["long_effect_max"] = float(np.abs(self.annealing_effect).max())
            values["long_differing"] = int(self.differing_latents().max())
            values["long_elbo_gap_book"] = float(self.elbo_advantage[book_row].mean())
            values["long_elbo_gap_end"] = float(self.elbo_advantage[-1].mean())
        else:
            for name in ("long_effect_max", "long_elbo_gap_book", "long_elbo_gap_end"):
                values[name] = math.nan
            values["long_differing"] = "—"
        values["long_verdict"] = self.verdict()
        values["long_steps"] = f"{int(self.long.steps[-1]):,}" if self.long_available else "—"
        return values

    def long_fraction_at(self, kind: str, step: int) -> float:
        """Mean over seeds of the long runs' collapsed fraction of ``kind`` at record ``step``."""
        if self.long is None:
            return float("nan")
        row = np.flatnonzero(self.long.steps == step)
        if row.size == 0:
            raise ValueError(f"the long runs have no record at step {step}")
        return float(self.long_fraction[row[0], self.long_kind == kind].mean())


@figure(
    "kl-annealing-convergence",
    chapter=CHAPTER,
    plot="lincollapse.plotting.beta:plot_annealing_convergence",
    config=AnnealingConfig,
    costs={
        "fast": "≈ 5 s (the long runs are trained)",
        "book": "< 1 s after kl-annealing (long runs shipped; 13 min to regenerate, 2 cores)",
        "paper": "≈ 10 h on 2 CPU cores (projected: 0.1 s per run-step); not shipped",
    },
)
def kl_annealing_convergence(
    config: AnnealingConfig | None = None,
    *,
    cache: ResultsCache | None = None,
    device: str | torch.device | None = "auto",
    train_long: bool | None = None,
) -> AnnealingConvergence:
    """Is the book preset long enough? Its annealing runs against long runs (two seeds)."""
    config = config or AnnealingConfig.for_preset()
    book = kl_annealing(config, cache=cache, device=device)
    train_long = config.preset == "fast" if train_long is None else train_long
    long, provenance = long_annealing_runs(
        config, cache=cache, device=device, train_missing=train_long
    )
    nan = {kind: float("nan") for kind in KINDS}
    book_end = {k: float(book.final_fraction[book.kind == k].mean()) for k in KINDS}
    if long is None:
        return AnnealingConvergence(
            book,
            None,
            np.array([], dtype=str),
            None,
            provenance,
            book_end,
            dict(nan),
            dict(nan),
            dict(nan),
            float("nan"),
            np.empty((0, 0)),
            np.empty(0),
            TOLERANCE,
        )
    kind = run_kinds(long)
    fraction = long.collapsed_fraction(config.epsilon)
    long_end = {k: float(fraction[-1, kind == k].mean()) for k in KINDS}
    spread = plateau_range(long.steps, fraction)
    plateau = {k: float(spread[kind == k].max()) for k in KINDS}
    common, book_rows, long_rows = np.intersect1d(book.runs.steps, long.steps, return_indices=True)
    differences = [
        np.abs(book.fraction[book_rows, r] - fraction[long_rows, s]).max()
        for r, spec in enumerate(book.runs.specs)
        for s, other in enumerate(long.specs)
        if spec == other and common.size
    ]
    seeds = sorted({s.seed for s in long.specs})
    column = {(kind[r], spec.seed): r for r, spec in enumerate(long.specs)}
    advantage = np.stack(
        [long.elbo[:, column["annealed", s]] - long.elbo[:, column["constant", s]] for s in seeds],
        axis=1,
    )
    effect = np.array(
        [fraction[-1, column["annealed", s]] - fraction[-1, column["constant", s]] for s in seeds]
    )
    return AnnealingConvergence(
        book=book,
        long=long,
        long_kind=kind,
        long_fraction=fraction,
        provenance=provenance,
        book_end=book_end,
        long_end=long_end,
        gap={k: book_end[k] - long_end[k] for k in KINDS},
        plateau_range=plateau,
        prefix_difference=float(max(differences)) if differences else float("nan"),
        elbo_advantage=advantage,
        annealing_effect=effect,
        tolerance=TOLERANCE,
    )


def annealing_probe(config: AnnealingConfig) -> Probe:
    """Behaviour probe of the runs of ``config`` (:mod:`lincollapse.references`).

    Their first :data:`~lincollapse.references.PROBE_STEPS` steps replayed in float64 on the
    CPU, recording every step (every array of :meth:`AnnealedRuns.arrays`).
    """

    def probe() -> dict[str, np.ndarray]:
        runs = train_annealed(
            data_for(config)[0],
            config.arch,
            config.specs(),
            steps=PROBE_STEPS,
            lr=config.lr,
            record_every=1,
            delta=config.delta,
            dtype=torch.float64,
            device="cpu",
            progress=False,
        )
        arrays = runs.arrays()
        return {k: arrays[k] for k in ("elbo", "beta", "effective_sigma2", "thresholds", "kl_mean")}

    return probe


def run_long_annealing(
    preset: str = "book",
    device: str = "auto",
    *,
    write_reference: bool = False,
    command: str | None = None,
    progress: bool | None = None,
) -> tuple[AnnealedRuns, str]:
    """Train (or read from the cache) the long runs of ``preset``; optionally ship them.

    With ``write_reference`` the runs are written to ``results/kl_annealing_long_<preset>``
    with the configuration, the code fingerprint, ``command``, the machine and the wall time.
    """
    config = AnnealingConfig.for_preset(preset)
    long = config.long_config()
    runs, provenance = annealing_runs(long, device=device, progress=progress)
    if write_reference:
        info = reference_info(
            command
            or f"python -m lincollapse.experiments.beta --long --preset {preset} --write-reference",
            str(resolve_device(device)),
            runs.seconds,
            source=provenance,
        )
        save_shipped(
            annealing_reference_path(preset),
            annealing_key(long, data_for(long)[1]),
            runs.arrays(),
            annealing_probe(long),
            info,
            source_fingerprint(COMPUTING_MODULES),
        )
    return runs, provenance


def long_annealing_summary(runs: AnnealedRuns, preset: str) -> str:
    """Per run, the collapsed fraction at the last records of the long annealing runs."""
    fraction = runs.collapsed_fraction(AnnealingConfig.for_preset(preset).epsilon)
    lines = []
    for r, spec in enumerate(runs.specs):
        tail = ", ".join(
            f"{step}: {f:.3f}" for step, f in zip(runs.steps[-4:], fraction[-4:, r], strict=True)
        )
        lines.append(f"{spec.label}: collapsed fraction at the last records {tail}")
    return "\n".join(lines)


if __name__ == "__main__":  # the command in results/kl_annealing_long_*.json; see lincollapse.cli
    from lincollapse.cli import main_for_module

    raise SystemExit(main_for_module(__spec__.name))
