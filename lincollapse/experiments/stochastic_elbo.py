"""Experiment of the chapter *Stochastic vs analytic ELBO* (``stochastic_elbo``).

:func:`stochastic_vs_analytic` trains the linear VAE with the analytic reconstruction term and
with a single-sample reparameterised estimate of it (KL analytic in both), from the same
initialisation with the same optimiser, and measures the variance of the single-sample
gradient. The runs are answered against the exact optimum ℓ*(q) of pPCA
(``ppca.max_log_likelihood``), the global maximum of the ELBO.

Every run is :func:`lincollapse.linear_decoder_vae_training.train_vae` (Adam, full batch, σ²
learned from 1) and every recorded ELBO is the analytic one, evaluated in float64 on all images.

Presets: ``book`` (the defaults) uses q = 20 on 1000 images so that the chapter runs in a few
minutes on a 2-core CPU; ``paper`` uses q = 200, Adam lr 1e-3 and 12,000 steps (the official
notebook's); ``fast`` is a seconds-long smoke test.

Timing and fidelity table of a preset: ``python -m lincollapse bench training --preset book``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from lincollapse.experiments import figure
from lincollapse.experiments.gap_curves import (
    GapCurves,
    curves_table,
    train_curve,
    training_data,
)
from lincollapse.linear_decoder_vae import LinearDecoderVAE
from lincollapse.presets import ExperimentConfig
from lincollapse.reader import read_or_compute
from lincollapse.reporting import Report

ESTIMATOR_LABELS = {"analytic": "analytic reconstruction", "sample": "single-sample estimate"}


@dataclasses.dataclass(frozen=True)
class StochasticELBOConfig(ExperimentConfig):
    """Settings of :func:`stochastic_vs_analytic`; defaults are the ``book`` preset.

    ``book``: 1000 images, q = 20, seeds 0–2, Adam lr 5e-3 (constant), 1,500 full-batch steps,
    float32 arithmetic (recorded ELBOs in float64). q = 20 rather than the paper's 200 and the
    larger learning rate keep both chapters within ≈ 5 minutes on 2 CPU cores; the optimum
    line is ℓ*(20). ``paper``: q = 200, lr 1e-3, 12,000 steps, float64. ``fast``: 200 images,
    q = 5, 150 steps (smoke test).

    Attributes
    ----------
    n, data_seed : int
        MNIST images and the seed of their subset.
    q : int
    seeds : tuple of int
        Initialisations; each is trained with both estimators.
    steps, lr, record_every : int, float, int
    sigma2_init : float
        σ² starts here and is learned.
    dtype : str
        Training arithmetic, ``"float32"`` or ``"float64"``.
    gradient_checkpoints : tuple of int
        Steps of the analytic run of the first seed at which the gradient variance is measured
        (multiples of ``record_every``, or 0).
    gradient_samples : int
        Single-sample gradients drawn at each checkpoint.
    """

    OVERRIDES: ClassVar[dict] = {
        "fast": dict(
            n=200,
            q=5,
            steps=150,
            record_every=10,
            gradient_checkpoints=(0, 50, 150),
            gradient_samples=20,
            dtype="float64",
        ),
        "paper": dict(
            q=200,
            lr=1e-3,
            steps=12_000,
            record_every=100,
            gradient_checkpoints=(0, 1000, 4000, 12_000),
            dtype="float64",
        ),
        "reader": {},  # the book's runs, read from results/reader/ (lincollapse.reader)
    }
    COSTS: ClassVar[dict[str, str]] = {
        "fast": "≈ 5 s",
        "book": "≈ 2 min for the whole chapter (123 s measured 2026-12-01, 2 cores)",
        "reader": "< 1 s (the book's runs, shipped)",
        "paper": "hours (CPU)",
    }

    n: int = 1000
    data_seed: int = 0
    q: int = 20
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 1500
    lr: float = 5e-3
    record_every: int = 25
    sigma2_init: float = 1.0
    dtype: str = "float32"
    gradient_checkpoints: tuple[int, ...] = (0, 250, 500, 1500)
    gradient_samples: int = 50


@dataclasses.dataclass
class GradientVariance:
    """The single-sample gradient of the ELBO with respect to W against the analytic one.

    Measured at parameters taken along the analytic run of the first seed. For each checkpoint,
    K single-sample gradients g_k and the analytic gradient g are computed in float64.

    Attributes
    ----------
    steps : ndarray of shape (m,)
    analytic_norm : ndarray of shape (m,)
        ‖g‖ (Frobenius).
    noise_norm : ndarray of shape (m,)
        √(tr Cov g_k): root of the summed variance of the single-sample gradient's entries.
    bias_norm : ndarray of shape (m,)
        ‖mean_k g_k − g‖.
    bias_expected : ndarray of shape (m,)
        √(tr Cov g_k / K): what ``bias_norm`` should be about for an unbiased estimator.
    gap : ndarray of shape (m,)
        ℓ*(q) − ELBO at the checkpoint.
    samples : int
        K.
    """

    steps: np.ndarray
    analytic_norm: np.ndarray
    noise_norm: np.ndarray
    bias_norm: np.ndarray
    bias_expected: np.ndarray
    gap: np.ndarray
    samples: int

    @property
    def noise_to_signal(self) -> np.ndarray:
        """noise_norm / analytic_norm: above 1, a single step's direction is mostly noise."""
        return self.noise_norm / self.analytic_norm

    def table(self) -> str:
        lines = [
            f"{'step':>6} {'gap (nats)':>11} {'|grad|':>10} {'noise':>10} {'noise/|grad|':>12} "
            f"{'|bias|':>9} {'~SE':>9}"
        ]
        for row in zip(
            self.steps,
            self.gap,
            self.analytic_norm,
            self.noise_norm,
            self.noise_to_signal,
            self.bias_norm,
            self.bias_expected,
            strict=True,
        ):
            step, gap, g, noise, ratio, bias, expected = row
            lines.append(
                f"{int(step):>6} {gap:>11.4g} {g:>10.4g} {noise:>10.4g} {ratio:>12.3g} "
                f"{bias:>9.3g} {expected:>9.3g}"
            )
        return "\n".join(lines)


@dataclasses.dataclass
class StochasticELBOResult(GapCurves, Report):
    """Training curves of the linear VAE with the analytic and the single-sample ELBO.

    Attributes
    ----------
    steps : ndarray of shape (k,)
    elbo : dict str -> ndarray of shape (R, k)
        ``"analytic"`` and ``"sample"``: analytic ELBO (float64, nats per image) of the
        parameters along each seed's run.
    optimum : float
        ℓ*(q).
    seconds : dict str -> float
        Total training time of each estimator's runs.
    gradient : GradientVariance
    config : StochasticELBOConfig
    """

    steps: np.ndarray
    elbo: dict[str, np.ndarray]
    optimum: float
    seconds: dict[str, float]
    gradient: GradientVariance
    config: StochasticELBOConfig

    def table(self) -> str:
        """Final gap (mean ± sd over seeds) and steps to 1 and 0.1 nat, per estimator."""
        return curves_table(self, ("analytic", "sample"), ESTIMATOR_LABELS)

    def glue_values(self) -> dict[str, Any]:
        """Per estimator the final gap (mean ± sd over seeds) and the steps to 1 and 0.1 nat;
        the gradient's noise-to-signal ratio and noise norm at the first and last checkpoint;
        the step budget. All as the text the chapter shows."""
        values: dict[str, Any] = {}
        for estimator in ("analytic", "sample"):
            gaps = self.final_gaps(estimator)
            values[f"{estimator}-gap"] = f"{gaps.mean():.3f} ± {gaps.std(ddof=1):.3f}"
            values[f"{estimator}-1"] = _describe_steps(self.steps_to(estimator, 1.0))
            values[f"{estimator}-01"] = _describe_steps(self.steps_to(estimator, 0.1))
        ratio, noise = self.gradient.noise_to_signal, self.gradient.noise_norm
        values["ratio-first"] = f"{ratio[0]:.2g}"
        values["ratio-last"] = f"{ratio[-1]:.2g}"
        values["noise-first"] = f"{noise[0]:.3g}"
        values["noise-last"] = f"{noise[-1]:.3g}"
        values["steps"] = f"{self.config.steps:,}"
        return values


def _describe_steps(steps: list[int | None]) -> str:
    """Mean steps over seeds, or how many seeds never got there."""
    reached = [s for s in steps if s is not None]
    if len(reached) == len(steps):
        return f"{int(np.mean(steps)):,} steps (mean over seeds)"
    return f"not reached by {len(steps) - len(reached)} of {len(steps)} seeds"


@figure(
    "stochastic-vs-analytic-elbo",
    chapter="stochastic_elbo",
    plot="lincollapse.plotting.training_linear:plot_stochastic_vs_analytic",
    config=StochasticELBOConfig,
    paper_figure="analytic vs stochastic ELBO training curves (paper; course report)",
    costs=StochasticELBOConfig.COSTS,
)
def stochastic_vs_analytic(config: StochasticELBOConfig | None = None) -> StochasticELBOResult:
    """Linear VAE trained with the analytic and the single-sample ELBO; gradient variance."""
    config = config or StochasticELBOConfig.for_preset()
    return read_or_compute(config, _stochastic_vs_analytic, StochasticELBOResult)


def _stochastic_vs_analytic(config: StochasticELBOConfig) -> StochasticELBOResult:
    x, eigenvalues = training_data(config)
    checkpoints = sorted(set(int(c) for c in config.gradient_checkpoints))
    for step in checkpoints:
        if step % config.record_every and step != config.steps or step > config.steps:
            raise ValueError(
                f"gradient checkpoint {step} is not a recorded step; use multiples of "
                f"record_every={config.record_every} up to steps={config.steps}"
            )
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def keep(step: int, model: LinearDecoderVAE) -> None:
        snapshots[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    curves: dict[str, list[np.ndarray]] = {"analytic": [], "sample": []}
    seconds = {"analytic": 0.0, "sample": 0.0}
    steps = optimum = model = None
    for index, seed in enumerate(config.seeds):
        for estimator in ("analytic", "sample"):
            first = index == 0 and estimator == "analytic"
            run = train_curve(
                config,
                x,
                eigenvalues,
                seed,
                kind="linear",
                estimator=estimator,
                checkpoints=checkpoints if first else (),
                on_checkpoint=keep if first else None,
            )
            curves[estimator].append(run.elbo)
            seconds[estimator] += run.seconds
            steps, optimum = run.steps, run.optimum
            if first:
                model = run.model
    gradient = gradient_variance(x, model, snapshots, optimum, config.gradient_samples)
    return StochasticELBOResult(
        steps=steps,
        elbo={k: np.stack(v) for k, v in curves.items()},
        optimum=float(optimum),
        seconds=seconds,
        gradient=gradient,
        config=config,
    )


def gradient_variance(
    x: torch.Tensor,
    model: LinearDecoderVAE,
    snapshots: dict[int, dict[str, torch.Tensor]],
    optimum: float,
    samples: int,
    seed: int = 12_345,
) -> GradientVariance:
    """Analytic vs single-sample gradient of the ELBO w.r.t. W at each snapshot (float64).

    Parameters
    ----------
    x : Tensor of shape (n, d)
    model : LinearDecoderVAE
        Float64 model whose parameters are replaced by each snapshot in turn (left at the last).
    snapshots : dict step -> state dict
    optimum : float
        ℓ*(q), for the gap column.
    samples : int
        K ≥ 2 single-sample gradients per snapshot.
    """
    if samples < 2:
        raise ValueError(f"samples must be >= 2 to estimate a variance, got {samples}")
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for step in sorted(snapshots):
        model.load_state_dict(snapshots[step])

        def grad(estimator: str) -> torch.Tensor:
            value = model.elbo(x, estimator, generator)
            (g,) = torch.autograd.grad(value, model.decoder.W)
            return g.detach()

        analytic = grad("analytic")
        draws = torch.stack([grad("sample") for _ in range(samples)])
        mean = draws.mean(dim=0)
        total_variance = float(draws.var(dim=0, unbiased=True).sum())
        with torch.no_grad():
            gap = optimum - float(model.elbo(x, "analytic"))
        rows.append(
            (
                step,
                float(analytic.norm()),
                total_variance**0.5,
                float((mean - analytic).norm()),
                (total_variance / samples) ** 0.5,
                gap,
            )
        )
    columns = [np.asarray(c) for c in zip(*rows, strict=True)] if rows else [np.zeros(0)] * 6
    return GradientVariance(
        steps=columns[0].astype(int),
        analytic_norm=columns[1],
        noise_norm=columns[2],
        bias_norm=columns[3],
        bias_expected=columns[4],
        gap=columns[5],
        samples=samples,
    )
