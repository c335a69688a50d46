"""What the figures of the chapter *The linear VAE* return, and how each reports itself.

:class:`LikelihoodCurve` (likelihood against latent size), :class:`GramResult` and its
:class:`GramRun` (Gram matrices of trained decoders), :class:`ElboGapResult` (the ELBO gap along
a rotation of the maximiser): the data of each figure, with the tables, summaries and glued
numbers the chapter quotes. The figure functions that compute them are in
:mod:`lincollapse.experiments.linear_vae`; the plots in :mod:`lincollapse.plotting.linear`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lincollapse import linear_vae
from lincollapse.experiments import linear_baselines
from lincollapse.reporting import Report

__all__ = ["ElboGapResult", "GramResult", "GramRun", "LikelihoodCurve"]


@dataclasses.dataclass(frozen=True)
class LikelihoodCurve:
    """Exact pPCA optimum, trained linear-VAE ELBO and fixed-σ² pPCA, per latent size.

    Attributes
    ----------
    latent_sizes : ndarray of shape (k,)
    ppca_optimum : ndarray of shape (k,)
        ℓ*(q), equation (ppca-max-loglik), nats per image.
    elbo : ndarray of shape (k,)
        Final analytic ELBO of the linear VAE trained by
        :func:`lincollapse.linear_vae_training.ascend_elbo`.
    fixed_sigma2_loglik : ndarray of shape (k,)
        Average log-likelihood of pPCA with σ² = σ²_MLE(reference_q) and the fixed-σ²
        maximiser as W (columns with λ_j ≤ σ² zero).
    fixed_sigma2 : float
    reference_q : int
    active_columns : ndarray of shape (k,)
        #{j ≤ q : λ_j > fixed σ²}.
    seconds, cpu_seconds, steps, evaluations : ndarray of shape (k,)
        Training cost per latent size (wall time, process CPU time).
    gram_ratio : ndarray of shape (k,)
        Off-diagonal ratio of the leading Gram block of the trained W.
    method : str
        Key of :data:`linear_baselines.LABELS` for the trainer used here.
    baselines : dict of str to BaselineRuns
        The shipped joint-training runs, when attached (else empty).
    baseline_provenance : str
        Where they come from, or why they are missing.
    """

    latent_sizes: np.ndarray
    ppca_optimum: np.ndarray
    elbo: np.ndarray
    fixed_sigma2_loglik: np.ndarray
    fixed_sigma2: float
    reference_q: int
    active_columns: np.ndarray
    seconds: np.ndarray
    cpu_seconds: np.ndarray
    steps: np.ndarray
    evaluations: np.ndarray
    gram_ratio: np.ndarray
    method: str
    baselines: dict[str, linear_baselines.BaselineRuns]
    baseline_provenance: str

    @property
    def gap(self) -> np.ndarray:
        """ℓ*(q) − ELBO, nats per image."""
        return self.ppca_optimum - self.elbo

    def baseline_gap(self, method: str) -> np.ndarray:
        """ℓ*(q) − final ELBO of a shipped method, per latent size."""
        return self.ppca_optimum - self.baselines[method].elbo

    def baseline_summary(self) -> str:
        """One sentence per shipped method: steps, CPU time and the range of its final gaps."""
        if not self.baselines:
            return f"The shipped joint-training runs are not shown ({self.baseline_provenance})."
        used = self.latent_sizes > 0  # at q = 0 only σ² is learned
        parts = []
        for name, base in self.baselines.items():
            gap = (self.ppca_optimum - base.elbo)[used]
            parts.append(
                f"{linear_baselines.LABELS[name]}, after {int(np.nanmax(base.steps)):,} steps "
                f"at each of the {used.sum()} latent sizes q > 0 "
                f"({np.nansum(base.cpu_seconds[used]) / 60:.0f} min of CPU time in all), ends "
                f"between {_nats(gap.min())} and {_nats(gap.max())} nats per image below ℓ*(q)"
            )
        return "; ".join(parts) + "."

    def table(self) -> str:
        """Plain-text table: the curve, then each method's gap and cost per latent size."""
        lines = [
            f"{'q':>4} {'l*(q)':>11} {'fixed-σ² pPCA':>14}   "
            f"{'method':<14} {'ELBO':>11} {'gap':>9} {'steps':>6} {'CPU s':>8} {'Gram ratio':>10}"
        ]
        runs = {self.method: (self.elbo, self.steps, self.cpu_seconds, self.gram_ratio)}
        for name, base in self.baselines.items():
            runs[name] = (base.elbo, base.steps, base.cpu_seconds, base.gram_ratio)
        for j, q in enumerate(self.latent_sizes):
            for i, (name, (elbo, steps, cpu, ratio)) in enumerate(runs.items()):
                head = (
                    f"{q:>4d} {self.ppca_optimum[j]:>11.4f} {self.fixed_sigma2_loglik[j]:>14.4f}"
                    if i == 0
                    else " " * 31
                )
                lines.append(
                    f"{head}   {name:<14} {elbo[j]:>11.4f} {self.ppca_optimum[j] - elbo[j]:>9.2e} "
                    f"{int(steps[j]):>6d} {cpu[j]:>8.1f} {ratio[j]:>10.3f}"
                )
        lines.append(
            f"total CPU time of {self.method}: {self.cpu_seconds.sum():.1f} s "
            f"(wall {self.seconds.sum():.1f} s)"
        )
        if self.baselines:
            lines.append(f"{', '.join(self.baselines)}: {self.baseline_provenance}")
        return "\n".join(lines)


def _nats(value: float) -> str:
    """A gap for prose: two significant digits, no exponent above 10."""
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"


@dataclasses.dataclass(frozen=True)
class GramRun:
    """One trained linear VAE seen through its Gram matrix.

    Attributes
    ----------
    label : str
    gram : ndarray of shape (block, block)
        Leading block of WᵀW (latents by decreasing ‖w_j‖).
    trace : dict of str to ndarray
        ``steps``, ``cpu_seconds``, ``elbo``, ``gram_ratio`` recorded during training.
    matched, cos2 : ndarray of shape (q,)
        For each column (by decreasing norm), the index of the closest principal direction
        and the squared cosine with it (:func:`linear_baselines.column_alignment`).
    """

    label: str
    gram: np.ndarray
    trace: dict[str, np.ndarray]
    matched: np.ndarray
    cos2: np.ndarray

    @property
    def ratio(self) -> float:
        """Off-diagonal ratio of :attr:`gram`."""
        return linear_vae.off_diagonal_ratio(self.gram)

    @property
    def cpu_seconds(self) -> float:
        """CPU time from the first recorded evaluation to the last (set-up and a process's
        one-off start-up costs excluded)."""
        cpu = self.trace["cpu_seconds"]
        return float(cpu[-1] - cpu[0])


@dataclasses.dataclass(frozen=True)
class GramResult(Report):
    """Gram matrices of trained linear VAEs and of pPCA maximisers, and how training got there.

    Attributes
    ----------
    runs : dict of str to GramRun
        The chapter's trainer first (key :attr:`method`), then the shipped joint-training runs.
    ppca_rotated : ndarray of shape (block, block)
        (W_MLE R)ᵀ(W_MLE R) for a random orthogonal R: as likely under pPCA as W_MLE.
    ppca_mle : ndarray of shape (block, block)
        W_MLEᵀ W_MLE (R = I): diagonal by construction.
    off_diagonal_ratio : dict of str to float
        :func:`linear_vae.off_diagonal_ratio` of each leading block: ``"vae"`` (the chapter's
        trainer), ``"ppca_rotated"``, ``"ppca_mle"``.
    optimum : float
        ℓ*(q), to turn recorded ELBOs into gaps.
    sigma2_mle : float
        σ²_MLE(q), the optimum's noise variance.
    eigenvalues : ndarray of shape (d,)
    method : str
    baseline_provenance : str
    q, block : int
    """

    runs: dict[str, GramRun]
    ppca_rotated: np.ndarray
    ppca_mle: np.ndarray
    off_diagonal_ratio: dict[str, float]
    optimum: float
    sigma2_mle: float
    eigenvalues: np.ndarray
    method: str
    baseline_provenance: str
    q: int
    block: int

    @property
    def vae(self) -> np.ndarray:
        """Leading Gram block of the chapter's trainer."""
        return self.runs[self.method].gram

    @property
    def elbo_gap(self) -> float:
        """ℓ*(q) − final ELBO of the chapter's trainer."""
        return self.optimum - float(self.runs[self.method].trace["elbo"][-1])

    def spacing(self, run: str) -> np.ndarray:
        """Relative spacing of the eigenvalue matched by each column of ``run``."""
        return linear_baselines.relative_spacing(self.eigenvalues, self.runs[run].matched)

    def misalignment(self, run: str, spacing: float) -> tuple[float, float]:
        """Median 1 − cos² over the columns of ``run`` whose matched eigenvalue lies within
        ``spacing`` (relative) of a neighbour, and over the others (NaN when there are none)."""
        near = self.spacing(run) < spacing
        miss = 1.0 - self.runs[run].cos2
        return (
            float(np.median(miss[near])) if near.any() else float("nan"),
            float(np.median(miss[~near])) if (~near).any() else float("nan"),
        )

    def alignment_summary(self, spacing: float) -> str:
        """Per run, :meth:`misalignment` as one clause: near-tied columns, then the others."""
        parts = []
        for name, run in self.runs.items():
            near, far = self.misalignment(name, spacing)
            parts.append(f"{near:.2f} against {far:.2g} for {run.label}")
        return "; ".join(parts)

    def ratio_path(self, run: str) -> tuple[float, float, float]:
        """The Gram ratio of ``run`` at the random start, at its largest, and at the end."""
        ratio = self.runs[run].trace["gram_ratio"]
        return float(ratio[0]), float(ratio.max()), float(ratio[-1])

    def baseline_summary(self) -> str:
        """One clause per shipped joint-training run: steps, final gap and Gram ratio."""
        parts = [
            f"{run.label} ends, after {int(run.trace['steps'][-1]):,} steps, "
            f"{_nats(self.optimum - run.trace['elbo'][-1])} nats below ℓ* with a Gram ratio of "
            f"{run.ratio:.2g}"
            for name, run in self.runs.items()
            if name != self.method
        ]
        if not parts:
            return f"(The joint-training runs are not shown: {self.baseline_provenance}.)"
        return "; ".join(parts) + "."

    def sigma2_steps(self, run: str, within: float = 0.1) -> int | None:
        """First recorded step at which σ² of ``run`` is within ``within`` (relative) of
        σ²_MLE(q) and stays there; ``None`` if it never gets there."""
        trace = self.runs[run].trace
        close = np.abs(trace["sigma2"] / self.sigma2_mle - 1.0) <= within
        if not close[-1]:
            return None
        last_far = np.flatnonzero(~close)
        return int(trace["steps"][last_far[-1] + 1 if last_far.size else 0])

    def sigma2_summary(self, within: float = 0.1) -> str:
        """When each run's σ² settles within ``within`` of σ²_MLE(q) (:meth:`sigma2_steps`)."""
        parts = []
        for name, run in self.runs.items():
            step = self.sigma2_steps(name, within)
            when = (
                f"after {step:,} steps"
                if step is not None
                else f"not within its {int(run.trace['steps'][-1]):,} steps"
            )
            parts.append(f"{run.label} {when}")
        return "; ".join(parts)

    def glue_values(self, spacing: float = 0.03, within: float = 0.1) -> dict[str, Any]:
        """The numbers the chapter quotes: q and the block, the off-diagonal ratios (rotated
        pPCA; the trained run at its start, peak and end), CPU time, ELBO gap, the baselines'
        and alignment summaries (columns within ``spacing`` of their principal direction), |log
        σ²_MLE| and when σ² came within ``within`` of it."""
        start, peak, end = self.ratio_path(self.method)
        return {
            "q": self.q,
            "block": self.block,
            "rotated_ratio": self.off_diagonal_ratio["ppca_rotated"],
            "vae_ratio": end,
            "start_ratio": start,
            "peak_ratio": peak,
            "cpu": self.runs[self.method].cpu_seconds,
            "gap": self.elbo_gap,
            "baselines": self.baseline_summary(),
            "spacing_percent": 100 * spacing,
            "alignment": self.alignment_summary(spacing),
            "log_sigma2": float(abs(np.log(self.sigma2_mle))),
            "sigma2_within": 100 * within,
            "sigma2_steps": self.sigma2_summary(within),
        }

    def summary(self) -> str:
        """Per run: final gap, Gram ratio, CPU time and the median misalignment of columns."""
        lines = []
        for name, run in self.runs.items():
            lines.append(
                f"{name:<15} {int(run.trace['steps'][-1]):>5} steps, "
                f"{run.cpu_seconds:6.0f} s CPU: gap "
                f"{self.optimum - run.trace['elbo'][-1]:.2e} nats, Gram ratio {run.ratio:.3f}, "
                f"median 1 − cos² of the {self.q} columns {np.median(1.0 - run.cos2):.2e}, "
                f"σ² {run.trace['sigma2'][-1]:.4g} (σ²_MLE {self.sigma2_mle:.4g})"
            )
        if len(self.runs) == 1:
            lines.append(f"joint-training runs not shown: {self.baseline_provenance}")
        else:
            lines.append(f"joint-training runs: {self.baseline_provenance}")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class ElboGapResult:
    """log p, ELBO* and their gap along W_MLE R(θ).

    Attributes
    ----------
    theta : ndarray of shape (m,)
        Rotation angle of latents 1 and 2, radians.
    log_likelihood : ndarray of shape (m,)
        Average log-likelihood (ppca-loglik): constant, = ℓ*(q).
    elbo : ndarray of shape (m,)
        Analytic ELBO (lvae-elbo) with the optimal encoder (lvae-optimal-encoder).
    gap_formula : ndarray of shape (m,)
        ½ (Σ log M_ii − log det M), equation (lvae-elbo-gap).
    optimum : float
        ℓ*(q).
    q : int
    """

    theta: np.ndarray
    log_likelihood: np.ndarray
    elbo: np.ndarray
    gap_formula: np.ndarray
    optimum: float
    q: int

    @property
    def gap(self) -> np.ndarray:
        """log p − ELBO along the path (equals ``gap_formula``)."""
        return self.log_likelihood - self.elbo
