"""Presets: one environment variable sizes every experiment.

``LINCOLLAPSE_PRESET`` selects

``fast``
    seconds per chapter; what CI runs. Figures made with it are smoke-test output.
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

ENV_VAR = "LINCOLLAPSE_PRESET"
PRESETS = ("fast", "book", "paper")
DEFAULT_PRESET = "book"

ConfigT = TypeVar("ConfigT", bound="ExperimentConfig")


class UnknownPresetError(ValueError):
    """Raised for a preset name that is not one of :data:`PRESETS`."""


def check_preset(name: str) -> str:
    """Return ``name`` if it is a valid preset, else raise with the valid choices."""
    if name not in PRESETS:
        raise UnknownPresetError(
            f"unknown preset {name!r}; valid presets are {', '.join(PRESETS)} "
            f"(set {ENV_VAR}=fast|book|paper or pass preset=...)"
        )
    return name


def current_preset() -> str:
    """The preset named by ``$LINCOLLAPSE_PRESET`` (default ``book``), validated."""
    return check_preset(os.environ.get(ENV_VAR, DEFAULT_PRESET).strip() or DEFAULT_PRESET)


def preset_banner(preset: str | None = None) -> str:
    """One line a chapter prints so that readers know which preset made its figures."""
    preset = check_preset(preset or current_preset())
    notes = {
        "fast": "SMOKE-TEST output: tiny runs for CI; numbers are not meant to be read",
        "book": "the book's CPU-sized runs, checked against longer runs in the text",
        "paper": "the paper's settings",
    }
    return f"Preset: {preset} — {notes[preset]} (set {ENV_VAR} to change)."


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Base class of every experiment configuration.

    Subclasses are frozen dataclasses with defaults equal to the ``book`` preset and
    a class attribute ``OVERRIDES`` mapping ``"fast"``/``"paper"`` to field changes.
    """

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {}
    preset: str = "book"

    @classmethod
    def for_preset(cls: type[ConfigT], preset: str | None = None, **changes: Any) -> ConfigT:
        """The configuration for ``preset`` (default: the current one), with ``changes``."""
        preset = check_preset(preset or current_preset())
        fields = dict(cls.OVERRIDES.get(preset, {}))
        fields.update(changes)
        return cls(preset=preset, **fields)

    def as_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields (used as the results-cache key)."""
        return dataclasses.asdict(self) | {"experiment": type(self).__name__}
