"""Presets: one environment variable, frozen configs, clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from lincollapse.experiments import load_all
from lincollapse.presets import (
    ENV_VAR,
    PRESETS,
    UnknownPresetError,
    current_preset,
    preset_banner,
)


def test_default_is_reader(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert current_preset() == "reader"


def test_unknown_preset_lists_valid_ones(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "huge")
    with pytest.raises(UnknownPresetError, match="'huge'.*fast, reader, book, paper"):
        current_preset()


def test_banner_names_preset_and_marks_smoke_output():
    assert "fast" in preset_banner("fast") and "SMOKE-TEST" in preset_banner("fast")
    assert "paper" in preset_banner("paper")


@pytest.mark.parametrize("preset", PRESETS)
def test_every_registered_config_has_frozen_presets(preset):
    figures = load_all()
    assert figures, "no figure registered"
    for spec in figures.values():
        if spec.config is None:
            continue
        config = spec.config.for_preset(preset)
        reads_shipped = "reader" in spec.config.OVERRIDES
        expected = "book" if preset == "reader" and not reads_shipped else preset
        assert config.preset == expected
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.preset = "other"  # type: ignore[misc]
