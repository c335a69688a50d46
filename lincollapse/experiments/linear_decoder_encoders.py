"""Experiment of the chapter *Linear decoder, varying encoders* (``linear_decoder_encoders``).

:func:`encoder_comparison` trains a linear decoder with the linear, deep-linear and ReLU-MLP
encoders of :mod:`lincollapse.linear_decoder_vae`, answered against the exact optimum ℓ*(q) of
pPCA (``ppca.max_log_likelihood``), which is the global maximum of the ELBO whatever the encoder.

Every run is :func:`lincollapse.linear_decoder_vae_training.train_vae` (Adam, full batch, σ²
learned from 1) and every recorded ELBO is the analytic one, evaluated in float64 on all images.

Presets: ``book`` (the defaults) uses q = 20 on 1000 images so that the chapter runs in a few
minutes on a 2-core CPU; ``paper`` uses q = 200, Adam lr 1e-3 and 12,000 steps (the official
notebook's) and the reproductions' 1024-512 encoders; ``fast`` is a seconds-long smoke test.

Timing and fidelity table of a preset: ``python -m lincollapse bench training --preset book``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from lincollapse.experiments import figure
from lincollapse.experiments.gap_curves import (
    GapCurves,
    curves_table,
    train_curve,
    training_data,
)
from lincollapse.linear_decoder_vae import ENCODER_KINDS
from lincollapse.presets import ExperimentConfig
from lincollapse.reader import read_or_compute

ENCODER_LABELS = {
    "linear": "(a) linear, shared D",
    "deep-linear": "(b) deep linear, D(x)",
    "mlp": "(c) ReLU MLP",
}


@dataclasses.dataclass(frozen=True)
class EncoderComparisonConfig(ExperimentConfig):
    """Settings of :func:`encoder_comparison`; defaults are the ``book`` preset.

    ``book``: 1000 images, q = 20, seeds 0–2, Adam lr 5e-3, 1,500 full-batch steps (every
    encoder sees all 1000 images at each step), float32 arithmetic (recorded ELBOs float64),
    deep-linear encoder 784-64-(20, 20), MLP 784-64-64-(20, 20): widths ≥ 2q, so the MLP can
    represent the optimal linear encoder exactly. ``paper``: q = 200, lr 1e-3, 12,000 steps,
    the reproductions' 784-1024-512 widths for both amortised encoders, float64. ``fast``: 200
    images, q = 5, 150 steps, widths 16 (smoke test).
    """

    OVERRIDES: ClassVar[dict] = {
        "fast": dict(
            n=200,
            q=5,
            steps=150,
            record_every=10,
            deep_linear_hidden=(16,),
            mlp_hidden=(16, 16),
            dtype="float64",
        ),
        "paper": dict(
            q=200,
            lr=1e-3,
            steps=12_000,
            record_every=100,
            deep_linear_hidden=(1024, 512),
            mlp_hidden=(1024, 512),
            dtype="float64",
        ),
        "reader": {},  # the book's runs, read from results/reader/ (lincollapse.reader)
    }
    COSTS: ClassVar[dict[str, str]] = {
        "fast": "≈ 5 s",
        "book": "≈ 2.6 min for the whole chapter (158 s measured 2026-12-01, 2 cores)",
        "reader": "< 1 s (the book's runs, shipped)",
        "paper": "hours (CPU)",
    }

    n: int = 1000
    data_seed: int = 0
    q: int = 20
    seeds: tuple[int, ...] = (0, 1, 2)
    kinds: tuple[str, ...] = ENCODER_KINDS
    steps: int = 1500
    lr: float = 5e-3
    record_every: int = 25
    sigma2_init: float = 1.0
    dtype: str = "float32"
    deep_linear_hidden: tuple[int, ...] = (64,)
    mlp_hidden: tuple[int, ...] = (64, 64)

    def hidden(self, kind: str) -> tuple[int, ...] | None:
        return {"deep-linear": self.deep_linear_hidden, "mlp": self.mlp_hidden}.get(kind)


@dataclasses.dataclass
class EncoderComparisonResult(GapCurves):
    """ELBO curves of a linear decoder trained with each encoder kind.

    Attributes
    ----------
    steps : ndarray of shape (k,)
    elbo : dict kind -> ndarray of shape (R, k)
        Analytic ELBO (float64) along each seed's run.
    optimum : float
        ℓ*(q): the ELBO's global maximum for every encoder.
    grams : dict kind -> ndarray of shape (q, q)
        WᵀW of the decoder at the end of the first seed's run.
    decoders : dict kind -> ndarray of shape (d, q)
        W at the end of the first seed's run (its σ² is ``sigma2[kind][0]``).
    sigma2 : dict kind -> ndarray of shape (R,)
        Final σ² of each run.
    sigma2_mle : float
        σ²_MLE(q), the σ² of the optimum.
    eigenvalues : ndarray of shape (q,)
        λ_1..λ_q: at the optimum the diagonal of WᵀW is λ_j − σ²_MLE (in some order).
    seconds : dict kind -> float
    config : EncoderComparisonConfig
    """

    steps: np.ndarray
    elbo: dict[str, np.ndarray]
    optimum: float
    grams: dict[str, np.ndarray]
    decoders: dict[str, np.ndarray]
    sigma2: dict[str, np.ndarray]
    sigma2_mle: float
    eigenvalues: np.ndarray
    seconds: dict[str, float]
    config: EncoderComparisonConfig

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.elbo)

    def off_diagonal(self, kind: str) -> float:
        """max |(WᵀW)_ij| / max (WᵀW)_ii over i ≠ j: 0 for orthogonal columns."""
        gram = self.grams[kind]
        off = gram - np.diag(np.diag(gram))
        return float(np.abs(off).max() / np.abs(np.diag(gram)).max())

    def table(self) -> str:
        """Final gap (mean ± sd over seeds) and steps to 1 and 0.1 nat, per encoder."""
        return curves_table(self, self.kinds, ENCODER_LABELS)

    def ranking(self, tolerance: float = 0.1) -> str:
        """The encoders ordered by their mean final gap, and which end within ``tolerance``.

        A sentence for the chapter, computed from the runs: the order depends on the preset and
        the seeds, and a gap near ``tolerance`` can fall on either side of it.
        """
        names = {"linear": "linear", "deep-linear": "deep linear", "mlp": "MLP"}
        mean = {kind: float(self.final_gaps(kind).mean()) for kind in self.kinds}
        order = sorted(self.kinds, key=mean.__getitem__)
        within = [names.get(k, k) for k in order if np.all(self.final_gaps(k) <= tolerance)]
        outside = [names.get(k, k) for k in order if names.get(k, k) not in within]
        ranked = ", ".join(f"{names.get(k, k)} ({mean[k]:.3f})" for k in order)
        return (
            f"Ordered by mean final gap (nats per image): {ranked}. Within {tolerance:g} nat of "
            f"ℓ*(q) at the end for every seed: {', '.join(within) or 'none'}; not for every "
            f"seed: {', '.join(outside) or 'none'}."
        )


@figure(
    "linear-decoder-encoders",
    chapter="linear_decoder_encoders",
    plot="lincollapse.plotting.training_linear:plot_encoder_comparison",
    config=EncoderComparisonConfig,
    paper_figure="linear decoder with linear / deep / nonlinear encoders (paper; course report)",
    costs=EncoderComparisonConfig.COSTS,
)
def encoder_comparison(config: EncoderComparisonConfig | None = None) -> EncoderComparisonResult:
    """A linear decoder trained with linear, deep-linear and ReLU-MLP encoders."""
    config = config or EncoderComparisonConfig.for_preset()
    return read_or_compute(config, _encoder_comparison, EncoderComparisonResult)


def _encoder_comparison(config: EncoderComparisonConfig) -> EncoderComparisonResult:
    x, eigenvalues = training_data(config)
    curves: dict[str, list[np.ndarray]] = {}
    grams, decoders, sigma2, seconds = {}, {}, {}, {}
    steps = optimum = None
    for kind in config.kinds:
        curves[kind], sigma2[kind], seconds[kind] = [], [], 0.0
        for index, seed in enumerate(config.seeds):
            run = train_curve(config, x, eigenvalues, seed, kind=kind, hidden=config.hidden(kind))
            curves[kind].append(run.elbo)
            sigma2[kind].append(run.model.decoder.sigma2.item())
            seconds[kind] += run.seconds
            steps, optimum = run.steps, run.optimum
            if index == 0:
                grams[kind] = run.model.gram()
                decoders[kind] = run.model.decoder.W.detach().numpy().copy()
    d = eigenvalues.size
    return EncoderComparisonResult(
        steps=steps,
        elbo={k: np.stack(v) for k, v in curves.items()},
        optimum=float(optimum),
        grams=grams,
        decoders=decoders,
        sigma2={k: np.asarray(v) for k, v in sigma2.items()},
        sigma2_mle=float(np.clip(eigenvalues[config.q :], 0, None).sum() / (d - config.q)),
        eigenvalues=eigenvalues[: config.q].copy(),
        seconds=seconds,
        config=config,
    )
