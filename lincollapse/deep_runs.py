"""Storage of deep-VAE runs: what determines a run, train-or-load, the long runs.

The deep-VAE experiments (:mod:`lincollapse.experiments.deep`,
:mod:`lincollapse.experiments.kl_annealing_runs`) keep their training results in the results
cache (:mod:`lincollapse.results_cache`), **one entry per run** (σ², fixed or learned), keyed by
everything that determines the run (:func:`run_key`: data content hash, widths, schedule, seed,
recording) and fingerprinted by the code of :mod:`lincollapse.deep_vae` and
:mod:`lincollapse.training`. Each run's noise comes from its own seeded stream, so with a
*constant* learning rate a run of S steps is exactly the first S steps of a longer run with the
same settings, and :func:`load_or_train` reads it from a cached long run's trajectory; with a
decaying rate it is not, and runs are trained independently.

The convergence study's long runs are shipped in ``results/deep_convergence_<preset>`` (see
:mod:`lincollapse.references`): :func:`long_runs` reads them, :func:`convergence_probe` is their
behaviour probe.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lincollapse.collapse import collapsed_fraction_from_thresholds
from lincollapse.data import load_mnist
from lincollapse.deep_vae import LR_DECAYS, TrainedRuns, resolve_device, train_batched
from lincollapse.presets import results_preset
from lincollapse.references import PROBE_STEPS, Probe, load_shipped, shipped_provenance
from lincollapse.results_cache import (
    ReferenceResultError,
    ResultsCache,
    source_fingerprint,
)

if TYPE_CHECKING:
    from lincollapse.experiments.deep import DeepVAEConfig

# The code that computes a run; the data enter the keys by content hash instead of by code.
COMPUTING_MODULES = (
    "lincollapse.collapse",
    "lincollapse.deep_vae",
    "lincollapse.gaussian",
    "lincollapse.training",
    "lincollapse.training_state",
)
# The smoke-test model of every deep-VAE experiment's ``fast`` preset.
FAST_ARCHITECTURE = {"n": 200, "latent": 8, "encoder_hidden": (32, 16), "decoder_hidden": (16, 32)}


REFERENCE_EPSILONS = (0.01, 0.03, 0.1, 0.3, 1.0)
TOLERANCE = 0.05
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
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


def data_for(config: DeepVAEConfig) -> tuple[np.ndarray, str]:
    """The images (n, 784) and an identifier of them (source + content hash) for cache keys."""
    return mnist_images(config.n, config.data_seed)


@functools.lru_cache(maxsize=4)
def mnist_images(n: int, seed: int) -> tuple[np.ndarray, str]:
    """``load_mnist(n, seed)``'s images, read-only and cached, and an identifier of them
    (source and content hash) for cache keys."""
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
        keys = [run_key(config, *runs[i], schedule, data_id) for i in group]
        partial = cache.partial_path({"runs": keys})
        trained = train_batched(
            x,
            config.arch,
            [runs[i][0] for i in group],
            [runs[i][1] for i in group],
            steps=schedule.steps,
            lr=schedule.lr,
            lr_decay=schedule.lr_decay,
            seed=config.seed,
            record_every=schedule.record_every,
            delta=config.delta,
            device=device,
            progress=progress,
            checkpoint=partial,
        )
        where = f"trained now on {resolve_device(device)} in {trained.seconds:.0f} s"
        for column, index in enumerate(group):
            one = trained.run(column)
            arrays = {
                "steps": one.steps,
                "elbo": one.elbo[:, 0],
                "sigma2": one.sigma2[:, 0],
                "thresholds": one.thresholds[:, 0],
                "kl_mean": one.kl_mean[:, 0],
            }
            info = {
                "seconds": trained.seconds,
                "runs_trained_together": len(group),
                "threads": torch.get_num_threads(),
            }
            cache.save(keys[column], arrays, info)
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


def long_runs(
    config: DeepVAEConfig,
    *,
    device: str | torch.device | None = "auto",
    train_missing: bool = False,
    progress: bool | None = None,
) -> tuple[dict[str, np.ndarray] | None, str]:
    """The convergence study's long runs of ``config`` as :func:`long_run_arrays`, and where from.

    In order: the shipped reference (``results/deep_convergence_<preset>``, validated: checksums
    and configuration; its behaviour is checked by the tests, :func:`convergence_probe`), the
    results cache, training now (only when
    ``train_missing``). Returns ``(None, reason)`` when none is available.
    """
    _, data_id = data_for(config)
    stem = convergence_reference_path(results_preset(config.preset))
    problems = []
    try:
        arrays, meta = load_shipped(stem, convergence_key(config, data_id))
        return arrays, shipped_provenance(stem, meta)
    except ReferenceResultError as error:
        problems.append(str(error))
    runs = [(s, False) for s in config.convergence_sigma2]
    try:
        trained, sources = load_or_train(
            config,
            runs,
            config.long_schedule(),
            device=device,
            progress=progress,
            train_missing=train_missing,
        )
    except MissingRunsError as error:
        problems.append(str(error))
        return None, "; ".join(problems)
    return long_run_arrays(trained), "; ".join(dict.fromkeys(sources))


def plateau_range(steps: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """max − min of ``fraction`` (k, c) over the last quarter of ``steps`` (k,): shape (c,)."""
    tail = fraction[steps >= 0.75 * steps[-1]]
    return tail.max(axis=0) - tail.min(axis=0)


def behaviour_probe(
    config: DeepVAEConfig,
    runs: Sequence[tuple[float, bool]],
    schedule: Schedule,
    images: int | None = None,
) -> Probe:
    """The behaviour probe of runs ``(σ², learned)`` of ``config`` trained with ``schedule``.

    Their first :data:`~lincollapse.references.PROBE_STEPS` Adam steps replayed in float64 on
    the CPU (same data, widths, seeds, learning rate and schedule), recording every step: the
    ELBO, σ², the collapse thresholds and the mean KL per latent. ``images``: replay on the
    first ``images`` images only (default: all, as the shipped references do). See
    :mod:`lincollapse.references`.
    """

    def probe() -> dict[str, np.ndarray]:
        x = data_for(config)[0]
        trained = train_batched(
            x if images is None else x[:images],
            config.arch,
            [s for s, _ in runs],
            [v for _, v in runs],
            steps=PROBE_STEPS,
            lr=schedule.lr,
            lr_decay=schedule.lr_decay,
            seed=config.seed,
            record_every=1,
            delta=config.delta,
            dtype=torch.float64,
            device="cpu",
            progress=False,
            schedule_steps=schedule.steps,
        )
        names = ("elbo", "sigma2", "thresholds", "kl_mean")
        return {name: getattr(trained, name) for name in names}

    return probe


def convergence_probe(config: DeepVAEConfig) -> Probe:
    """:func:`behaviour_probe` of the convergence study's long runs of ``config``."""
    runs = [(s, False) for s in config.convergence_sigma2]
    return behaviour_probe(config, runs, config.long_schedule())
