"""Experiments: one function per figure, each returning data (never plotting).

Every figure function is registered with :func:`figure` so that the CLI and the book's intro
can list it with its chapter and plotting function. Plotting lives in :mod:`lincollapse.plotting`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lincollapse.data import load_mnist
from lincollapse.ppca import DataSpectrum, data_spectrum
from lincollapse.presets import ExperimentConfig

FAST_MNIST = {"n": 300}  # the ``fast`` preset's number of MNIST images in the linear chapters


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """A registered figure: what computes it, what draws it, where it appears."""

    name: str
    chapter: str
    paper_figure: str
    compute: Callable[..., Any]
    plot: str  # "module:function" in lincollapse.plotting, resolved lazily
    config: type[ExperimentConfig] | None
    summary: str
    # Wall time of each preset on the book's reference machine, e.g. {"fast": "2 s"};
    # a config class may instead carry a ``COSTS`` class attribute of the same form.
    costs: dict[str, str] | None = None

    def cost(self, preset: str) -> str | None:
        """The recorded cost of ``preset`` (see :attr:`costs`), or ``None`` if unknown."""
        costs = self.costs or getattr(self.config, "COSTS", None) or {}
        if preset == "reader" and preset not in costs:
            reads = self.config is not None and "reader" in self.config.OVERRIDES
            return None if reads else costs.get("book")  # otherwise reader computes as book
        return costs.get(preset)

    def plot_function(self) -> Callable[..., Any]:
        module, function = self.plot.split(":")
        return getattr(importlib.import_module(module), function)


FIGURES: dict[str, FigureSpec] = {}

#: Measured time in seconds of each chapter (``book/<name>.md``) run on its own, per preset, from
#: an empty results cache (README, *Measured timings*): ``book``, wall time in ``make book`` on the
#: book's 2-core CPU; ``reader``, CPU time on one core (see below). The build prints them beside
#: each chapter's progress; ``None``: not measured. Work two chapters share through the results
#: cache is in each one's cost here, and in :data:`SHARED_SECONDS` once.
CHAPTER_SECONDS: dict[str, dict[str, float]] = {
    # `make book` from a fresh clone on a quiet 2-core Intel Xeon, 2026-12-01 (25 min 39 s).
    "book": {
        # trains the deep chapter's grid: ≈ 563 s, the 576 less its own 13 s (measured 2026-11-30)
        "checks": 576,
        # estimated: 16 s measured in the build (reading that grid) + the grid's 563 s
        "deep_vae": 579,
        "beta_annealing": 340,
        # the two below: run alone by `jupyter nbconvert --execute`, 2 cores, empty results
        # cache, commit fe5cd89 (their exercises now read the chapter's runs, kept per run)
        "linear_decoder_encoders": 158,
        "linear_vae": 173,  # 7 trainings to the closed form by L-BFGS, no eigendecomposition
        "stochastic_elbo": 123,
        "beyond_the_paper": 27,
        "posterior_collapse": 22,
        "ppca": 21,
        "diagnosis": 21,
        "mnist_data": 8,
        "notation": 2,
    },
    # One core (taskset -c 0, OMP_NUM_THREADS=1), each chapter from an empty results cache, run
    # by `jupyter nbconvert --execute` (tools/reader_timings.py), 2026-11-30; the chapters that
    # read results/reader/ again on 2026-12-01, with its behaviour probes (diagnosis and
    # beyond_the_paper newly reading their trained models there). The CPU seconds, since the
    # shared machine was loaded (load average 6-11 on 2 cores; wall times in README).
    "reader": {
        "mnist_data": 10,
        "intro": 4,
        "posterior_collapse": 31,
        "ppca": 39,
        "linear_vae": 25,
        "diagnosis": 17,
        "beyond_the_paper": 14,
        "beta_annealing": 17,
        "stochastic_elbo": 36,
        "linear_decoder_encoders": 16,
        "deep_vae": 17,
        "checks": 20,
    },
}


#: Each chapter's time in ``make book``'s parallel pass (``tools/parallel_execution.py``: two
#: kernels at once on the 2 cores, one torch thread each), per preset, from an empty results cache.
#: A chapter that shares work (:data:`SHARED_SECONDS`) has it here only if it runs first.
PARALLEL_CHAPTER_SECONDS: dict[str, dict[str, float]] = {
    # `make book` from a fresh clone on a quiet 2-core Intel Xeon, 2026-12-01, commit fe5cd89
    # (the whole build 13 min 52 s: the pass 816 s, then Sphinx reading the cache).
    "book": {
        "checks": 686,  # trains the deep chapter's grid
        "deep_vae": 12,  # reads that grid, on the same kernel after it
        "beta_annealing": 357,
        "linear_decoder_encoders": 175,
        "linear_vae": 203,
        "stochastic_elbo": 112,
        "diagnosis": 20,
        "posterior_collapse": 22,
        "ppca": 20,
        "beyond_the_paper": 17,
        "mnist_data": 6,
        "notation": 1,
    },
}


#: Work that several chapters share through the results cache, in seconds per preset: a build
#: does it once, in the first of them; each chapter's :data:`CHAPTER_SECONDS` includes it.
SHARED_SECONDS: dict[str, dict[frozenset[str], float]] = {
    "book": {frozenset({"checks", "deep_vae"}): 563},  # the deep VAE grid's seven runs
}


def build_seconds(chapters: Sequence[str], preset: str) -> float:
    """The measured cost of building ``chapters`` (file stems) together at ``preset``: their
    :data:`CHAPTER_SECONDS`, with each piece of :data:`SHARED_SECONDS` counted once."""
    chosen = set(chapters)
    total = sum(CHAPTER_SECONDS.get(preset, {}).get(c) or 0.0 for c in chosen)
    for group, seconds in SHARED_SECONDS.get(preset, {}).items():
        if group <= chosen:
            total -= seconds * (len(group) - 1)
    return total


#: CPU cores of the measurements in :data:`CHAPTER_SECONDS`, per preset.
CHAPTER_COST_CORES: dict[str, int] = {"book": 2, "reader": 1, "fast": 2, "paper": 2}


def chapter_figure_costs(chapter: str, preset: str) -> list[tuple[str, str]]:
    """``(figure, recorded cost at preset)`` of every registered figure of ``chapter`` whose
    cost is recorded, in registration order."""
    rows = []
    for spec in load_all().values():
        if spec.chapter == chapter and (cost := spec.cost(preset)) is not None:
            rows.append((spec.name, cost))
    return rows


def chapter_seconds(chapter: str, preset: str) -> float | None:
    """The measured cost of ``chapter`` (a file stem) at ``preset``, or ``None``."""
    return CHAPTER_SECONDS.get(preset, {}).get(chapter)


def figure(
    name: str,
    *,
    chapter: str,
    plot: str,
    config: type[ExperimentConfig] | None = None,
    paper_figure: str = "—",
    costs: dict[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an experiment function as the computation behind figure ``name``."""

    def register(compute: Callable[..., Any]) -> Callable[..., Any]:
        if compute.__module__ == "__main__":
            # The module runs as a script (``python -m lincollapse.experiments.deep``): it hands
            # over to lincollapse.cli, which imports it by name, and that import registers.
            return compute
        if name in FIGURES:
            raise ValueError(f"figure {name!r} is registered twice")
        summary = (compute.__doc__ or "").strip().splitlines()[0] if compute.__doc__ else ""
        FIGURES[name] = FigureSpec(
            name, chapter, paper_figure, compute, plot, config, summary, costs=costs
        )
        return compute

    return register


@functools.lru_cache(maxsize=4)
def mnist_with_spectrum(n: int, seed: int) -> tuple[np.ndarray, DataSpectrum]:
    """Images and their spectrum, cached: several figures of the linear chapters share the data."""
    images = load_mnist(n, seed=seed).images
    return images, data_spectrum(images)


def load_all() -> dict[str, FigureSpec]:
    """Import every experiment module so that :data:`FIGURES` is complete."""
    for module in _MODULES:
        importlib.import_module(f"lincollapse.experiments.{module}")
    return FIGURES


# One module per chapter; add yours here.
_MODULES = (
    "mnist_data",
    "deep",
    "deep_convergence",
    "deep_study_figures",
    "ppca",
    "linear_vae",
    "posterior_collapse",
    "stochastic_elbo",
    "linear_decoder_encoders",
    "beta",
    "kl_annealing_figures",
    "beyond_the_paper",
)
