"""The deep-VAE figures of the chapter *β, σ² and KL annealing* (``beta_annealing``).

``kl-annealing``
    Deep Gaussian VAEs at a collapsing σ², trained with and without a linear KL warm-up (same
    seeds, so each pair starts from the same weights and sees the same noise), beside runs whose
    σ² is set at every step to its optimum, the mean squared error per pixel.
``kl-annealing-convergence``
    Is the book preset long enough? Its annealing runs against long runs of the same models
    (more steps, two seeds), shipped in ``results/kl_annealing_long_book.{npz,json}``.

The runs (configuration, training or loading, the long runs) are in
:mod:`lincollapse.experiments.kl_annealing_runs`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lincollapse.collapse import linear_collapse_prediction
from lincollapse.data import covariance_eigenvalues
from lincollapse.deep_runs import TOLERANCE, data_for, plateau_range
from lincollapse.experiments import figure
from lincollapse.experiments.kl_annealing_runs import (
    AnnealingConfig,
    annealing_runs,
    long_annealing_runs,
)
from lincollapse.kl_annealing import AnnealedRuns
from lincollapse.reporting import Report
from lincollapse.results_cache import ResultsCache

CHAPTER = "beta_annealing"
KINDS = ("constant", "annealed", "optimal")


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
