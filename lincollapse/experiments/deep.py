"""Experiments of the chapter *Deep Gaussian VAEs: collapse against σ²* (``deep_vae``): the
configuration of its deep-VAE runs and the figures of the σ² grid.

Deep Gaussian VAEs (:mod:`lincollapse.deep_vae`) are trained on MNIST for a grid of observation
noises σ², fixed and learned (initialised at each grid value), and the (ε, δ)-collapsed fraction
of their latents is compared with the linear-theory count max(0, q − #{λ_j > σ²})/q.

Runs are stored, keyed and trained-or-loaded by :mod:`lincollapse.deep_runs`; the convergence
study (the preset's runs against long runs) is :mod:`lincollapse.experiments.deep_convergence`;
the converged study of the chapter's results is :mod:`lincollapse.experiments.deep_study`.

Presets (:class:`DeepVAEConfig`): ``paper`` is the paper's experiment; ``book`` is sized for
a 2-core CPU (see the class docstring); ``fast`` is a seconds-long smoke test.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from lincollapse.collapse import linear_collapse_prediction
from lincollapse.data import covariance_eigenvalues
from lincollapse.deep_runs import (
    FAST_ARCHITECTURE,
    MissingRunsError,
    Schedule,
    data_for,
    default_cache,
    load_or_train,
    run_key,
)
from lincollapse.deep_vae import Architecture, TrainedRuns, lr_multiplier
from lincollapse.experiments import figure
from lincollapse.presets import READER, ExperimentConfig, preset_banner
from lincollapse.reader import deep_store
from lincollapse.reporting import Report

CHAPTER = "deep_vae"
PAPER_GRID = (30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0001)
EPSILONS = np.linspace(0.0, 2.0, 201)


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
        "book": "≈ 9.7 min for the whole chapter (579 s, estimated from the 2026-12-01 build)",
        "paper": "≈ 21 h on 2 CPU cores, ≈ 10–20 min on an H100-class GPU (both projected)",
        "reader": "< 1 s (the book's grid runs, shipped in results/reader/)",
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
        # The book's runs, read from results/reader/ instead of trained (lincollapse.reader).
        "reader": {},
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
class CollapseCurves(Report):
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

    def _at(self, epsilon: float) -> np.ndarray:
        return self.fraction[:, np.searchsorted(self.epsilons, epsilon)]

    def travel(self) -> float:
        """Σ_t lr_t of the runs' schedule: how far Adam can move log σ² (about lr per step)."""
        shown = DeepVAEConfig.for_preset(self.preset)  # the preset whose runs these are
        multiplier = lr_multiplier(shown.lr_decay, shown.steps) or (lambda step: 1.0)
        return shown.lr * sum(multiplier(t) for t in range(1, shown.steps + 1))

    def sigma2_table(self, epsilon: float) -> str:
        """Per run: initial and final σ², |Δ log σ²|, final ELBO and collapsed fraction at ε;
        then the travel of Adam for the schedule."""
        lines = [
            f"{'σ² init':>8} {'final σ²':>10} {'|Δ log σ²|':>11} {'final ELBO':>11} "
            f"{'collapsed (ε = ' + f'{epsilon:g})':>18}"
        ]
        rows = zip(
            self.sigma2_init, self.final_sigma2, self.final_elbo, self._at(epsilon), strict=True
        )
        for s0, s1, elbo, frac in rows:
            lines.append(
                f"{s0:>8g} {s1:>10.3g} {abs(np.log(s1 / s0)):>11.2f} {elbo:>11.1f} {frac:>18.3f}"
            )
        lines.append(f"typical travel of Adam for this schedule: Σ_t lr_t = {self.travel():.2f}")
        return "\n".join(lines)

    def glue_values(self, epsilon: float) -> dict[str, Any]:
        """Per run (named by its initial σ², e.g. ``final_sigma2_0p01``): final σ², collapsed
        fraction at ε and |Δ log σ²| (the schedule's travel is :meth:`travel`)."""
        values: dict[str, Any] = {}
        for s0, s1, frac in zip(
            self.sigma2_init, self.final_sigma2, self._at(epsilon), strict=True
        ):
            values[sigma2_key("final_sigma2", s0)] = float(s1)
            values[sigma2_key("fraction", s0)] = float(frac)
            values[sigma2_key("travel", s0)] = float(abs(np.log(s1 / s0)))
        return values


def sigma2_key(name: str, sigma2: float) -> str:
    """Glue name for a value at one σ², e.g. ``fraction_0p01``."""
    return f"{name}_{sigma2:g}".replace(".", "p").replace("-", "m")


def grid_runs(config: DeepVAEConfig, runs, device) -> tuple[TrainedRuns, list[str]]:
    """``runs`` of the grid; all missing grid runs are trained together the first time.

    The ``reader`` preset reads the ``book`` preset's runs shipped in ``results/reader/``
    (:mod:`lincollapse.reader`); only when they are missing or stale are they trained.
    """
    if config.preset == READER:
        store = deep_store(config)
        try:
            found, sources = load_or_train(config, runs, cache=store, train_missing=False)
        except MissingRunsError:
            pass
        else:
            return found, [
                s.replace("cache (", "shipped book run (results/reader/, ", 1) for s in sources
            ]
    load_or_train(config, config.runs(), device=device)  # one batched model for the whole grid
    return load_or_train(config, runs, device=device, train_missing=False)


def _curves(config, learned: bool, use_paper_cache: bool, device) -> CollapseCurves:
    config, provenance = _resolve(config, use_paper_cache)
    grid = config.sigma2_learned if learned else config.sigma2_fixed
    runs, sources = grid_runs(config, [(s, learned) for s in grid], device)
    return CollapseCurves(
        sigma2_init=runs.sigma2_init,
        learned=learned,
        epsilons=EPSILONS.copy(),
        fraction=runs.collapsed_fraction(EPSILONS),
        final_sigma2=runs.sigma2[-1],
        final_elbo=runs.elbo[-1],
        steps=config.steps,
        delta=config.delta,
        latent=config.latent,
        preset=config.preset,
        provenance=provenance,
        sources=tuple(sources),
    )


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
    fixed, _ = grid_runs(config, [(s, False) for s in config.sigma2_fixed], device)
    learned, _ = grid_runs(config, [(s, True) for s in config.sigma2_learned], device)
    eigenvalues = covariance_eigenvalues(data_for(config)[0])
    line = np.logspace(-5, 2, 300)
    eps = config.summary_epsilon
    return SigmaSummary(
        epsilon=eps,
        sigma2_fixed=fixed.sigma2_init,
        fraction_fixed=fixed.collapsed_fraction([eps])[:, 0],
        sigma2_learned_init=learned.sigma2_init,
        sigma2_learned_final=learned.sigma2[-1],
        fraction_learned=learned.collapsed_fraction([eps])[:, 0],
        sigma2_line=line,
        linear_prediction=linear_collapse_prediction(eigenvalues, line, config.latent),
        eigenvalues=eigenvalues,
        latent=config.latent,
        steps=config.steps,
        preset=config.preset,
        provenance=provenance,
    )


# The command recorded in results/deep_convergence_*.json (the long runs of the convergence study,
# now in lincollapse.experiments.deep_convergence); see lincollapse.cli.
if __name__ == "__main__":
    from lincollapse.cli import main_for_module

    raise SystemExit(main_for_module(__spec__.name))
