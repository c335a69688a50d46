"""The runs of the chapter *β, σ² and KL annealing*'s deep-VAE figures: their configuration,
training or loading them, and the long runs that check the book preset.

:func:`annealing_runs` trains deep Gaussian VAEs at a collapsing σ² with and without a linear KL
warm-up (same seeds, so each pair starts from the same weights and sees the same noise), beside
runs whose σ² is set at every step to its optimum, the mean squared error per pixel. They go
through :mod:`lincollapse.results_cache` (one entry per configuration, fingerprinted by the code
of :mod:`lincollapse.kl_annealing`, :mod:`lincollapse.deep_vae`, :mod:`lincollapse.gaussian`,
:mod:`lincollapse.collapse` and :mod:`lincollapse.training`), so a rebuild of the book reads
them instead of retraining.

The long runs of the same models (more steps, two seeds) are shipped in
``results/kl_annealing_long_book.{npz,json}`` with the command, machine, date and behaviour
probe (a test fails when they are stale). Regenerate them with::

    python -m lincollapse.experiments.beta --long --preset book --write-reference

The figures that read these runs are in :mod:`lincollapse.experiments.kl_annealing_figures`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lincollapse.deep_runs import FAST_ARCHITECTURE, data_for
from lincollapse.deep_vae import Architecture, resolve_device
from lincollapse.kl_annealing import AnnealedRuns, RunSpec, train_annealed
from lincollapse.presets import READER, ExperimentConfig, results_preset
from lincollapse.references import (
    PROBE_STEPS,
    Probe,
    load_shipped,
    reference_info,
    save_shipped,
    shipped_provenance,
)
from lincollapse.results_cache import (
    ReferenceResultError,
    ResultsCache,
    source_fingerprint,
)

COMPUTING_MODULES = (
    "lincollapse.collapse",
    "lincollapse.deep_vae",
    "lincollapse.gaussian",
    "lincollapse.kl_annealing",
    "lincollapse.training",
    "lincollapse.training_state",
)
# Its own binding (not deep's imported by value), so patching one module never leaks into the other.
RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"


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
        "book": "≈ 5.7 min for the whole chapter (340 s measured 2026-12-01, 2 cores)",
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
    partial = cache.partial_path(key)
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
        checkpoint=partial,
    )
    info = {"seconds": runs.seconds, "threads": torch.get_num_threads()}
    cache.save(key, runs.arrays(), info)
    return runs, (
        f"trained now on {resolve_device(device)} in {runs.seconds:.0f} s "
        f"with {torch.get_num_threads()} thread(s)"
    )


# --------------------------------------------------------------------------------------------
# The long runs: is the book preset long enough?
# --------------------------------------------------------------------------------------------


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
