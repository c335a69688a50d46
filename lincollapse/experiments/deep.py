"""Experiments of the chapter *Deep Gaussian VAEs: collapse against σ²* (``deep_vae``).

Deep Gaussian VAEs (:mod:`lincollapse.deep_vae`) are trained on MNIST for a grid of observation
noises σ², fixed and learned (initialised at each grid value), and the (ε, δ)-collapsed fraction
of their latents is compared with the linear-theory count max(0, q − #{λ_j > σ²})/q.

Training results go through :mod:`lincollapse.results_cache`, **one entry per run** (σ², fixed
or learned), keyed by everything that determines the run (data, widths, learning rate, steps,
seed, recording) and fingerprinted by the code of :mod:`lincollapse.deep_vae`,
:mod:`lincollapse.training` and :mod:`lincollapse.data`. The learning rate is constant and each
run's noise comes from its own seeded stream, so a run of S steps is exactly the first S steps
of a longer run with the same settings: when the convergence study's long run (``steps =
convergence_steps``) is cached, shorter runs at its σ² are read from its recorded trajectory
instead of being retrained (:func:`load_or_train`). To fill the cache with the long runs, call
:func:`run_convergence_study` (``python -m lincollapse.experiments.deep --preset book``).

Presets (:class:`DeepVAEConfig`): ``paper`` is the paper's experiment; ``book`` is sized for
a 2-core CPU (see the class docstring); ``fast`` is a seconds-long smoke test.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from lincollapse.data import covariance_eigenvalues, load_mnist
from lincollapse.deep_vae import (
    Architecture,
    TrainedRuns,
    collapsed_fraction_from_thresholds,
    resolve_device,
    train_batched,
)
from lincollapse.experiments import figure
from lincollapse.presets import ExperimentConfig, preset_banner
from lincollapse.results_cache import ResultsCache, source_fingerprint

CHAPTER = "deep_vae"
COMPUTING_MODULES = ("lincollapse.deep_vae", "lincollapse.training", "lincollapse.data")
PAPER_GRID = (30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0001)
EPSILONS = np.linspace(0.0, 2.0, 201)
_RUN_ARRAYS = ("steps", "elbo", "sigma2", "thresholds", "kl_mean")


@dataclasses.dataclass(frozen=True)
class DeepVAEConfig(ExperimentConfig):
    """Settings of the deep-VAE experiments; the defaults are the ``book`` preset.

    ``paper``: 1000 images, encoder 784-1024-512, q = 200, decoder 200-512-1024-784, Adam
    lr 5e-4, full batch, 20,000 steps, the 11-value σ² grid fixed and learned.

    ``book``: the same data and q = 200 (so the linear-theory count is the paper's), narrower
    networks (784-256-128 / 128-256-784, ≈ 5.4× fewer flops), 5 fixed and 2 learned σ², a
    larger constant learning rate (2e-3) and 2,000 steps; the convergence study (σ² ∈ 1, 0.1,
    0.01) runs the same book model ``convergence_steps`` steps, so the book's numbers can be
    checked against it (they are its prefix). ``fast``: tiny networks and few steps, for CI only.

    Attributes
    ----------
    n, data_seed : int
        MNIST images and the seed of their subset (:func:`lincollapse.data.load_mnist`).
    latent : int
        q.
    encoder_hidden, decoder_hidden : tuple of int
        Hidden widths.
    sigma2_fixed, sigma2_learned : tuple of float
        σ² of the fixed runs; initial σ² of the learned runs.
    steps, lr : int, float
        Adam steps (full batch) and constant learning rate.
    seed : int
        Initial weights (shared by all runs) and noise streams.
    record_every : int
        Steps between records of ELBO, σ² and collapse statistics.
    delta : float
        δ of the (ε, δ)-collapse metric.
    summary_epsilon : float
        ε of the collapsed-fraction-vs-σ² summary and of the convergence study.
    convergence_sigma2 : tuple of float
        Fixed σ² of the convergence study.
    convergence_steps : int
        Length of its runs (≥ ``steps``).
    runs_per_batch : int or None
        Runs trained together in one batched model (``None``: all missing runs at once). Does
        not change the results (not part of the cache key), only the speed.
    """

    COSTS: ClassVar[dict[str, str]] = {"fast": "≈ 3 s", "book": "≈ 6 min"}
    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {
            "n": 200,
            "latent": 8,
            "encoder_hidden": (32, 16),
            "decoder_hidden": (16, 32),
            "sigma2_fixed": (1.0, 0.1, 0.01),
            "sigma2_learned": (1.0, 0.01),
            "steps": 60,
            "lr": 2e-3,
            "record_every": 20,
            "convergence_steps": 120,
        },
        "paper": {
            "encoder_hidden": (1024, 512),
            "decoder_hidden": (512, 1024),
            "sigma2_fixed": PAPER_GRID,
            "sigma2_learned": PAPER_GRID,
            "steps": 20_000,
            "lr": 5e-4,
            "record_every": 250,
            "convergence_steps": 20_000,
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
    lr: float = 2e-3
    seed: int = 0
    record_every: int = 50
    delta: float = 0.01
    summary_epsilon: float = 0.01
    convergence_sigma2: tuple[float, ...] = (1.0, 0.1, 0.01)
    convergence_steps: int = 20_000
    runs_per_batch: int | None = None

    def __post_init__(self) -> None:
        if self.convergence_steps < self.steps:
            raise ValueError("convergence_steps must be >= steps")
        if self.steps % self.record_every or self.convergence_steps % self.record_every:
            raise ValueError("steps and convergence_steps must be multiples of record_every")

    @property
    def arch(self) -> Architecture:
        return Architecture(784, self.latent, self.encoder_hidden, self.decoder_hidden)

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


def run_key(
    config: DeepVAEConfig, sigma2: float, learned: bool, steps: int, data_id: str
) -> dict[str, Any]:
    """Everything that determines one run: its results-cache key."""
    return {
        "experiment": "deep_vae_run",
        "data": data_id,
        "n": config.n,
        "data_seed": config.data_seed,
        "latent": config.latent,
        "encoder_hidden": list(config.encoder_hidden),
        "decoder_hidden": list(config.decoder_hidden),
        "lr": config.lr,
        "seed": config.seed,
        "record_every": config.record_every,
        "delta": config.delta,
        "sigma2": float(sigma2),
        "learned": bool(learned),
        "steps": int(steps),
        "dtype": "float32",
    }


def default_cache() -> ResultsCache:
    """The results cache fingerprinted by the modules that compute the deep-VAE runs."""
    return ResultsCache(fingerprint=source_fingerprint(COMPUTING_MODULES))


def _truncate(arrays: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray] | None:
    keep = arrays["steps"] <= steps
    if not np.any(arrays["steps"] == steps):
        return None
    return {name: arrays[name][keep] for name in _RUN_ARRAYS}


def load_or_train(
    config: DeepVAEConfig,
    runs: Sequence[tuple[float, bool]],
    steps: int | None = None,
    *,
    cache: ResultsCache | None = None,
    device: str | torch.device | None = "auto",
    progress: bool | None = None,
) -> tuple[TrainedRuns, list[str]]:
    """The runs ``(σ², learned)`` of ``config`` trained for ``steps``: from the cache, else trained.

    Cached runs are used as they are; a fixed run at a σ² of the convergence study is also read
    from the convergence run's cached trajectory (its first ``steps`` steps are this run).
    Missing runs are trained together (one batched model) and each is cached. Returns the runs
    (in the order asked) and, per run, where it came from.
    """
    steps = config.steps if steps is None else steps
    cache = cache or default_cache()
    x, data_id = data_for(config)
    found: dict[int, dict[str, np.ndarray]] = {}
    sources: dict[int, str] = {}
    for index, (sigma2, learned) in enumerate(runs):
        loaded = cache.load(run_key(config, sigma2, learned, steps, data_id))
        if loaded is not None:
            found[index], sources[index] = loaded[0], f"cache ({loaded[1].get('created')})"
            continue
        if steps < config.convergence_steps and not learned and sigma2 in config.convergence_sigma2:
            long = cache.load(run_key(config, sigma2, learned, config.convergence_steps, data_id))
            prefix = _truncate(long[0], steps) if long is not None else None
            if prefix is not None:
                found[index] = prefix
                sources[index] = (
                    f"first {steps} steps of the cached {config.convergence_steps}-step run "
                    f"({long[1].get('created')})"
                )
    missing = [i for i in range(len(runs)) if i not in found]
    size = config.runs_per_batch or max(1, len(missing))
    for start in range(0, len(missing), size):
        group = missing[start : start + size]
        trained = train_batched(
            x, config.arch, [runs[i][0] for i in group], [runs[i][1] for i in group],
            steps=steps, lr=config.lr, seed=config.seed, record_every=config.record_every,
            delta=config.delta, device=device, progress=progress,
        )  # fmt: skip
        where = f"trained now on {resolve_device(device)} in {trained.seconds:.0f} s"
        for column, index in enumerate(group):
            one = trained.run(column)
            arrays = {
                "steps": one.steps, "elbo": one.elbo[:, 0], "sigma2": one.sigma2[:, 0],
                "thresholds": one.thresholds[:, 0], "kl_mean": one.kl_mean[:, 0],
            }  # fmt: skip
            sigma2, learned = runs[index]
            info = {"seconds": trained.seconds, "runs_trained_together": len(group)}
            cache.save(run_key(config, sigma2, learned, steps, data_id), arrays, info)
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
    return all(
        cache.path(run_key(config, s, learned, config.steps, data_id)).is_file()
        and cache.load(run_key(config, s, learned, config.steps, data_id)) is not None
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


def _curves(config, learned: bool, use_paper_cache: bool, device) -> CollapseCurves:
    config, provenance = _resolve(config, use_paper_cache)
    grid = config.sigma2_learned if learned else config.sigma2_fixed
    runs, sources = load_or_train(config, [(s, learned) for s in grid], device=device)
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
    fixed, _ = load_or_train(config, [(s, False) for s in config.sigma2_fixed], device=device)
    learned, _ = load_or_train(config, [(s, True) for s in config.sigma2_learned], device=device)
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


@dataclasses.dataclass(frozen=True)
class ConvergenceStudy:
    """Collapsed fraction against the training step for a few fixed σ².

    Attributes
    ----------
    sigma2 : ndarray (c,)
    steps : ndarray (k,)
        Record steps up to ``convergence_steps``.
    fraction : ndarray (k, c)
        Collapsed fraction at ``epsilon`` at each record step.
    elbo : ndarray (k, c)
        Training ELBO (single sample, nats per image).
    thresholds : ndarray (k, c, q)
        Collapse thresholds per latent (fraction at any ε: ``mean(thresholds < ε, axis=-1)``).
    epsilon : float
    preset_steps : int
        The steps the grid figures of the preset use (marked on the plot).
    gap : ndarray (c,)
        |fraction at ``preset_steps`` − fraction at the end|: the book preset's error, to be
        < 0.05 at each σ².
    preset, provenance : str
    sources : tuple of str
    """

    sigma2: np.ndarray
    steps: np.ndarray
    fraction: np.ndarray
    elbo: np.ndarray
    thresholds: np.ndarray
    epsilon: float
    preset_steps: int
    gap: np.ndarray
    preset: str
    provenance: str
    sources: tuple[str, ...]


@figure(
    "convergence-study",
    chapter=CHAPTER,
    plot="lincollapse.plotting.deep:plot_convergence",
    config=DeepVAEConfig,
)
def convergence_study(
    config: DeepVAEConfig | None = None, *, use_paper_cache: bool = False, device="auto"
) -> ConvergenceStudy:
    """Collapsed fraction against training step for fixed σ² (does the preset's run plateau?)."""
    config, provenance = _resolve(config, use_paper_cache)
    runs, sources = load_or_train(
        config, [(s, False) for s in config.convergence_sigma2], config.convergence_steps,
        device=device,
    )  # fmt: skip
    fraction = collapsed_fraction_from_thresholds(runs.thresholds, config.summary_epsilon)
    at_preset = fraction[int(np.searchsorted(runs.steps, config.steps))]
    return ConvergenceStudy(
        sigma2=runs.sigma2_init, steps=runs.steps, fraction=fraction, elbo=runs.elbo,
        thresholds=runs.thresholds, epsilon=config.summary_epsilon, preset_steps=config.steps,
        gap=np.abs(at_preset - fraction[-1]), preset=config.preset, provenance=provenance,
        sources=tuple(sources),
    )  # fmt: skip


def run_convergence_study(preset: str = "book", device: str = "auto") -> ConvergenceStudy:
    """Train (or read) the convergence study's long runs for ``preset`` and cache them."""
    return convergence_study(DeepVAEConfig.for_preset(preset), device=device)


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
    parser = argparse.ArgumentParser(description="Fill the results cache with the long runs.")
    parser.add_argument("--preset", default="book", choices=("fast", "book", "paper"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--grid", action="store_true", help="also train the grid runs")
    args = parser.parse_args(argv)
    study = run_convergence_study(args.preset, args.device)
    for s, gap, source in zip(study.sigma2, study.gap, study.sources, strict=True):
        print(f"sigma2={s:g}: |preset - long run| = {gap:.3f} ({source})")
    if args.grid:
        config = DeepVAEConfig.for_preset(args.preset)
        _, sources = load_or_train(config, config.runs(), device=args.device)
        print("\n".join(sources))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
