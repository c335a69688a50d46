"""Shipped reference results: long runs computed once and committed in ``results/``.

A shipped reference is a pair ``results/<stem>.{npz,json}`` written by
:func:`lincollapse.results_cache.save_reference`: small arrays, the configuration that produced
them, a checksum per array and provenance (command, machine, threads, date, wall time). Every
chapter that ships results reads them through :func:`load_shipped` and states where they came
from with :func:`shipped_provenance`.

**Staleness is keyed on behaviour, not on source text.** A reference is current when the code
*now* computes what the code that made it computed. Each reference stores a *behaviour probe*:
the first few optimiser steps of its own runs (same data, widths, σ², seeds, learning rate),
replayed in float64 on the CPU, recorded as arrays ``probe_<name>`` in the reference itself
(so they are covered by its checksums). :func:`verify_behaviour` replays the probe with the
current code and compares; the tests call it for every shipped reference. A refactor that moves
code or changes float32 round-off (another layout, BLAS, thread count) passes — float64 keeps
those differences near 1e-13 — while any change of the numerics (initialisation, noise streams,
objective, optimiser, schedule, data, collapse statistics) changes the probe by many orders of
magnitude more than the tolerance and fails it.
"""

from __future__ import annotations

import datetime as _datetime
import json
import os
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lincollapse.results_cache import (
    MANIFEST_CHECKSUM,
    ReferenceResultError,
    computing_only,
    load_reference,
    manifest_checksum,
    save_reference,
)

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
PROBE_PREFIX = "probe_"
PROBE_STEPS = 2
# float64 replays agree to ≈ 1e-13 across BLAS and layouts; any real change moves them by far more
PROBE_RTOL, PROBE_ATOL = 1e-6, 1e-9

Probe = Callable[[], Mapping[str, np.ndarray]]


def machine_description() -> str:
    """CPU model (or GPU name) of this machine, for provenance records."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def reference_info(command: str, device: str, seconds: float | None, **extra: Any) -> dict:
    """The ``info`` of a shipped reference: command, machine, device, threads, wall time, torch."""
    return {
        "command": command,
        "machine": machine_description(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        **extra,
        "torch": torch.__version__,
    }


def _minutes(seconds: Any) -> str:
    if isinstance(seconds, (int, float)) and np.isfinite(seconds):
        return f"{seconds / 60:.0f} min"
    return "wall time not recorded: read from the cache"


def shipped_provenance(stem: Path, meta: Mapping) -> str:
    """How a shipped reference (``results/<stem>``) was computed: command, date, machine, time."""
    info = meta.get("info", {})
    text = (
        f"precomputed by `{info.get('command', '?')}` on {meta.get('created', '?')[:10]} "
        f"({info.get('machine', '?')}, {info.get('threads', '?')} thread(s), "
        f"{_minutes(info.get('seconds'))}), shipped as {stem.parent.name}/{stem.name}.npz"
    )
    stamped = meta.get("behaviour", {}).get("stamped")
    if stamped:
        text += f"; its behaviour probe was added on {stamped[:10]}, after the code was checked"
    return text


def probe_arrays(probe: Probe) -> dict[str, np.ndarray]:
    """The probe's arrays under their stored names (``probe_<name>``), float64."""
    return {PROBE_PREFIX + k: np.asarray(v, dtype=np.float64) for k, v in probe().items()}


def load_shipped(
    stem: str | os.PathLike, config: Mapping[str, Any] | None
) -> tuple[dict[str, np.ndarray], dict]:
    """The validated arrays (probe arrays removed) and meta of a shipped reference.

    Checks files, checksums and configuration (:func:`load_reference`); staleness is the
    business of :func:`verify_behaviour`, run by the tests, since it trains a few steps.
    """
    arrays, meta = load_reference(stem, config, None)
    return {k: v for k, v in arrays.items() if not k.startswith(PROBE_PREFIX)}, meta


def save_shipped(
    stem: str | os.PathLike,
    config: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    probe: Probe,
    info: Mapping[str, Any],
    fingerprint: str = "",
) -> tuple[Path, Path]:
    """Write a shipped reference with its behaviour probe (computed now, by ``probe``)."""
    stem = Path(stem)
    everything = {**arrays, **probe_arrays(probe)}
    npz, js = save_reference(stem, config, everything, fingerprint, info)
    _update_meta(js, {"behaviour": _behaviour_meta(None)})
    return npz, js


def _behaviour_meta(stamped: str | None) -> dict[str, Any]:
    return {
        "probe": f"first {PROBE_STEPS} optimiser steps of the runs replayed in float64 on the CPU",
        "rtol": PROBE_RTOL,
        "atol": PROBE_ATOL,
        **({"stamped": stamped} if stamped else {}),
    }


def _update_meta(js: Path, changes: Mapping[str, Any]) -> None:
    """Rewrite ``js`` with ``changes`` applied and its manifest checksum renewed, atomically (a
    temporary file renamed over it)."""
    meta = {**json.loads(js.read_text(encoding="utf-8")), **changes}
    meta[MANIFEST_CHECKSUM] = manifest_checksum(meta)
    tmp = js.with_name(f".{js.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.chmod(0o644)
        os.replace(tmp, js)
    finally:
        tmp.unlink(missing_ok=True)


def stamp_behaviour(stem: str | os.PathLike, probe: Probe) -> None:
    """Add a behaviour probe to a reference made before probes existed (keeping everything else).

    Only correct when the code now computes what the code that made the reference computed —
    check that first (e.g. the source fingerprint still matches). The meta records the date.
    """
    stem = Path(stem)
    arrays, meta = load_reference(stem, None, None)
    arrays = {k: v for k, v in arrays.items() if not k.startswith(PROBE_PREFIX)}
    arrays.update(probe_arrays(probe))
    _, js = save_reference(
        stem, meta["config"], arrays, meta.get("fingerprint", ""), meta.get("info", {})
    )
    stamped = _datetime.datetime.now(_datetime.UTC).isoformat(timespec="seconds")
    _update_meta(js, {"created": meta["created"], "behaviour": _behaviour_meta(stamped)})


def verify_behaviour(stem: str | os.PathLike, probe: Probe, command: str = "") -> dict:
    """Replay a shipped reference's probe with the code now; raise if it no longer matches.

    Raises :class:`ReferenceResultError` naming the array that differs and by how much, and the
    fix (regenerate the reference, ``command``). Returns the reference's meta.
    """
    stem = Path(stem)
    arrays, meta = load_reference(stem, None, None)
    stored = {k[len(PROBE_PREFIX) :]: v for k, v in arrays.items() if k.startswith(PROBE_PREFIX)}
    fix = f"regenerate it ({command})" if command else "regenerate it"
    if not stored:
        raise ReferenceResultError(f"reference {stem.name} has no behaviour probe; {fix}")
    with computing_only():  # replayed, never read from a cache
        replayed = probe()
    now = {k: np.asarray(v, dtype=np.float64) for k, v in replayed.items()}
    if set(now) != set(stored):
        raise ReferenceResultError(
            f"reference {stem.name}: the probe records {sorted(now)}, "
            f"the reference {sorted(stored)}; {fix}"
        )
    difference = probe_difference(now, stored)
    if difference is not None:
        name, worst = difference
        raise ReferenceResultError(
            f"reference {stem.name} is stale: the code now computes different {name!r} in "
            f"the first {PROBE_STEPS} steps of its runs (largest relative difference "
            f"{worst:.3g}, tolerance {PROBE_RTOL:g}); {fix}"
        )
    return meta


def probe_difference(
    now: Mapping[str, np.ndarray], stored: Mapping[str, np.ndarray]
) -> tuple[str, float] | None:
    """The first array of the probe ``now`` that differs from the ``stored`` one by more than
    the tolerance (:data:`PROBE_RTOL`, :data:`PROBE_ATOL`), with its largest relative difference
    (infinite for another shape); ``None`` when every array agrees. Both have the same names."""
    for name, value in now.items():
        value, expected = np.asarray(value), np.asarray(stored[name])
        if value.shape != expected.shape:
            return name, float("inf")
        if not np.allclose(value, expected, rtol=PROBE_RTOL, atol=PROBE_ATOL, equal_nan=True):
            relative = np.abs(value - expected) / (np.abs(expected) + PROBE_ATOL)
            return name, float(np.nanmax(relative)) if np.any(np.isfinite(relative)) else np.inf
    return None
