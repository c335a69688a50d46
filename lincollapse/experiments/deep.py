"""Experiments of the chapter *Deep Gaussian VAEs: collapse against σ²* (``deep_vae``).

Deep Gaussian VAEs (:mod:`lincollapse.deep_vae`) are trained on MNIST for a grid of observation
noises σ², fixed and learned (initialised at each grid value), and the (ε, δ)-collapsed fraction
of their latents is compared with the linear-theory count max(0, q − #{λ_j > σ²})/q.

Training results go through :mod:`lincollapse.results_cache`, **one entry per run** (σ², fixed
or learned), keyed by everything that determines the run (data content hash, widths, schedule,
seed, recording) and fingerprinted by the code of :mod:`lincollapse.deep_vae` and
:mod:`lincollapse.training`. Each run's noise comes from its own seeded stream, so with a
*constant* learning rate a run of S steps is exactly the first S steps of a longer run with the
same settings, and :func:`load_or_train` reads it from a cached long run's trajectory; with a
decaying rate (the book preset) it is not, and runs are trained independently.

The convergence study compares the preset's runs with long runs. Those of the book preset are
computed once and shipped in ``results/deep_convergence_book.{npz,json}`` (small arrays, the
configuration, the code fingerprint, the command, machine and date); a test fails when they are
stale. Regenerate them, or compute the paper preset's long runs, with::

    python -m lincollapse.experiments.deep --convergence --preset book --write-reference
    python -m lincollapse.experiments.deep --convergence --preset paper [--grid] [--write-reference]

Presets (:class:`DeepVAEConfig`): ``paper`` is the paper's experiment; ``book`` is sized for
a 2-core CPU (see the class docstring); ``fast`` is a seconds-long smoke test.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lincollapse.data import covariance_eigenvalues, load_mnist
from lincollapse.deep_vae import (
    LR_DECAYS,
    Architecture,
    TrainedRuns,
    collapsed_fraction_from_thresholds,
    resolve_device,
    train_batched,
)
from lincollapse.experiments import figure
from lincollapse.presets import ExperimentConfig, preset_banner
from lincollapse.results_cache import (
    ReferenceResultError,
    ResultsCache,
    load_reference,
    save_reference,
    source_fingerprint,
)

CHAPTER = "deep_vae"
# The code that computes a run; the data enter the keys by content hash instead of by code.
COMPUTING_MODULES = ("lincollapse.deep_vae", "lincollapse.training")
# The smoke-test model of every deep-VAE experiment's ``fast`` preset.
FAST_ARCHITECTURE = {"n": 200, "latent": 8, "encoder_hidden": (32, 16), "decoder_hidden": (16, 32)}
PAPER_GRID = (30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0001)
EPSILONS = np.linspace(0.0, 2.0, 201)
REFERENCE_EPSILONS = (0.01, 0.03, 0.1, 0.3, 1.0)
TOLERANCE = 0.05
RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"
# Length of the shipped paper-width long runs: 20,000 steps take ≈ 100 min on 2 CPU cores, so the
# first half was run; at the paper's constant learning rate it is exactly the first half of them.
PAPER_WIDTH_CHECK_STEPS = 10_000
_RUN_ARRAYS = ("steps", "elbo", "sigma2", "thresholds", "kl_mean")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How one run is trained: Adam steps, base learning rate, its decay, record interval."""

    steps: int
    lr: float
    lr_decay: str
    record_every: int

    def __post_init__(self) -> None:
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {self.lr_decay!r}")
        if self.steps % self.record_every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of record_every")

    def describe(self) -> str:
        decay = "constant" if self.lr_decay == "none" else f"{self.lr_decay}-decayed"
        return f"{self.steps:,} Adam steps, {decay} learning rate {self.lr:g}"


@dataclasses.dataclass(frozen=True)
class DeepVAEConfig(ExperimentConfig):
    """Settings of the deep-VAE experiments; the defaults are the ``book`` preset.

    ``paper``: 1000 images in [0, 1], encoder 784-1024-512, q = 200, decoder 200-512-1024-784,
    Adam lr 5e-4 (constant), full batch, 20,000 steps, the 11-value σ² grid fixed and learned;
    its convergence runs are its grid runs at σ² ∈ {1, 0.1, 0.01}.

    ``book``: the same data and q = 200 (so the linear-theory count is the paper's), narrower
    networks (784-256-128 / 128-256-784, ≈ 5.4× fewer flops), 5 fixed and 2 learned σ², and
    2,000 steps at a constant learning rate 1e-3. Its convergence study compares those runs with
    *long runs* of the same networks and learning rate (10,000 steps: half the paper's steps at
    twice its rate) at σ² ∈ {1, 0.1, 0.01}; the long runs' results are shipped in ``results/``
    (:func:`convergence_reference_path`). Measured (ε = 0.01, 2026-11-25, on the AMD CPU that
    made the long runs): the book runs end 0.02, 0.005 and 0.685 below the long runs at σ² = 1,
    0.1, 0.01; a cosine-decayed 2e-3 over 2,000 steps did worse (0.415, 0.025, 0.785 below).
    On an Intel Xeon with 2 threads (2026-11-29) the same σ² = 0.1 run ended 0.325 below: the
    onset of collapse moves with floating-point round-off (the plateau does not; that run
    reached it ≈ 1,000 steps later), and the chapter's verdict is recomputed where it renders.
    The width reduction is checked against the paper's widths (:func:`paper_long_runs`: the
    paper preset's long runs, their first 10,000 steps shipped): measured 2026-11-29, the
    book-width long runs end 0.0, +0.01 and −0.01 from them at step 10,000.
    ``fast``: tiny networks and few steps, for CI only.

    Attributes
    ----------
    n, data_seed : int
        MNIST images (pixels in [0, 1]) and the seed of their subset.
    latent : int
        q.
    encoder_hidden, decoder_hidden : tuple of int
        Hidden widths.
    sigma2_fixed, sigma2_learned : tuple of float
        σ² of the fixed runs; initial σ² of the learned runs.
    steps, lr, lr_decay, record_every : int, float, str, int
        Training of the grid runs: Adam steps (full batch), base learning rate, its decay
        (``"none"`` or ``"cosine"`` to 1 % of ``lr``, :func:`lincollapse.deep_vae.lr_multiplier`)
        and steps between records of ELBO, σ² and collapse statistics.
    seed : int
        Initial weights (shared by all runs) and noise streams.
    delta : float
        δ of the (ε, δ)-collapse metric.
    summary_epsilon : float
        ε of the collapsed-fraction-vs-σ² summary and of the convergence study.
    convergence_sigma2 : tuple of float
        Fixed σ² of the convergence study (a subset of ``sigma2_fixed``).
    convergence_steps, convergence_lr, convergence_lr_decay, convergence_record_every
        Training of the convergence study's long runs.
    runs_per_batch : int or None
        Runs trained together in one batched model (``None``: all missing runs at once). Does
        not change the results (not part of the cache key), only the speed.
    """

    COSTS: ClassVar[dict[str, str]] = {
        "fast": "≈ 5 s",
        "book": "≈ 9 min for the whole chapter (543 s measured, 2 cores)",
        "paper": "≈ 21 h on 2 CPU cores, ≈ 10–20 min on an H100-class GPU (both projected)",
    }
    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {
            **FAST_ARCHITECTURE,
            "sigma2_fixed": (1.0, 0.1, 0.01),
            "sigma2_learned": (1.0, 0.01),
            "steps": 60,
            "lr": 2e-3,
            "lr_decay": "cosine",
            "record_every": 20,
            "convergence_steps": 120,
            "convergence_lr": 2e-3,
            "convergence_record_every": 20,
        },
        "paper": {
            "encoder_hidden": (1024, 512),
            "decoder_hidden": (512, 1024),
            "sigma2_fixed": PAPER_GRID,
            "sigma2_learned": PAPER_GRID,
            "steps": 20_000,
            "lr": 5e-4,
            "lr_decay": "none",
            "record_every": 250,
            "convergence_steps": 20_000,
            "convergence_lr": 5e-4,
            "convergence_lr_decay": "none",
            "convergence_record_every": 250,
        },
    }
    n: int = 1000
    data_seed: int = 0
    latent: int = 200
    encoder_hidden: tuple[int, ...] = (256, 128)
    decoder_hidden: tuple[int, ...] = (128, 256)
    sigma2_fixed: tuple[float, ...] = (10.0, 1.0, 0.1, 0.01, 0.001)
    sigma2_learned: tuple[float, ...] = (1.0, 0.01)
    steps: int = 2000
    lr: float = 1e-3
    lr_decay: str = "none"
    record_every: int = 50
    seed: int = 0
    delta: float = 0.01
    summary_epsilon: float = 0.01
    convergence_sigma2: tuple[float, ...] = (1.0, 0.1, 0.01)
    convergence_steps: int = 10_000
    convergence_lr: float = 1e-3
    convergence_lr_decay: str = "none"
    convergence_record_every: int = 100
    runs_per_batch: int | None = None

    def __post_init__(self) -> None:
        self.grid_schedule()
        self.long_schedule()

    @property
    def arch(self) -> Architecture:
        return Architecture(784, self.latent, self.encoder_hidden, self.decoder_hidden)

    def grid_schedule(self) -> Schedule:
        """Training of the grid runs (the figures)."""
        return Schedule(self.steps, self.lr, self.lr_decay, self.record_every)

    def long_schedule(self) -> Schedule:
        """Training of the convergence study's long runs."""
        return Schedule(
            self.convergence_steps,
            self.convergence_lr,
            self.convergence_lr_decay,
            self.convergence_record_every,
        )

    def runs(self) -> list[tuple[float, bool]]:
        """(σ², learned) of every run of the grid figures."""
        return [(s, False) for s in self.sigma2_fixed] + [(s, True) for s in self.sigma2_learned]

    def run_steps(self) -> int:
        """Optimiser steps of all grid runs together (for time projections)."""
        return self.steps * len(self.runs())


def data_for(config: DeepVAEConfig) -> tuple[np.ndarray, str]:
    """The images (n, 784) and an identifier of them (source + content hash) for cache keys."""
    return _data(config.n, config.data_seed)


@functools.lru_cache(maxsize=4)
def _data(n: int, seed: int) -> tuple[np.ndarray, str]:
    data = load_mnist(n, seed=seed)
    images = data.images.copy()
    images.setflags(write=False)
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
    return images, f"{data.source}:{digest}"


def _model_key(config: DeepVAEConfig, data_id: str) -> dict[str, Any]:
    return {
        "data": data_id,
        "pixels": "[0, 1]",
        "n": config.n,
        "data_seed": config.data_seed,
        "latent": config.latent,
        "encoder_hidden": list(config.encoder_hidden),
        "decoder_hidden": list(config.decoder_hidden),
        "seed": config.seed,
        "delta": config.delta,
        "dtype": "float32",
    }


def run_key(
    config: DeepVAEConfig, sigma2: float, learned: bool, schedule: Schedule, data_id: str
) -> dict[str, Any]:
    """Everything that determines one run: its results-cache key."""
    return {
        "experiment": "deep_vae_run",
        **_model_key(config, data_id),
        **dataclasses.asdict(schedule),
        "sigma2": float(sigma2),
        "learned": bool(learned),
    }


def convergence_key(config: DeepVAEConfig, data_id: str | None = None) -> dict[str, Any]:
    """The configuration of the convergence study's long runs (the shipped reference's key)."""
    data_id = data_id or data_for(config)[1]
    return {
        "experiment": "deep_vae_convergence",
        **_model_key(config, data_id),
        **dataclasses.asdict(config.long_schedule()),
        "sigma2": [float(s) for s in config.convergence_sigma2],
        "learned": False,
        "epsilons": [float(e) for e in REFERENCE_EPSILONS],
    }


def computing_fingerprint() -> str:
    """Source fingerprint of the modules that compute the runs (the data enter by content hash)."""
    return source_fingerprint(COMPUTING_MODULES)


def default_cache() -> ResultsCache:
    """The results cache fingerprinted by the modules that compute the deep-VAE runs."""
    return ResultsCache(fingerprint=computing_fingerprint())


class MissingRunsError(LookupError):
    """Runs are neither cached nor shipped, and training them was not allowed."""


def _truncate(arrays: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray] | None:
    keep = arrays["steps"] <= steps
    if not np.any(arrays["steps"] == steps):
        return None
    return {name: arrays[name][keep] for name in _RUN_ARRAYS}


def _prefix_source(schedule: Schedule, long: Schedule) -> bool:
    """True when a run with ``schedule`` is the first steps of a run with ``long``.

    Only with a constant learning rate: with a decay the rate at step t depends on the length.
    """
    return (
        schedule.lr_decay == long.lr_decay == "none"
        and schedule.lr == long.lr
        and schedule.record_every == long.record_every
        and schedule.steps < long.steps
    )


def load_or_train(
    config: DeepVAEConfig,
    runs: Sequence[tuple[float, bool]],
    schedule: Schedule | None = None,
    *,
    cache: ResultsCache | None = None,
    device: str | torch.device | None = "auto",
    progress: bool | None = None,
    train_missing: bool = True,
) -> tuple[TrainedRuns, list[str]]:
    """The runs ``(σ², learned)`` of ``config`` trained with ``schedule``: cached, else trained.

    ``schedule`` defaults to the grid's. Cached runs are used as they are; with a constant
    learning rate a fixed run at a σ² of the convergence study is also read from the cached
    long run's trajectory when that is the same training, longer (its first steps are this
    run). Missing runs are trained together (one batched model) and each is cached, or, with
    ``train_missing=False``, :class:`MissingRunsError` is raised. Returns the runs (in the order
    asked) and, per run, where it came from.
    """
    schedule = schedule or config.grid_schedule()
    cache = cache or default_cache()
    x, data_id = data_for(config)
    long = config.long_schedule()
    found: dict[int, dict[str, np.ndarray]] = {}
    sources: dict[int, str] = {}
    for index, (sigma2, learned) in enumerate(runs):
        loaded = cache.load(run_key(config, sigma2, learned, schedule, data_id))
        if loaded is not None:
            found[index], sources[index] = loaded[0], f"cache ({loaded[1].get('created')})"
            continue
        if _prefix_source(schedule, long) and not learned and sigma2 in config.convergence_sigma2:
            whole = cache.load(run_key(config, sigma2, learned, long, data_id))
            prefix = _truncate(whole[0], schedule.steps) if whole is not None else None
            if prefix is not None:
                found[index] = prefix
                sources[index] = (
                    f"first {schedule.steps} steps of the cached {long.steps}-step run "
                    f"({whole[1].get('created')})"
                )
    missing = [i for i in range(len(runs)) if i not in found]
    if missing and not train_missing:
        raise MissingRunsError(
            f"{len(missing)} run(s) ({schedule.describe()}) are not cached: "
            + ", ".join(f"σ²={runs[i][0]:g}" for i in missing)
        )
    if missing:
        cache.check_writable()  # before training: a run that cannot be cached is not started
    size = config.runs_per_batch or max(1, len(missing))
    for start in range(0, len(missing), size):
        group = missing[start : start + size]
        trained = train_batched(
            x, config.arch, [runs[i][0] for i in group], [runs[i][1] for i in group],
            steps=schedule.steps, lr=schedule.lr, lr_decay=schedule.lr_decay, seed=config.seed,
            record_every=schedule.record_every, delta=config.delta, device=device,
            progress=progress,
        )  # fmt: skip
        where = f"trained now on {resolve_device(device)} in {trained.seconds:.0f} s"
        for column, index in enumerate(group):
            one = trained.run(column)
            arrays = {
                "steps": one.steps, "elbo": one.elbo[:, 0], "sigma2": one.sigma2[:, 0],
                "thresholds": one.thresholds[:, 0], "kl_mean": one.kl_mean[:, 0],
            }  # fmt: skip
            sigma2, learned = runs[index]
            info = {
                "seconds": trained.seconds,
                "runs_trained_together": len(group),
                "threads": torch.get_num_threads(),
            }
            cache.save(run_key(config, sigma2, learned, schedule, data_id), arrays, info)
            found[index], sources[index] = arrays, where
    order = range(len(runs))
    return (
        TrainedRuns(
            sigma2_init=np.array([runs[i][0] for i in order], dtype=np.float64),
            learned=np.array([runs[i][1] for i in order], dtype=bool),
            steps=found[0]["steps"],
            elbo=np.stack([found[i]["elbo"] for i in order], axis=1),
            sigma2=np.stack([found[i]["sigma2"] for i in order], axis=1),
            thresholds=np.stack([found[i]["thresholds"] for i in order], axis=1),
            kl_mean=np.stack([found[i]["kl_mean"] for i in order], axis=1),
            seconds=float("nan"),
            delta=config.delta,
        ),
        [sources[i] for i in order],
    )


def paper_runs_cached(config_changes: dict[str, Any] | None = None) -> bool:
    """True when every grid run of the ``paper`` preset is in the cache (nothing is computed)."""
    config = DeepVAEConfig.for_preset("paper", **(config_changes or {}))
    cache = default_cache()
    _, data_id = data_for(config)
    schedule = config.grid_schedule()
    return all(
        cache.path(run_key(config, s, learned, schedule, data_id)).is_file()
        and cache.load(run_key(config, s, learned, schedule, data_id)) is not None
        for s, learned in config.runs()
    )


def _resolve(config: DeepVAEConfig | None, use_paper_cache: bool) -> tuple[DeepVAEConfig, str]:
    """The config to show: the ``paper`` one when asked for and fully cached."""
    config = config or DeepVAEConfig.for_preset()
    if use_paper_cache and config.preset != "paper" and paper_runs_cached():
        return DeepVAEConfig.for_preset("paper"), (
            "cached paper-preset runs (20,000 steps at the paper's widths), not retrained"
        )
    return config, preset_banner(config.preset)


@dataclasses.dataclass(frozen=True)
class CollapseCurves:
    """Collapsed fraction against ε for each σ² (fixed or learned).

    Attributes
    ----------
    sigma2_init : ndarray (R,)
        σ² (fixed) or its initial value (learned).
    learned : bool
    epsilons : ndarray (m,)
        ε grid over [0, 2].
    fraction : ndarray (R, m)
        Fraction of the q latents that are (ε, δ)-collapsed after training.
    final_sigma2 : ndarray (R,)
        σ² after training (= ``sigma2_init`` when fixed).
    final_elbo : ndarray (R,)
        Single-sample training ELBO at the end, nats per image.
    steps, delta, latent : int, float, int
    preset, provenance : str
        Preset of the runs and a sentence saying where they came from (cache/trained/preset).
    sources : tuple of str
        Per run, where it came from.
    """

    sigma2_init: np.ndarray
    learned: bool
    epsilons: np.ndarray
    fraction: np.ndarray
    final_sigma2: np.ndarray
    final_elbo: np.ndarray
    steps: int
    delta: float
    latent: int
    preset: str
    provenance: str
    sources: tuple[str, ...]


def _grid_runs(config: DeepVAEConfig, runs, device) -> tuple[TrainedRuns, list[str]]:
    """``runs`` of the grid; all missing grid runs are trained together the first time."""
    load_or_train(config, config.runs(), device=device)  # one batched model for the whole grid
    return load_or_train(config, runs, device=device, train_missing=False)


def _curves(config, learned: bool, use_paper_cache: bool, device) -> CollapseCurves:
    config, provenance = _resolve(config, use_paper_cache)
    grid = config.sigma2_learned if learned else config.sigma2_fixed
    runs, sources = _grid_runs(config, [(s, learned) for s in grid], device)
    return CollapseCurves(
        sigma2_init=runs.sigma2_init, learned=learned, epsilons=EPSILONS.copy(),
        fraction=runs.collapsed_fraction(EPSILONS), final_sigma2=runs.sigma2[-1],
        final_elbo=runs.elbo[-1], steps=config.steps, delta=config.delta, latent=config.latent,
        preset=config.preset, provenance=provenance, sources=tuple(sources),
    )  # fmt: skip


@figure(
    "collapse-vs-eps-fixed",
    chapter=CHAPTER,
    plot="lincollapse.plotting.deep:plot_collapse_vs_eps",
    config=DeepVAEConfig,
    paper_figure="Fig. 5 (fixed σ²)",
)
def collapse_vs_eps_fixed(
    config: DeepVAEConfig | None = None, *, use_paper_cache: bool = False, device="auto"
) -> CollapseCurves:
    """Deep Gaussian VAE with fixed σ²: collapsed fraction of latents against ε, per σ²."""
    return _curves(config, False, use_paper_cache, device)


@figure(
    "collapse-vs-eps-learned",
    chapter=CHAPTER,
    plot="lincollapse.plotting.deep:plot_collapse_vs_eps",
    config=DeepVAEConfig,
    paper_figure="Fig. 5 (learned σ²)",
)
def collapse_vs_eps_learned(
    config: DeepVAEConfig | None = None, *, use_paper_cache: bool = False, device="auto"
) -> CollapseCurves:
    """Deep Gaussian VAE with learned σ²: collapsed fraction against ε per initial σ², final σ²."""
    return _curves(config, True, use_paper_cache, device)


def linear_collapse_prediction(
    eigenvalues: np.ndarray, sigma2: np.ndarray | float, latent: int
) -> np.ndarray:
    """Linear-theory collapsed fraction max(0, q − #{λ_j > σ²})/q for each σ²."""
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    above = (np.asarray(eigenvalues)[:, None] > sigma2.reshape(-1)).sum(axis=0)
    return (np.maximum(0, latent - above) / latent).reshape(sigma2.shape)


@dataclasses.dataclass(frozen=True)
class SigmaSummary:
    """Collapsed fraction at one ε against σ²: deep fixed, deep learned, linear theory.

    Attributes
    ----------
    epsilon : float
    sigma2_fixed, fraction_fixed : ndarray (R1,)
    sigma2_learned_init, sigma2_learned_final, fraction_learned : ndarray (R2,)
        Learned runs are placed at their *final* σ² in the plot and labelled by their initial one.
    sigma2_line, linear_prediction : ndarray (k,)
        The linear-theory fraction on a fine log-spaced σ² grid.
    eigenvalues : ndarray (784,)
        Of the images' sample covariance (the input of the linear count).
    latent, steps : int
    preset, provenance : str
    """

    epsilon: float
    sigma2_fixed: np.ndarray
    fraction_fixed: np.ndarray
    sigma2_learned_init: np.ndarray
    sigma2_learned_final: np.ndarray
    fraction_learned: np.ndarray
    sigma2_line: np.ndarray
    linear_prediction: np.ndarray
    eigenvalues: np.ndarray
    latent: int
    steps: int
    preset: str
    provenance: str


@figure(
    "collapse-vs-sigma2-summary",
    chapter=CHAPTER,
    plot="lincollapse.plotting.deep:plot_sigma2_summary",
    config=DeepVAEConfig,
    paper_figure="—",
)
def collapse_vs_sigma2_summary(
    config: DeepVAEConfig | None = None, *, use_paper_cache: bool = False, device="auto"
) -> SigmaSummary:
    """Collapsed fraction at a fixed ε against σ²: deep fixed, deep learned, linear-theory count."""
    config, provenance = _resolve(config, use_paper_cache)
    fixed, _ = _grid_runs(config, [(s, False) for s in config.sigma2_fixed], device)
    learned, _ = _grid_runs(config, [(s, True) for s in config.sigma2_learned], device)
    eigenvalues = covariance_eigenvalues(data_for(config)[0])
    line = np.logspace(-5, 2, 300)
    eps = config.summary_epsilon
    return SigmaSummary(
        epsilon=eps, sigma2_fixed=fixed.sigma2_init,
        fraction_fixed=fixed.collapsed_fraction([eps])[:, 0],
        sigma2_learned_init=learned.sigma2_init, sigma2_learned_final=learned.sigma2[-1],
        fraction_learned=learned.collapsed_fraction([eps])[:, 0], sigma2_line=line,
        linear_prediction=linear_collapse_prediction(eigenvalues, line, config.latent),
        eigenvalues=eigenvalues, latent=config.latent, steps=config.steps,
        preset=config.preset, provenance=provenance,
    )  # fmt: skip


def convergence_reference_path(preset: str) -> Path:
    """Stem of the shipped long-run results of ``preset``: ``results/deep_convergence_<preset>``."""
    return RESULTS_DIR / f"deep_convergence_{preset}"


def long_run_arrays(runs: TrainedRuns) -> dict[str, np.ndarray]:
    """The small arrays of the long runs kept in a shipped reference (well under 1 MB).

    ``steps`` (k,), ``elbo`` (k, c), ``fraction`` (k, c, e) at :data:`REFERENCE_EPSILONS`,
    ``checkpoint_steps`` (m,) every 10th record and the last, with the collapse thresholds
    ``checkpoint_thresholds`` (m, c, q), ``kl_mean_final`` (c, q) and ``sigma2`` (c,).
    """
    k = runs.steps.size
    checkpoints = sorted(set(range(0, k, 10)) | {k - 1})
    return {
        "steps": runs.steps.astype(np.int64),
        "elbo": runs.elbo,
        "fraction": collapsed_fraction_from_thresholds(runs.thresholds, REFERENCE_EPSILONS),
        "checkpoint_steps": runs.steps[checkpoints].astype(np.int64),
        "checkpoint_thresholds": runs.thresholds[checkpoints],
        "kl_mean_final": runs.kl_mean[-1],
        "sigma2": runs.sigma2_init,
    }


def _minutes(seconds: Any) -> str:
    if isinstance(seconds, (int, float)) and np.isfinite(seconds):
        return f"{seconds / 60:.0f} min"
    return "wall time not recorded: read from the cache"


def shipped_provenance(stem: Path, meta: dict) -> str:
    """How a shipped reference (``results/<stem>``) was computed: command, date, machine, time."""
    info = meta.get("info", {})
    return (
        f"precomputed by `{info.get('command', '?')}` on {meta.get('created', '?')[:10]} "
        f"({info.get('machine', '?')}, {info.get('threads', '?')} thread(s), "
        f"{_minutes(info.get('seconds'))}), shipped as {stem.parent.name}/{stem.name}.npz"
    )


def long_runs(
    config: DeepVAEConfig,
    *,
    device: str | torch.device | None = "auto",
    train_missing: bool = False,
    progress: bool | None = None,
) -> tuple[dict[str, np.ndarray] | None, str]:
    """The convergence study's long runs of ``config`` as :func:`long_run_arrays`, and where from.

    In order: the shipped reference (``results/deep_convergence_<preset>``, validated: checksums,
    configuration, source fingerprint), the results cache, training now (only when
    ``train_missing``). Returns ``(None, reason)`` when none is available.
    """
    _, data_id = data_for(config)
    stem = convergence_reference_path(config.preset)
    problems = []
    try:
        arrays, meta = load_reference(
            stem, convergence_key(config, data_id), computing_fingerprint()
        )
        return arrays, shipped_provenance(stem, meta)
    except ReferenceResultError as error:
        problems.append(str(error))
    runs = [(s, False) for s in config.convergence_sigma2]
    try:
        trained, sources = load_or_train(
            config, runs, config.long_schedule(), device=device, progress=progress,
            train_missing=train_missing,
        )  # fmt: skip
    except MissingRunsError as error:
        problems.append(str(error))
        return None, "; ".join(problems)
    return long_run_arrays(trained), "; ".join(dict.fromkeys(sources))


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


def plateau_range(steps: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """max − min of ``fraction`` (k, c) over the last quarter of ``steps`` (k,): shape (c,)."""
    tail = fraction[steps >= 0.75 * steps[-1]]
    return tail.max(axis=0) - tail.min(axis=0)


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
    short, _ = _grid_runs(config, [(s, False) for s in config.convergence_sigma2], device)
    preset_fraction = collapsed_fraction_from_thresholds(short.thresholds, eps)
    train_long = config.preset != "book" if train_long is None else train_long
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
        sigma2=np.asarray(config.convergence_sigma2, dtype=np.float64), epsilon=eps,
        preset_steps=short.steps, preset_fraction=preset_fraction, preset_elbo=short.elbo,
        preset_schedule=config.grid_schedule().describe(),
        long_steps=None if long is None else long["steps"],
        long_fraction=None if long is None else long["fraction"][:, :, e],
        long_elbo=None if long is None else long["elbo"],
        long_schedule=config.long_schedule().describe(), long_provenance=provenance,
        gap=gap, max_gap=max_gap, plateau_range=plateau, tolerance=TOLERANCE,
        paper_steps=paper_steps, paper_fraction=paper_fraction,
        paper_provenance=paper_provenance, paper_gap=paper_gap, width_gap=width_gap,
        paper_plateau_range=paper_plateau, long_at_preset_end=at_preset_end,
        preset=config.preset,
    )  # fmt: skip


def machine_description() -> str:
    """CPU model (or GPU name) of this machine, for provenance records."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def reference_info(
    command: str, device: str | torch.device | None, seconds: float | None, **extra: Any
) -> dict[str, Any]:
    """The ``info`` of a shipped reference: command, machine, device, threads, wall time, torch."""
    return {
        "command": command,
        "machine": machine_description(),
        "device": str(resolve_device(device)),
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        **extra,
        "torch": torch.__version__,
    }


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
    """  # fmt: skip
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
            device, None if cached else seconds, sources=sources,
        )  # fmt: skip
        save_reference(
            convergence_reference_path(preset), convergence_key(config), arrays,
            computing_fingerprint(), info,
        )  # fmt: skip
    return arrays, "; ".join(dict.fromkeys(sources))


# --------------------------------------------------------------------------- benchmark


@dataclasses.dataclass(frozen=True)
class BenchmarkRow:
    """Timing of one preset's batched training step.

    Attributes
    ----------
    preset : str
    runs : int
        Runs trained together in the measurement (all grid runs of the preset).
    seconds_per_step : float
        Wall time of one Adam step of all ``runs`` (median of the timed steps).
    gflops : float
        Achieved GFLOP/s: analytic GEMM flops of forward + backward (3 × forward) / time.
    matmul_gflops : float
        A raw float32 ``torch.bmm`` of the first layer's shape, same threads, same machine.
    grid_seconds : float
        Projected training time of the grid figures: ``seconds_per_step × steps``.
    convergence_seconds : float
        Projected time of the convergence study's long runs when they are not the grid runs
        (``convergence_steps > steps``): ``seconds_per_step / runs × convergence_steps`` each
        (per-run cost, ignoring the better efficiency of fewer runs per batch).
    """

    preset: str
    runs: int
    seconds_per_step: float
    gflops: float
    matmul_gflops: float
    grid_seconds: float
    convergence_seconds: float


def raw_matmul_gflops(runs: int, n: int, fan_in: int, fan_out: int, repeats: int = 5) -> float:
    """GFLOP/s of ``torch.bmm`` on (runs, n, fan_in) × (runs, fan_in, fan_out), float32."""
    a, b = torch.randn(runs, n, fan_in), torch.randn(runs, fan_in, fan_out)
    torch.bmm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.bmm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * runs * n * fan_in * fan_out / float(np.median(times)) / 1e9


def benchmark(
    presets: Sequence[str] = ("fast", "book", "paper"), steps: int = 20, threads: int | None = None
) -> list[BenchmarkRow]:
    """Time ``steps`` batched Adam steps of each preset's grid runs (CPU, current data)."""
    from lincollapse.deep_vae import BatchedGaussianVAE

    if threads is not None:
        torch.set_num_threads(threads)
    rows = []
    for preset in presets:
        config = DeepVAEConfig.for_preset(preset)
        x = torch.tensor(data_for(config)[0], dtype=torch.float32)
        runs = config.runs()
        model = BatchedGaussianVAE(
            config.arch, [s for s, _ in runs], [v for _, v in runs], config.seed, device="cpu"
        )
        optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], config.lr)
        times = []
        for step in range(steps + 1):
            start = time.perf_counter()
            optimiser.zero_grad()
            (-model.elbo(x).sum()).backward()
            optimiser.step()
            if step:  # the first step warms up
                times.append(time.perf_counter() - start)
        per_step = float(np.median(times))
        flops = config.arch.step_flops(config.n) * len(runs)
        grid_seconds = per_step * config.steps
        long_runs = [
            s for s in config.convergence_sigma2 if config.convergence_steps > config.steps
        ]
        long_seconds = per_step / len(runs) * config.convergence_steps * len(long_runs)
        fan_in, fan_out = config.arch.encoder_shapes[0]
        rows.append(
            BenchmarkRow(
                preset,
                len(runs),
                per_step,
                flops / per_step / 1e9,
                raw_matmul_gflops(len(runs), config.n, fan_in, fan_out),
                grid_seconds,
                long_seconds,
            )  # fmt: skip
        )
    return rows


def format_benchmark(rows: Sequence[BenchmarkRow]) -> str:
    """The benchmark as a plain-text table."""
    lines = [
        f"threads: {torch.get_num_threads()}",
        f"{'preset':<7} {'runs':>4} {'s/step':>8} {'GFLOP/s':>8} {'matmul':>8} {'eff':>5} "
        f"{'grid':>8} {'long runs':>9}",
    ]
    for row in rows:
        lines.append(
            f"{row.preset:<7} {row.runs:>4} {row.seconds_per_step:>8.3f} {row.gflops:>8.1f} "
            f"{row.matmul_gflops:>8.1f} {row.gflops / row.matmul_gflops:>5.0%} "
            f"{_duration(row.grid_seconds):>8} {_duration(row.convergence_seconds):>9}"
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def deep_benchmark(steps: int = 20, presets: Sequence[str] = ("fast", "book", "paper")) -> str:
    """Run :func:`benchmark` and return the table (what ``lincollapse bench deep`` prints)."""
    return format_benchmark(benchmark(presets, steps))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train the deep-VAE long runs (convergence study) and/or the grid runs, "
        "filling the results cache; optionally write the shipped reference results."
    )
    parser.add_argument("--preset", default="book", choices=("fast", "book", "paper"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--convergence", action="store_true", help="train the long runs")
    parser.add_argument("--grid", action="store_true", help="train the grid runs")
    parser.add_argument(
        "--write-reference", action="store_true",
        help="write results/deep_convergence_<preset>.{npz,json} from the long runs",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, default=None,
        help="steps of the long runs (default: the preset's convergence_steps)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--progress", action="store_true", help="progress bar even into a file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.convergence or args.grid):
        args.convergence = True
    if args.convergence:
        command = "python -m lincollapse.experiments.deep " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:])
        )
        arrays, sources = run_convergence_study(
            args.preset, args.device, write_reference=args.write_reference, command=command,
            progress=args.progress or None, steps=args.steps,
        )  # fmt: skip
        e = _epsilon_index(DeepVAEConfig.for_preset(args.preset).summary_epsilon)
        for c, s in enumerate(arrays["sigma2"]):
            tail = ", ".join(
                f"{step}: {f:.3f}"
                for step, f in zip(arrays["steps"][-5:], arrays["fraction"][-5:, c, e], strict=True)
            )
            print(f"sigma2={s:g}: collapsed fraction at the last records {tail}")
        print(sources)
    if args.grid:
        config = DeepVAEConfig.for_preset(args.preset)
        _, sources = load_or_train(
            config, config.runs(), device=args.device, progress=args.progress or None
        )
        print("\n".join(sources))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
