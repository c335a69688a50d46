"""Presets: one environment variable sizes every experiment.

``LINCOLLAPSE_PRESET`` selects

``fast``
    seconds per chapter; what CI runs. Figures made with it are smoke-test output.
``reader``
    the default when the variable is unset, i.e. a chapter opened in Jupyter (on Binder or a
    laptop): every chapter runs top to bottom in about a minute on one CPU core. Every
    experiment keeps the ``book`` preset's configuration; the few whose training takes longer
    than that read the ``book`` preset's own results, computed once and shipped in
    ``results/reader/`` (:mod:`lincollapse.reader`), instead of training. Their configs carry an
    ``OVERRIDES["reader"]`` entry (usually empty: same fields, ``preset="reader"``) so that the
    code can tell; every other config asked for ``reader`` *is* the ``book`` one.
``book``
    what the rendered book runs inline on a 2-core CPU. Every shortening it makes
    relative to ``paper`` is justified by a measurement shown in the book.
``paper``
    the paper's settings (GPU when present).

Each experiment owns a frozen dataclass whose ``for_preset`` classmethod returns the
configuration for a preset; nothing else reads the environment variable.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, TypeVar

from lincollapse.threads import available_cores

ENV_VAR = "LINCOLLAPSE_PRESET"
PRESETS = ("fast", "reader", "book", "paper")
#: What an unset ``$LINCOLLAPSE_PRESET`` means: a reader who opened a chapter in Jupyter.
#: ``make book`` and ``make test`` set the variable (``book``, ``fast``).
DEFAULT_PRESET = "reader"
READER = "reader"

ConfigT = TypeVar("ConfigT", bound="ExperimentConfig")


class UnknownPresetError(ValueError):
    """Raised for a preset name that is not one of :data:`PRESETS`."""


def check_preset(name: str) -> str:
    """Return ``name`` if it is a valid preset, else raise with the valid choices."""
    if name not in PRESETS:
        raise UnknownPresetError(
            f"unknown preset {name!r}; valid presets are {', '.join(PRESETS)} "
            f"(set {ENV_VAR}={'|'.join(PRESETS)} or pass preset=...)"
        )
    return name


def current_preset() -> str:
    """The preset named by ``$LINCOLLAPSE_PRESET`` (default ``reader``), validated."""
    return check_preset(os.environ.get(ENV_VAR, DEFAULT_PRESET).strip() or DEFAULT_PRESET)


def results_preset(preset: str) -> str:
    """The preset whose shipped results ``preset`` reads: ``book`` for ``reader``, else itself."""
    return "book" if check_preset(preset) == READER else preset


PRESET_NOTES = {
    "fast": "SMOKE-TEST output: tiny runs for CI; numbers are not meant to be read",
    "reader": (
        "the book's own configurations; runs too long for one core are read from the book's "
        "shipped results instead of trained"
    ),
    "book": "the book's CPU-sized runs, checked against longer runs in the text",
    "paper": "the paper's settings",
}


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.0f} min"


def chapter_cost(chapter: str, preset: str) -> str:
    """What running ``chapter`` top to bottom at ``preset`` costs, from the measured table
    (:data:`lincollapse.experiments.CHAPTER_SECONDS`), scaled to the cores available here."""
    from lincollapse.experiments import CHAPTER_COST_CORES, chapter_seconds

    seconds = chapter_seconds(chapter, preset)
    if seconds is None:
        return f"not measured for the {preset} preset"
    measured_cores = CHAPTER_COST_CORES[preset]
    here = available_cores()
    text = f"{_seconds(seconds)} measured on {measured_cores} CPU core(s)"
    if here < measured_cores and seconds >= 30:
        scaled = _seconds(seconds * measured_cores / here)
        text += f"; expect up to {scaled} on the {here} core(s) of this kernel"
    return text


def preset_banner(preset: str | None = None, *, chapter: str | None = None) -> str:
    """What a chapter prints first: the preset in use, what ``chapter`` costs with it and with
    the ``book`` preset, its expensive figures, and how to choose another preset."""
    preset = check_preset(preset or current_preset())
    lines = [f"Preset: {preset} — {PRESET_NOTES[preset]} (set {ENV_VAR} to change)."]
    if chapter is None:
        return lines[0]
    lines.append(f"This chapter, top to bottom: {chapter_cost(chapter, preset)}.")
    if preset != "book":
        lines.append(f"With the book preset: {chapter_cost(chapter, 'book')}.")
    from lincollapse.experiments import chapter_figure_costs

    for name, cost in chapter_figure_costs(chapter, preset):
        lines.append(f"  figure {name}: {cost}")
    others = ", ".join(p for p in PRESETS if p != preset)
    lines.append(
        f"Another preset ({others}): run `%env {ENV_VAR}=book` in a cell above this one and "
        f"Run All, or start Jupyter with {ENV_VAR}=book in the environment."
    )
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Base class of every experiment configuration.

    Subclasses are frozen dataclasses with defaults equal to the ``book`` preset and
    a class attribute ``OVERRIDES`` mapping ``"fast"``/``"paper"`` (and ``"reader"``, for the
    experiments whose results that preset reads from ``results/reader/``) to field changes.
    """

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {}
    preset: str = "book"

    @classmethod
    def for_preset(cls: type[ConfigT], preset: str | None = None, **changes: Any) -> ConfigT:
        """The configuration for ``preset`` (default: the current one), with ``changes``."""
        preset = check_preset(preset or current_preset())
        if preset == READER and READER not in cls.OVERRIDES:
            preset = "book"  # nothing to read instead of computing: the book's own computation
        fields = dict(cls.OVERRIDES.get(preset, {}))
        fields.update(changes)
        return cls(preset=preset, **fields)

    def as_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields (used as the results-cache key)."""
        return dataclasses.asdict(self) | {"experiment": type(self).__name__}
