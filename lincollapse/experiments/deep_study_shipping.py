"""Shipping the deep chapter's study: each group of finished runs as
``results/deep_study_<group>.{npz,json}`` and the traversal run's decoder as
``results/deep_traversal``, each with its behaviour probe (:mod:`lincollapse.references`); and
loading a group back, shipped or from the local store.

The runs themselves (their specs, training and store) are in
:mod:`lincollapse.experiments.deep_study`.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lincollapse.collapse import collapsed_fraction_from_thresholds
from lincollapse.deep_vae import GaussianVAE
from lincollapse.experiments.deep_study import (
    EPSILONS,
    GROUPS,
    PLATEAU_EPSILONS,
    RECORD_EVERY,
    RunSpec,
    finished,
    load_model,
    plateau,
    run_probe,
    study_data,
)
from lincollapse.references import (
    PROBE_ATOL,
    PROBE_RTOL,
    RESULTS_DIR,
    Probe,
    load_shipped,
    machine_description,
    reference_info,
    save_shipped,
    shipped_provenance,
    verify_behaviour,
)
from lincollapse.results_cache import ReferenceResultError, config_key


def reference_path(group: str) -> Path:
    """Stem of a group's shipped runs: ``results/deep_study_<group>``."""
    return RESULTS_DIR / f"deep_study_{group}"


def group_key(group: str, specs: Sequence[RunSpec] | None = None) -> dict[str, Any]:
    """The configuration of a shipped group: the keys of its runs (default: all of them)."""
    specs = GROUPS[group] if specs is None else specs
    return {
        "experiment": "deep_study_group",
        "group": group,
        "runs": [spec.key() for spec in specs],
    }


def _load_shipped_group(group: str) -> tuple[dict[str, np.ndarray], dict, list[RunSpec]]:
    """A shipped group's arrays, meta and runs (in its order); raises
    :class:`ReferenceResultError` when it is missing, corrupt or of another configuration."""
    arrays, meta = load_shipped(reference_path(group), None)
    return arrays, meta, _shipped_specs(group, meta)


def _shipped_specs(group: str, meta: dict) -> list[RunSpec]:
    """The runs a shipped group holds, in its order; raises if any is not one of the group's."""
    known = {config_key(spec.key()): spec for spec in GROUPS[group]}
    config = meta.get("config", {})
    if config.get("experiment") != "deep_study_group" or config.get("group") != group:
        raise ReferenceResultError(f"reference for {group!r} holds another experiment")
    specs = [known.get(config_key(run)) for run in config.get("runs", [])]
    if not specs or None in specs:
        raise ReferenceResultError(
            f"reference for {group!r} holds runs of another configuration than the current one"
        )
    return specs


def group_probe(group: str, specs: Sequence[RunSpec] | None = None) -> Probe:
    """Behaviour probe of a group's runs (default: all): :func:`run_probe` of each, stacked."""
    specs = GROUPS[group] if specs is None else specs

    def probe() -> dict[str, np.ndarray]:
        probes = [run_probe(spec) for spec in specs]
        return {k: np.stack([p[k] for p in probes]) for k in probes[0]}

    return probe


CHECKPOINT_EVERY = 20  # records between the threshold snapshots kept in a shipped group
FINAL_WINDOW = 1000  # steps: a run's final collapsed fraction is its mean over its last ones

_SETTINGS = ("sigma2", "learned", "pixels", "n_train", "seed")
# arrays with a record (or snapshot) axis after the run axis, padded with NaN past a run's end
_RECORD_AXIS = (
    "fraction",
    "fraction_test",
    "elbo",
    "elbo_test",
    "sigma2_path",
    "snapshot_thresholds",
    "snapshot_thresholds_test",
    "snapshot_steps",
)


def _pad(rows: list[np.ndarray]) -> np.ndarray:
    longest = max(r.shape[0] for r in rows)
    out = np.full((len(rows), longest, *rows[0].shape[1:]), np.nan)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


def group_arrays(runs: list[tuple[RunSpec, dict[str, np.ndarray], dict]]) -> dict[str, np.ndarray]:
    """The arrays of a shipped group (runs padded with NaN after their last record).

    ``steps`` (k,); per run r: ``fraction``/``fraction_test`` (R, k, e) at :data:`EPSILONS`,
    ``elbo``/``elbo_test``/``sigma2_path`` (R, k), threshold snapshots every
    :data:`CHECKPOINT_EVERY` records and at each run's end (``snapshot_thresholds``,
    ``snapshot_thresholds_test`` (R, m, q), NaN-padded, at ``snapshot_steps`` (R, m)),
    ``kl_mean_final`` (R, q), and the run's settings and outcome (``sigma2``, ``learned``,
    ``pixels``, ``n_train``, ``seed``, ``steps_done``, ``converged``, ``movement``, ``seconds``).
    """
    return _stack_rows([_run_row(spec, arrays, info) for spec, arrays, info in runs])


def _run_row(spec: RunSpec, arrays: dict[str, np.ndarray], info: dict) -> dict[str, np.ndarray]:
    """One finished run's row of :func:`group_arrays`, unpadded."""
    k = arrays["steps"].size
    snaps = sorted(set(range(0, k, CHECKPOINT_EVERY)) | {k - 1})
    # the plateau rule evaluated on the records at the run's end
    converged, movement = plateau(
        arrays["steps"], collapsed_fraction_from_thresholds(arrays["thresholds"], PLATEAU_EPSILONS)
    )
    return {
        "fraction": collapsed_fraction_from_thresholds(arrays["thresholds"], EPSILONS),
        "fraction_test": collapsed_fraction_from_thresholds(arrays["thresholds_test"], EPSILONS),
        "elbo": arrays["elbo"],
        "elbo_test": arrays["elbo_test"],
        "sigma2_path": arrays["sigma2"],
        "snapshot_thresholds": arrays["thresholds"][snaps],
        "snapshot_thresholds_test": arrays["thresholds_test"][snaps],
        "snapshot_steps": arrays["steps"][snaps].astype(np.float64),
        "kl_mean_final": arrays["kl_mean"][-1],
        "sigma2": np.array(spec.sigma2),
        "learned": np.array(spec.learned),
        "pixels": np.array(spec.pixels),
        "n_train": np.array(spec.n_train),
        "seed": np.array(spec.seed),
        "steps_done": arrays["steps"][-1],
        "seconds": np.array(info["seconds"], dtype=np.float64),
        "converged": np.array(converged),
        "movement": np.array(movement, dtype=np.float64),
    }


def _shipped_row(arrays: dict[str, np.ndarray], r: int) -> dict[str, np.ndarray]:
    """Run ``r`` of a shipped group as the row :func:`_run_row` made, its NaN padding removed."""
    records = int(arrays["steps_done"][r]) // RECORD_EVERY + 1
    snapshots = int(np.count_nonzero(~np.isnan(arrays["snapshot_steps"][r])))
    row = {}
    for name, values in arrays.items():
        if name == "steps":
            continue
        value = values[r]
        if name in _RECORD_AXIS:
            value = value[: snapshots if name.startswith("snapshot") else records]
        row[name] = value
    return row


def _stack_rows(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    out = {name: _pad([row[name] for row in rows]) for name in _RECORD_AXIS}
    out["steps"] = np.arange(out["fraction"].shape[1], dtype=np.int64) * RECORD_EVERY
    for name in rows[0]:
        if name not in _RECORD_AXIS:
            out[name] = np.stack([row[name] for row in rows])
    return out


def _check_behaviour(spec: RunSpec, arrays: dict[str, np.ndarray]) -> None:
    """Raise unless the code now reproduces the probe the run recorded when it started."""
    for name, value in run_probe(spec).items():
        if not np.allclose(value, arrays[f"probe_{name}"], rtol=PROBE_RTOL, atol=PROBE_ATOL):
            raise ReferenceResultError(
                f"{spec.label} was trained by code that behaves differently from the code now "
                f"({name!r} differs); retrain it"
            )


def ship_group(group: str, command: str) -> Path:
    """Write ``results/deep_study_<group>`` from the finished runs of ``group``.

    Ships the runs that are finished here, and keeps each run already shipped that is not
    finished here (a new machine has none of the earlier ones), so a group grows run by run
    across machines. A run finished here is shipped only when the code now reproduces its own
    probe (recorded when it started training), and the runs kept only when the code now
    reproduces the shipped probe, so nothing trained by other code is shipped.
    """
    rows, sources = _merged_rows(group, check=True)
    if not rows:
        raise ReferenceResultError(f"{group}: no run is finished; train them first")
    specs = list(rows)
    arrays = _stack_rows(list(rows.values()))
    info = reference_info(
        command,
        "cpu",
        float(arrays["seconds"].sum()),
        threads_per_run=sorted(sources["threads"]),
        runs=sources["runs"],
    )
    info["machine"] = machines_summary(sources["runs"])
    stem = reference_path(group)
    save_shipped(stem, group_key(group, specs), arrays, group_probe(group, specs), info)
    return stem


def _merged_rows(group: str, check: bool) -> tuple[dict[RunSpec, dict[str, np.ndarray]], dict]:
    """The group's rows in its order: a run finished here from the local store, else the shipped
    one; and where they came from (``local``, ``shipped`` specs, per-run ``threads``, the
    shipped ``provenance``). ``check``: raise unless the code reproduces every run's probe."""
    stem = reference_path(group)
    shipped: dict[RunSpec, dict[str, np.ndarray]] = {}
    sources: dict[str, Any] = {
        "local": [],
        "shipped": [],
        "threads": set(),
        "provenance": None,
        "runs": {},
    }
    shipped_runs_info: dict[str, dict[str, str]] = {}
    try:
        arrays, meta, specs = _load_shipped_group(group)
    except ReferenceResultError:
        if check and stem.with_suffix(".npz").is_file():
            raise
    else:
        shipped = {spec: _shipped_row(arrays, r) for r, spec in enumerate(specs)}
        sources["provenance"] = shipped_provenance(stem, meta)
        shipped_threads = set(meta.get("info", {}).get("threads_per_run", []))
        # where and when each shipped run was trained: recorded per run since 2026-12-02; a
        # group shipped before then was trained on the one machine that shipped it
        whole = {
            "machine": meta.get("info", {}).get("machine", "?"),
            "date": meta.get("created", "?")[:10],
        }
        recorded = meta.get("info", {}).get("runs", {})
        shipped_runs_info = {spec.label: recorded.get(spec.label, whole) for spec in specs}
    rows: dict[RunSpec, dict[str, np.ndarray]] = {}
    for spec in GROUPS[group]:
        found = finished(spec)
        if found is not None:
            if check:
                _check_behaviour(spec, found[0])
            info = found[1].get("info", {})
            rows[spec] = _run_row(spec, found[0], info)
            sources["local"].append(spec)
            sources["threads"].add(info.get("threads"))
            # where and when it finished training (its store entry's date; a run stored
            # before the machine was recorded per run was trained on this machine)
            sources["runs"][spec.label] = {
                "machine": info.get("machine", machine_description()),
                "date": found[1].get("created", _today())[:10],
            }
        elif spec in shipped:
            rows[spec] = shipped[spec]
            sources["shipped"].append(spec)
            sources["runs"][spec.label] = shipped_runs_info[spec.label]
    if check and sources["shipped"]:
        verify_behaviour(
            stem,
            group_probe(group, specs),
            f"python -m lincollapse study train "
            f"--group {group}: retrain the runs {_labels(sources['shipped'])}",
        )
        sources["threads"] |= shipped_threads
    return rows, sources


def shipped_runs(group: str, check: bool = False) -> dict[RunSpec, dict[str, Any]]:
    """The runs of the shipped group, each with its ``steps``, ``converged`` and ``seconds``;
    empty when the group is not shipped, is invalid, or (``check``) is stale: its probe no
    longer replays with the code now."""
    stem = reference_path(group)
    try:
        arrays, meta, specs = _load_shipped_group(group)
        if check:
            verify_behaviour(stem, group_probe(group, specs))
    except ReferenceResultError:
        return {}
    return {
        spec: {
            "steps": int(arrays["steps_done"][r]),
            "converged": bool(arrays["converged"][r]),
            "seconds": float(arrays["seconds"][r]),
        }
        for r, spec in enumerate(specs)
    }


def machines_summary(runs: dict[str, dict[str, str]]) -> str:
    """The machine(s) a group's runs were trained on: one name, or each with its run count."""
    counts: dict[str, int] = {}
    for run in runs.values():
        counts[run["machine"]] = counts.get(run["machine"], 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{name} ({n} run{'s' * (n != 1)})" for name, n in counts.items())


def _today() -> str:
    return datetime.datetime.now(datetime.UTC).date().isoformat()


def _labels(specs: Sequence[RunSpec]) -> str:
    return ", ".join(spec.label for spec in specs)


@dataclasses.dataclass(frozen=True)
class StudyGroup:
    """A shipped (or locally finished) group of runs, as :func:`group_arrays`, and where from."""

    name: str
    arrays: dict[str, np.ndarray]
    provenance: str
    missing: tuple[str, ...] = ()

    def final_fraction(self, epsilon: float = 0.01, test: bool = False) -> np.ndarray:
        """Collapsed fraction at ``epsilon`` at each run's end, (R,): the mean of its records over
        its last :data:`FINAL_WINDOW` steps, so that the record-to-record jitter of a strict ε
        at small σ² does not decide the number."""
        e = EPSILONS.index(epsilon)
        values = self.arrays["fraction_test" if test else "fraction"][..., e]
        last = self.arrays["steps_done"] // RECORD_EVERY
        first = np.maximum(0, last - FINAL_WINDOW // RECORD_EVERY)
        return np.array([values[r, first[r] : last[r] + 1].mean() for r in range(last.size)])


def load_group(group: str) -> StudyGroup | None:
    """The group's runs: each finished in the local store, else shipped; ``None`` when none is
    available. ``missing`` names the runs not included."""
    rows, sources = _merged_rows(group, check=False)
    if not rows:
        return None
    if not sources["local"]:
        provenance = sources["provenance"]
    else:
        provenance = "finished runs in the local results cache: " + _labels(sources["local"])
        if sources["shipped"]:
            provenance += f"; the others {sources['provenance']}"
    return StudyGroup(group, _stack_rows(list(rows.values())), provenance, _missing(group, rows))


def _missing(group: str, present: Sequence[RunSpec]) -> tuple[str, ...]:
    return tuple(spec.label for spec in GROUPS[group] if spec not in present)


def _settings(arrays: dict[str, np.ndarray], run: int) -> tuple:
    return tuple(arrays[name][run].item() for name in _SETTINGS)


def run_spec(arrays: dict[str, np.ndarray], run: int) -> RunSpec:
    """The capped :class:`RunSpec` of run ``run`` of a group's arrays (its settings)."""
    return RunSpec(
        float(arrays["sigma2"][run]),
        learned=bool(arrays["learned"][run]),
        pixels=str(arrays["pixels"][run]),
        n_train=int(arrays["n_train"][run]),
        seed=int(arrays["seed"][run]),
    )


def _label(arrays: dict[str, np.ndarray], run: int) -> str:
    learned = " learned" if arrays["learned"][run] else ""
    return f"σ²={arrays['sigma2'][run]:g}{learned} seed {arrays['seed'][run]}"


def with_extensions(
    group: StudyGroup, extended: StudyGroup | None, continuations: str = "extended"
) -> StudyGroup:
    """``group`` with each run replaced by its continuation (a run of ``extended``, the shipped
    group ``continuations``: ``"extended"``, to
    :data:`~lincollapse.experiments.deep_study.EXTENDED_MAX_STEPS`, or ``"further"``) where one
    is available and longer.

    A continuation starts from its run's final state, so its records begin with the run's own:
    the replacement only lengthens a run. A run that is to be continued but whose continuation
    is not available yet is marked not converged (the rule cannot be trusted on it: it may sit
    at zero collapse before collapse starts). The provenance names the runs of both kinds.
    """
    a = group.arrays
    e = extended.arrays if extended is not None else None
    longer = {} if e is None else {_settings(e, r): r for r in range(e["sigma2"].size)}
    planned = {
        (spec.sigma2, spec.learned, spec.pixels, spec.n_train, spec.seed)
        for spec in GROUPS[continuations]
    }
    swap, pending = {}, []
    for r in range(a["sigma2"].size):
        key = _settings(a, r)
        if key in longer and e["steps_done"][longer[key]] >= a["steps_done"][r]:
            swap[r] = longer[key]
        elif key in planned:
            pending.append(r)
    if not swap and not pending:
        return group
    out = dict(a)
    if swap:
        for name, values in a.items():
            if name == "steps":
                out[name] = values if values.size >= e["steps"].size else e["steps"]
                continue
            rows = [e[name][swap[r]] if r in swap else values[r] for r in range(values.shape[0])]
            # record arrays: NaN past each run's end, to the longest row (as long as ``steps``)
            out[name] = _pad(rows) if name in _RECORD_AXIS else np.stack(rows)
    provenance = group.provenance
    if swap:
        provenance += (
            f"; continued to {max(int(e['steps_done'][s]) for s in swap.values()):,} steps "
            f"({extended.provenance}): "
            + ", ".join(_replay_note(a, r, e, swap[r]) for r in sorted(swap))
        )
    if pending:
        out["converged"] = out["converged"].copy()
        out["converged"][pending] = False
        provenance += "; awaiting their continuation: " + ", ".join(_label(a, r) for r in pending)
    return dataclasses.replace(group, arrays=out, provenance=provenance)


def _replay_note(a: dict[str, np.ndarray], r: int, e: dict[str, np.ndarray], s: int) -> str:
    """Run ``r``'s label and whether its continuation ``s`` (which may have been replayed from
    step 0 where the run's final state was not at hand) reproduces the run's own records."""
    n = int(a["steps_done"][r]) // RECORD_EVERY + 1
    steps = f"{int(a['steps_done'][r]):,}"
    if all(np.array_equal(a[k][r, :n], e[k][s, :n], equal_nan=True) for k in ("elbo", "fraction")):
        return f"{_label(a, r)} (its first {steps} steps reproduce the run's records bitwise)"
    elbo = np.nanmax(np.abs(a["elbo"][r, :n] - e["elbo"][s, :n]))
    fraction = np.nanmax(np.abs(a["fraction"][r, :n] - e["fraction"][s, :n]))
    return (
        f"{_label(a, r)} (its first {steps} steps differ from the run's records by up to "
        f"{elbo:.3g} nats in the ELBO and {fraction:.3g} in the collapsed fraction)"
    )


# ----------------------------------------------------------------------------- traversal

# A converged run with active and collapsed latents: [0, 1] pixels, σ² = 0.1 fixed, seed 0.
TRAVERSAL_RUN = RunSpec(0.1)
TRAVERSAL_VALUES = tuple(np.linspace(-3.0, 3.0, 7))
TRAVERSAL_IMAGE = 0  # the training image whose code the traversal starts from


def traversal_path() -> Path:
    """Stem of the shipped decoder of :data:`TRAVERSAL_RUN`: ``results/deep_traversal``."""
    return RESULTS_DIR / "deep_traversal"


def traversal_arrays(model: GaussianVAE, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a traversal needs from a trained run: decoder weights (float16, to stay small), the
    encoder mean of the start image, and the mean KL per latent at the run's end."""
    out = {}
    for index, layer in enumerate(model.decoder):
        out[f"decoder_weight_{index}"] = layer.weight.detach().numpy().astype(np.float16)
        out[f"decoder_bias_{index}"] = layer.bias.detach().numpy().astype(np.float16)
    train = torch.tensor(study_data(TRAVERSAL_RUN.pixels, TRAVERSAL_RUN.n_train)[0])
    with torch.no_grad():
        mean, _ = model.encode(train[TRAVERSAL_IMAGE : TRAVERSAL_IMAGE + 1].float())
    out["start_code"] = mean[0].double().numpy()
    out["kl_mean"] = np.asarray(arrays["kl_mean"][-1], dtype=np.float64)
    return out


def ship_traversal(command: str) -> Path:
    """Ship the decoder of :data:`TRAVERSAL_RUN` (finished, trained by code that behaves as now)."""
    found = finished(TRAVERSAL_RUN)
    model = load_model(TRAVERSAL_RUN)
    if found is None or model is None:
        raise ReferenceResultError(f"{TRAVERSAL_RUN.label} is not finished here; train it first")
    _check_behaviour(TRAVERSAL_RUN, found[0])
    info = reference_info(
        command, "cpu", float(found[1]["info"]["seconds"]), run=TRAVERSAL_RUN.label
    )
    stem = traversal_path()
    key = {"experiment": "deep_traversal", "run": TRAVERSAL_RUN.key(), "image": TRAVERSAL_IMAGE}
    save_shipped(
        stem, key, traversal_arrays(model, found[0]), lambda: run_probe(TRAVERSAL_RUN), info
    )
    return stem
