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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lincollapse.training import maximise

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


def module_arrays(module: nn.Module, prefix: str = "") -> dict[str, np.ndarray]:
    """``module``'s parameters and buffers as numpy arrays (copies), each named ``prefix`` and its
    name in the state dict: the results cache's form of a trained model."""
    state = module.state_dict().items()
    return {f"{prefix}{name}": value.detach().cpu().numpy().copy() for name, value in state}


def load_module_arrays(
    module: nn.Module, arrays: Mapping[str, np.ndarray], prefix: str = ""
) -> nn.Module:
    """Load into ``module`` the arrays :func:`module_arrays` named with ``prefix`` (any other
    array is ignored); returns ``module``."""
    names = module.state_dict()
    module.load_state_dict({name: torch.as_tensor(arrays[prefix + name]) for name in names})
    return module


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


#: Steps between two saved states of :func:`maximise_in_chunks` (rounded up to a multiple of
#: its ``record_every``): at most this much training is lost to an interrupt.
CHECKPOINT_EVERY = 500


def maximise_in_chunks(
    objective: Callable[[], torch.Tensor],
    model: nn.Module,
    recorder: Callable[[int], None],
    *,
    steps: int,
    record_every: int,
    checkpoint: Path | None = None,
    saved: dict[str, Any] | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    counters: dict[str, int] | None = None,
    metadata: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`lincollapse.training.maximise` of ``objective`` over ``model``'s parameters with
    Adam, saving the state to ``checkpoint`` after every chunk of steps and resuming from
    ``saved`` (what :func:`load_state` read from it).

    Chunks are whole recording windows, so the steps, records and updates are exactly those of
    one uninterrupted call. ``recorder`` is the ``on_record`` callback (a
    :class:`~lincollapse.training.Recorder`, whose records are saved); ``counters`` are the
    objective's own counters (e.g. a step count), saved and restored in place; ``metadata`` is
    saved beside the state (e.g. the layout the model was built in). The file is removed when
    training ends. Returns the recorded steps, the recorded objective values (records × runs)
    and the training seconds.
    """
    state: dict = {}
    done, seconds = 0, 0.0
    recorded_steps: list[int] = []
    recorded_values: list[np.ndarray] = []
    if saved is not None:
        model.load_state_dict(saved["model"])
        set_noise_states(model, saved["noise"])
        state, done, seconds = saved["adam"], saved["step"], saved["seconds"]
        recorder.records = saved["records"]
        recorded_steps, recorded_values = saved["recorded_steps"], saved["recorded_values"]
        if counters is not None:
            counters.update(saved.get("counters", {}))
    chunk = steps
    if checkpoint is not None:  # whole recording windows: no record one call would not make
        chunk = record_every * max(1, -(-checkpoint_every // record_every))
    while done < steps or not recorded_steps:
        end = min(done + chunk, steps)
        history = maximise(
            objective,
            model.parameters(),
            steps=end,
            record_every=record_every,
            on_record=recorder,
            start_step=done,
            optimiser_state=state,
            **options,
        )
        values = np.asarray(history.values, dtype=np.float64).reshape(history.steps.size, -1)
        recorded_steps += [int(step) for step in history.steps]
        recorded_values += list(values)
        done, seconds = end, seconds + history.seconds
        if checkpoint is not None and done < steps:
            save_state(
                checkpoint,
                {
                    **(metadata or {}),
                    "steps": steps,
                    "model": model.state_dict(),
                    "noise": noise_states(model),
                    "adam": state,
                    "step": done,
                    "seconds": seconds,
                    "records": recorder.records,
                    "recorded_steps": recorded_steps,
                    "recorded_values": recorded_values,
                    "counters": dict(counters or {}),
                },
            )
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return np.asarray(recorded_steps), np.stack(recorded_values), seconds
