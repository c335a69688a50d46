"""The convergence study of the deep chapter (shown in the appendix *How the numbers were
checked*): the preset's grid runs against long runs of the same networks, and against the
paper-width long runs.

The long runs of the book preset are computed once and shipped in
``results/deep_convergence_book.{npz,json}`` (small arrays, the configuration, the command,
machine and date, and a behaviour probe); a test fails when they are stale
(:mod:`lincollapse.references`). Regenerate them, or compute the paper preset's long runs, with::

    python -m lincollapse.experiments.deep --convergence --preset book --write-reference
    python -m lincollapse.experiments.deep --convergence --preset paper [--grid] [--write-reference]
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from lincollapse.collapse import collapsed_fraction_from_thresholds
from lincollapse.deep_runs import (
    REFERENCE_EPSILONS,
    TOLERANCE,
    computing_fingerprint,
    convergence_key,
    convergence_probe,
    convergence_reference_path,
    load_or_train,
    long_run_arrays,
    long_runs,
    plateau_range,
)
from lincollapse.deep_vae import resolve_device
from lincollapse.experiments import figure
from lincollapse.experiments.deep import CHAPTER, EPSILONS, DeepVAEConfig, grid_runs
from lincollapse.presets import READER
from lincollapse.references import reference_info, save_shipped

# Length of the shipped paper-width long runs: 20,000 steps take ≈ 100 min on 2 CPU cores, so the
# first half was run; at the paper's constant learning rate it is exactly the first half of them.
PAPER_WIDTH_CHECK_STEPS = 10_000


def paper_long_runs(epsilon: float = 0.01) -> tuple[dict[str, np.ndarray] | None, str]:
    """Long runs at the paper's widths and learning rate, if shipped or cached; never trained.

    The paper preset's convergence runs (20,000 steps) when available, else their first
    :data:`PAPER_WIDTH_CHECK_STEPS` steps (same constant learning rate and seeds, so exactly the
    same trajectory, shorter). Returns :func:`long_run_arrays` and where they came from, or
    ``(None, reason)``.
    """
    problems = []
    full = DeepVAEConfig.for_preset("paper", summary_epsilon=epsilon).convergence_steps
    for steps in dict.fromkeys((full, PAPER_WIDTH_CHECK_STEPS)):
        config = DeepVAEConfig.for_preset("paper", summary_epsilon=epsilon, convergence_steps=steps)
        arrays, provenance = long_runs(config, train_missing=False)
        if arrays is not None:
            if steps < full:
                provenance = (
                    f"the first {steps:,} of the paper preset's {full:,} steps, {provenance}"
                )
            return arrays, provenance
        problems.append(f"{steps:,} steps: {provenance}")
    return None, "; ".join(problems)


@dataclasses.dataclass(frozen=True)
class ConvergenceStudy:
    """The preset's short runs against independent long runs, for a few fixed σ².

    Attributes
    ----------
    sigma2 : ndarray (c,)
    epsilon : float
        ε of the collapsed fractions below.
    preset_steps, preset_fraction, preset_elbo : ndarray (k1,), (k1, c), (k1, c)
        The preset's grid runs at these σ² (the runs of the figures) during training.
    preset_schedule : str
    long_steps, long_fraction, long_elbo : ndarray (k2,), (k2, c), (k2, c), or None
        The long runs (``None`` when neither shipped, cached nor trained).
    long_schedule, long_provenance : str
    gap : ndarray (c,)
        Preset minus long run, collapsed fraction at ``epsilon`` at the end of each (NaN
        without long runs).
    max_gap : ndarray (c,)
        Largest |preset − long run| over ε ∈ [0, 2] at the end.
    plateau_range : ndarray (c,)
        max − min of the long run's fraction over its last quarter of steps (movement left).
    tolerance : float
        The agreement asked of the preset (0.05).
    paper_steps, paper_fraction : ndarray (k3,), (k3, c), or None
        Long runs at the paper's widths and learning rate at these σ² (:func:`paper_long_runs`:
        the paper preset's 20,000 steps or their shipped first 10,000), never trained here.
    paper_provenance : str
        Where they came from, or why they are absent.
    paper_gap : ndarray (c,)
        Preset minus paper-width long run, collapsed fraction at ``epsilon`` at the end of each
        (NaN without them): the preset's error including its narrower networks.
    width_gap : ndarray (c,)
        Long run minus paper-width long run at the paper-width run's last step (NaN when either
        is absent or the long run has no record there): the effect of the width alone.
    paper_plateau_range : ndarray (c,)
        As ``plateau_range``, for the paper-width long runs (NaN without them).
    long_at_preset_end : ndarray (c,)
        The long runs' collapsed fraction at the preset's last step (NaN when absent or not
        recorded there). With a constant learning rate a preset run is the long run's first
        steps, so this differs from ``preset_fraction[-1]`` only through floating-point
        round-off (another CPU, BLAS or thread count than the long runs').
    preset : str
    """

    sigma2: np.ndarray
    epsilon: float
    preset_steps: np.ndarray
    preset_fraction: np.ndarray
    preset_elbo: np.ndarray
    preset_schedule: str
    long_steps: np.ndarray | None
    long_fraction: np.ndarray | None
    long_elbo: np.ndarray | None
    long_schedule: str
    long_provenance: str
    gap: np.ndarray
    max_gap: np.ndarray
    plateau_range: np.ndarray
    tolerance: float
    paper_steps: np.ndarray | None
    paper_fraction: np.ndarray | None
    paper_provenance: str
    paper_gap: np.ndarray
    width_gap: np.ndarray
    paper_plateau_range: np.ndarray
    long_at_preset_end: np.ndarray
    preset: str

    @property
    def long_available(self) -> bool:
        return self.long_fraction is not None

    @property
    def paper_available(self) -> bool:
        return self.paper_fraction is not None

    @property
    def paper_agrees(self) -> np.ndarray:
        """Per σ²: |preset − paper-width long run| ≤ tolerance (False without them)."""
        return np.abs(np.nan_to_num(self.paper_gap, nan=np.inf)) <= self.tolerance

    @property
    def agrees(self) -> np.ndarray:
        """Per σ²: |gap| ≤ tolerance (False without long runs)."""
        return np.abs(np.nan_to_num(self.gap, nan=np.inf)) <= self.tolerance

    def table(self) -> str:
        """Markdown table per σ²: preset end, long run at the preset's end and at its own end,
        gap, largest gap over ε ∈ [0, 2], and the long run's movement over its last quarter."""
        last = int(self.preset_steps[-1])
        rows = [
            f"| σ² | preset end | long @ {last:,} | long end | gap | max gap, ε ∈ [0, 2] | "
            "long run, last 25 % range |",
            "|---|---|---|---|---|---|---|",
        ]
        for c, s in enumerate(self.sigma2):
            end = self.preset_fraction[-1, c]
            rows.append(
                f"| {s:g} | {end:.3f} | {self.long_at_preset_end[c]:.3f} | "
                f"{end - self.gap[c]:.3f} | {self.gap[c]:+.3f} | {self.max_gap[c]:.3f} | "
                f"{self.plateau_range[c]:.3f} |"
            )
        return "\n".join(rows)

    def verdict(self) -> str:
        """Whether the preset agrees with the long runs within the tolerance, and where not."""
        if not self.long_available:
            return (
                "The long runs are ABSENT, so the preset's numbers are unchecked: "
                + self.long_provenance
            )
        if self.agrees.all():
            return (
                f"The {self.preset} preset agrees with the long runs within {self.tolerance:g} "
                "at every σ² checked."
            )
        bad = ", ".join(
            f"σ² = {s:g} (gap {g:+.3f})"
            for s, g, ok in zip(self.sigma2, self.gap, self.agrees, strict=True)
            if not ok
        )
        return (
            f"The {self.preset} preset does NOT agree with the long runs within "
            f"{self.tolerance:g} at {bad}; its figures are off by that much there."
        )

    def slow_trajectory(self) -> str:
        """The smallest σ²'s long run at 20 %, 30 %, 70 % and 100 % of its steps."""
        if not self.long_available:
            return "long runs absent"
        slow = int(np.argmin(self.sigma2))
        steps = self.long_steps
        marks = [int(steps[np.argmin(abs(steps - f * steps[-1]))]) for f in (0.2, 0.3, 0.7, 1.0)]
        return ", ".join(
            f"{self.long_fraction[list(steps).index(m), slow]:.3f} after {m:,} steps" for m in marks
        )

    def roundoff_statement(self) -> str:
        """Preset end against the long run at the same step: equal up to round-off, or not."""
        drift = np.abs(self.preset_fraction[-1] - self.long_at_preset_end)
        if np.isnan(drift).all():
            return "cannot be compared here (no long-run record at the preset's last step)"
        if (drift <= self.tolerance).all():
            return (
                f"agree within {self.tolerance:g} on the machine that built this page "
                f"(largest difference {np.nanmax(drift):.3f})"
            )
        return "differ on the machine that built this page: " + ", ".join(
            f"by {d:.3f} at σ² = {s:g}"
            for s, d in zip(self.sigma2, drift, strict=True)
            if d > self.tolerance
        )

    def width_table(self) -> str:
        """Markdown table per σ²: the preset, book widths and paper widths at the paper-width
        runs' last step, the width effect, preset − paper, and the paper runs' movement."""
        if not self.paper_available:
            return "The paper-width runs are absent: " + self.paper_provenance
        end = int(self.paper_steps[-1])
        rows = [
            f"| σ² | book preset | book widths @ {end:,} | paper widths @ {end:,} | width effect |"
            " preset − paper | paper, last 25 % range |",
            "|---|---|---|---|---|---|---|",
        ]
        for c, s in enumerate(self.sigma2):
            paper_end = self.paper_fraction[-1, c]
            rows.append(
                f"| {s:g} | {self.preset_fraction[-1, c]:.3f} | "
                f"{paper_end + self.width_gap[c]:.3f} | {paper_end:.3f} | "
                f"{self.width_gap[c]:+.3f} | {self.paper_gap[c]:+.3f} | "
                f"{self.paper_plateau_range[c]:.3f} |"
            )
        return "\n".join(rows)

    def width_verdict(self) -> str:
        """Whether the preset agrees with the paper-width runs within the tolerance."""
        if not self.paper_available:
            return (
                "The paper-width runs are ABSENT, so the width reduction is unchecked: "
                + self.paper_provenance
            )
        end = int(self.paper_steps[-1])
        bad = [
            f"σ² = {s:g} (gap {g:+.3f})"
            for s, g, ok in zip(self.sigma2, self.paper_gap, self.paper_agrees, strict=True)
            if not ok
        ]
        if not bad:
            return (
                f"Against the paper-width runs at step {end:,}, the {self.preset} preset agrees "
                f"within {self.tolerance:g} at every σ² checked."
            )
        return (
            f"Against the paper-width runs at step {end:,}, the {self.preset} preset does NOT "
            f"agree within {self.tolerance:g} at {', '.join(bad)}."
        )

    def width_agreement(self) -> str:
        """Whether the width effect alone stays inside the tolerance."""
        if not self.paper_available:
            return "unknown: the paper-width runs are absent"
        if np.isnan(self.width_gap).all():
            end = int(self.paper_steps[-1])
            return f"not comparable: this preset's long runs have no record at step {end:,}"
        outside = [
            f"{s:g}"
            for s, g in zip(self.sigma2, self.width_gap, strict=True)
            if not abs(g) <= self.tolerance
        ]
        if not outside:
            return f"inside the tolerance of {self.tolerance:g} at every σ²"
        return f"outside the tolerance of {self.tolerance:g} at σ² = " + ", ".join(outside)

    def glue_values(self) -> dict[str, Any]:
        """Every number and sentence the appendix glues, by name (per σ²: ``name_<σ²>``)."""
        values: dict[str, Any] = {
            "convergence_verdict": self.verdict(),
            "slow_trajectory": self.slow_trajectory(),
            "roundoff_statement": self.roundoff_statement(),
            "width_verdict": self.width_verdict(),
            "width_agreement": self.width_agreement(),
            "preset_steps": f"{int(self.preset_steps[-1]):,}",
            "paper_check_steps": f"{int(self.paper_steps[-1]):,}" if self.paper_available else "—",
        }
        for c, s in enumerate(self.sigma2):
            tag = f"{s:g}".replace(".", "p").replace("-", "m")
            at = (
                np.flatnonzero(self.paper_steps == self.preset_steps[-1])
                if self.paper_available
                else np.array([], dtype=int)
            )
            per_sigma2 = {
                "gap": self.gap[c],
                "plateau_range": self.plateau_range[c],
                "long_at_preset_end": self.long_at_preset_end[c],
                "width_gap": self.width_gap[c],
                "paper_plateau": self.paper_plateau_range[c],
                "paper_at_preset_end": self.paper_fraction[at[0], c] if at.size else np.nan,
            }
            values.update({f"{k}_{tag}": float(v) for k, v in per_sigma2.items()})
        return values


def _epsilon_index(epsilon: float) -> int:
    matches = np.flatnonzero(np.isclose(REFERENCE_EPSILONS, epsilon))
    if matches.size == 0:
        raise ValueError(f"summary_epsilon {epsilon} must be one of {REFERENCE_EPSILONS}")
    return int(matches[0])


@figure(
    "convergence-study",
    chapter=CHAPTER,
    plot="lincollapse.plotting.deep:plot_convergence",
    config=DeepVAEConfig,
)
def convergence_study(
    config: DeepVAEConfig | None = None,
    *,
    device="auto",
    train_long: bool | None = None,
) -> ConvergenceStudy:
    """Collapsed fraction against training step: the preset's runs against long runs."""
    config = config or DeepVAEConfig.for_preset()
    eps, e = config.summary_epsilon, _epsilon_index(config.summary_epsilon)
    short, _ = grid_runs(config, [(s, False) for s in config.convergence_sigma2], device)
    preset_fraction = collapsed_fraction_from_thresholds(short.thresholds, eps)
    train_long = config.preset not in ("book", READER) if train_long is None else train_long
    long, provenance = long_runs(config, device=device, train_missing=train_long)
    c = len(config.convergence_sigma2)
    gap = max_gap = plateau = paper_plateau = at_preset_end = np.full(c, np.nan)
    if long is not None:
        final = collapsed_fraction_from_thresholds(short.thresholds[-1], EPSILONS)
        long_final = collapsed_fraction_from_thresholds(long["checkpoint_thresholds"][-1], EPSILONS)
        gap = preset_fraction[-1] - long["fraction"][-1, :, e]
        max_gap = np.abs(final - long_final).max(axis=-1)
        plateau = plateau_range(long["steps"], long["fraction"][:, :, e])
        row = np.flatnonzero(long["steps"] == short.steps[-1])
        if row.size:
            at_preset_end = long["fraction"][row[0], :, e]
    paper_steps = paper_fraction = None
    paper_gap = width_gap = np.full(c, np.nan)
    if config.preset == "paper":
        paper_provenance = "this is the paper preset"
    else:
        paper_long, paper_provenance = paper_long_runs(eps)
        if paper_long is not None and list(paper_long["sigma2"]) == list(config.convergence_sigma2):
            paper_steps, paper_fraction = paper_long["steps"], paper_long["fraction"][:, :, e]
            paper_gap = preset_fraction[-1] - paper_fraction[-1]
            paper_plateau = plateau_range(paper_steps, paper_fraction)
            if long is not None and paper_steps[-1] in long["steps"]:
                same_step = np.flatnonzero(long["steps"] == paper_steps[-1])[0]
                width_gap = long["fraction"][same_step, :, e] - paper_fraction[-1]
        elif paper_long is not None:
            paper_provenance = "the paper-width long runs are at other σ² than this preset's"
    return ConvergenceStudy(
        sigma2=np.asarray(config.convergence_sigma2, dtype=np.float64),
        epsilon=eps,
        preset_steps=short.steps,
        preset_fraction=preset_fraction,
        preset_elbo=short.elbo,
        preset_schedule=config.grid_schedule().describe(),
        long_steps=None if long is None else long["steps"],
        long_fraction=None if long is None else long["fraction"][:, :, e],
        long_elbo=None if long is None else long["elbo"],
        long_schedule=config.long_schedule().describe(),
        long_provenance=provenance,
        gap=gap,
        max_gap=max_gap,
        plateau_range=plateau,
        tolerance=TOLERANCE,
        paper_steps=paper_steps,
        paper_fraction=paper_fraction,
        paper_provenance=paper_provenance,
        paper_gap=paper_gap,
        width_gap=width_gap,
        paper_plateau_range=paper_plateau,
        long_at_preset_end=at_preset_end,
        preset=config.preset,
    )


def run_convergence_study(
    preset: str = "book",
    device: str = "auto",
    *,
    write_reference: bool = False,
    command: str | None = None,
    progress: bool | None = None,
    steps: int | None = None,
) -> tuple[dict[str, np.ndarray], str]:
    """Train (or read from the cache) the long runs of ``preset``; optionally ship them.

    ``steps`` shortens the long runs (default: the preset's ``convergence_steps``); with a
    constant learning rate the result is exactly the first ``steps`` steps of the full runs.

    With ``write_reference`` the arrays of :func:`long_run_arrays` are written to
    ``results/deep_convergence_<preset>.{npz,json}`` with the configuration, the source
    fingerprint, ``command``, the machine, the thread count and the wall time.
    """
    config = DeepVAEConfig.for_preset(
        preset, **({} if steps is None else {"convergence_steps": steps})
    )
    start = time.perf_counter()
    runs = [(s, False) for s in config.convergence_sigma2]
    trained, sources = load_or_train(
        config, runs, config.long_schedule(), device=device, progress=progress
    )
    seconds = time.perf_counter() - start
    arrays = long_run_arrays(trained)
    if write_reference:
        cached = [s for s in sources if not s.startswith("trained now")]
        info = reference_info(
            command
            or f"python -m lincollapse.experiments.deep --convergence --preset {preset} "
            "--write-reference",
            str(resolve_device(device)),
            None if cached else seconds,
            sources=sources,
        )
        save_shipped(
            convergence_reference_path(preset),
            convergence_key(config),
            arrays,
            convergence_probe(config),
            info,
            computing_fingerprint(),
        )
    return arrays, "; ".join(dict.fromkeys(sources))


# ---------------------------------------------------------------- summary of the long runs


def convergence_summary(arrays: dict[str, np.ndarray], preset: str) -> str:
    """Per σ², the collapsed fraction at the last records of the long runs (one line each)."""
    e = _epsilon_index(DeepVAEConfig.for_preset(preset).summary_epsilon)
    lines = []
    for c, s in enumerate(arrays["sigma2"]):
        tail = ", ".join(
            f"{step}: {f:.3f}"
            for step, f in zip(arrays["steps"][-5:], arrays["fraction"][-5:, c, e], strict=True)
        )
        lines.append(f"sigma2={s:g}: collapsed fraction at the last records {tail}")
    return "\n".join(lines)
