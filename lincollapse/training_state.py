"""Saving a training run's state and resuming it: noise streams, and a state file on disk.

A long training run is saved in chunks so that an interrupt loses at most one chunk
(:func:`lincollapse.deep_vae.train_batched`, :mod:`lincollapse.experiments.deep_study`). What
makes a resumed run take exactly the steps of an uninterrupted one is saved with it: the weights,
the optimiser's state, the records so far and the state of every noise stream (a model's
``_noise`` and ``_eval_noise`` generators, one or a list per module).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

NOISE_ATTRIBUTES = ("_noise", "_eval_noise")


def generators(model: nn.Module) -> list[torch.Generator]:
    """Every noise stream of ``model`` and its submodules, in a fixed order."""
    found: list[torch.Generator] = []
    for module in model.modules():
        for name in NOISE_ATTRIBUTES:
            value = getattr(module, name, None)
            if isinstance(value, torch.Generator):
                found.append(value)
            elif isinstance(value, (list, tuple)):
                found += [g for g in value if isinstance(g, torch.Generator)]
    return found


def noise_states(model: nn.Module) -> list[torch.Tensor]:
    """The states of the model's noise streams, for :func:`set_noise_states`."""
    return [generator.get_state() for generator in generators(model)]


def set_noise_states(model: nn.Module, states: Sequence[torch.Tensor]) -> None:
    """Put back the states :func:`noise_states` took from a model of the same kind."""
    streams = generators(model)
    if len(streams) != len(states):
        raise ValueError(f"{len(states)} noise states for a model with {len(streams)} streams")
    for generator, state in zip(streams, states, strict=True):
        generator.set_state(state)


def save_state(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` with ``torch.save``, atomically (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_state(path: Path, steps: int) -> dict[str, Any] | None:
    """The state saved at ``path`` by a run of ``steps`` steps that stopped part-way.

    ``None`` when there is none; also ``None``, with a warning that names the file, when it is
    unreadable or belongs to a run of another length: a partial state is only a shortcut, and
    the run then starts from the beginning.
    """
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, weights_only=False)
        if saved.get("steps") != steps or not 0 < saved["step"] < steps:
            raise ValueError(f"it is for a run of {saved.get('steps')} steps, not {steps}")
    except Exception as error:  # noqa: BLE001 - any unreadable state: start afresh
        warnings.warn(
            f"ignoring the partial training state {path} ({type(error).__name__}: {error}); "
            "training from the start",
            stacklevel=3,
        )
        return None
    return saved
