"""What the ``reader`` preset reads instead of training, and the full rerun of a chapter.

A reader who opens a chapter in Jupyter (``$LINCOLLAPSE_PRESET`` unset, so the ``reader``
preset) gets every figure of the book within about a minute on one CPU core. Most experiments
fit that budget and run exactly as in the ``book`` preset. The few that do not (:data:`SHIPPED`;
their configs carry an ``OVERRIDES["reader"]`` entry) read the ``book`` preset's own results
from ``results/reader/`` instead of training: the same numbers the rendered book computes, not a
shortened run. (The KL-annealing runs are cut from the shipped long runs instead:
:func:`lincollapse.experiments.kl_annealing_runs.book_runs_from_long`.)

``results/reader/`` is a :class:`~lincollapse.results_cache.ResultsCache` folder
(:class:`ShippedResults`): each entry is validated on load against its checksums and the exact
``book`` configuration, and **its staleness is decided by behaviour, not by source text**. Every
entry holds a *behaviour probe* (arrays ``probe_<name>``, covered by the checksums): a few
steps of the computation that made it, replayed in float64 on a small slice
(:meth:`ShippedKind.probe`, :func:`deep_probe`, and for the diagnosis chapter's models
:func:`lincollapse.experiments.diagnosis_runs.reader_store`;
:data:`~lincollapse.references.PROBE_STEPS` optimiser steps). On load the probe is replayed
with the code as it is now and compared with the stored one
(:func:`lincollapse.references.probe_difference`, relative tolerance
:data:`~lincollapse.references.PROBE_RTOL`): moving or refactoring code passes (float64 replays
agree to ≈ 1e-13), while a change of what the code computes (learning rate, initialisation,
loss, optimiser, data) fails, and the entry is not used: a :class:`CacheWarning` names the array
that differs and the command that reships it (``python -m lincollapse.reader ship NAME``), and
the experiment is computed as in the ``book`` preset (slow, and the chapter says so).
``tests/test_reader.py`` fails when an entry is missing or stale (:func:`shipped_problems`;
``python -m lincollapse.reader check`` prints the same).

:func:`full_rerun` is the chapter cell that recomputes, on request, what the page read.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lincollapse.presets import READER, ExperimentConfig, chapter_cost
from lincollapse.references import PROBE_PREFIX, PROBE_RTOL, PROBE_STEPS, probe_difference
from lincollapse.results_cache import CacheWarning, ResultsCache, computing_only

READER_DIR = Path(__file__).resolve().parents[1] / "results" / "reader"
SHIP_COMMAND = "python -m lincollapse.reader ship"
#: What ``results/reader/`` holds, all of the ``book`` preset: the deep VAE's grid runs (chapter
#: *Deep Gaussian VAEs*), the stochastic-ELBO runs and the encoder comparison (their chapters),
#: the linear VAE trained per latent size and its Gram run (chapter *The linear VAE*), the
#: linear β-VAEs on MNIST (chapter *β, σ² and KL annealing*) and on synthetic data (chapter
#: *Beyond the paper*), and the linear VAEs of chapter *Diagnosing posterior collapse*.
SHIPPED = (
    "deep",
    "stochastic",
    "encoders",
    "likelihood",
    "gram",
    "linear-beta",
    "beyond-beta",
    "diagnosis",
)
#: The ``fingerprint`` of every entry: keyed by its behaviour probe, not by a source fingerprint.
BEHAVIOUR_KEYED = "behaviour-probe"
#: The probes of the deep grid runs, the stochastic-ELBO runs and the encoder comparison replay
#: their first steps on this many images.
PROBE_IMAGES = 100
#: An array of a probe with more elements than this is stored as :func:`probe_summary`.
PROBE_SUMMARY_ABOVE = 64

ResultT = TypeVar("ResultT")
ProbeFor = Callable[[Mapping[str, Any]], Mapping[str, np.ndarray]]


# ------------------------------------------------------------------ results as plain arrays


def result_arrays(result: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """The fields of dataclass ``result`` as named arrays (``config`` left out).

    Arrays and numbers are stored as they are; a ``dict`` field ``f`` with string keys becomes
    ``f:key`` entries; a nested dataclass ``g`` becomes ``g.field`` entries.
    """
    arrays: dict[str, np.ndarray] = {}
    for field in dataclasses.fields(result):
        if field.name == "config":
            continue
        value = getattr(result, field.name)
        name = prefix + field.name
        if dataclasses.is_dataclass(value):
            arrays.update(result_arrays(value, name + "."))
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str) or ":" in key:
                    raise TypeError(f"{name}: only string keys without ':' can be stored")
                arrays[f"{name}:{key}"] = np.asarray(item)
        else:
            arrays[name] = np.asarray(value)
    return arrays


def _value(array: np.ndarray, hint: Any) -> Any:
    if hint is str:
        return str(array)
    if hint is float:
        return float(array)
    if hint is int:
        return int(array)
    return np.array(array)


def result_from_arrays(cls: type[ResultT], arrays: dict[str, np.ndarray], **extra: Any) -> ResultT:
    """Inverse of :func:`result_arrays` for dataclass ``cls``; ``extra`` fills ``config``."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = dict(extra)
    for field in dataclasses.fields(cls):
        if field.name in values:
            continue
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            sub = {
                k[len(field.name) + 1 :]: v
                for k, v in arrays.items()
                if k.startswith(field.name + ".")
            }
            values[field.name] = result_from_arrays(hint, sub)
        elif typing.get_origin(hint) is dict:
            item_hint = typing.get_args(hint)[1]
            values[field.name] = {
                k.split(":", 1)[1]: _value(v, item_hint)
                for k, v in arrays.items()
                if k.split(":", 1)[0] == field.name and ":" in k
            }
        else:
            values[field.name] = _value(arrays[field.name], hint)
    return cls(**values)


# ------------------------------------------------------------------ behaviour-keyed storage


def probe_summary(array: np.ndarray) -> np.ndarray:
    """A probe array as stored: itself (float64) when small, else its size, sum, sum of
    absolute values, Euclidean norm and 32 entries at evenly spaced flat positions."""
    flat = np.asarray(array, dtype=np.float64).ravel()
    if flat.size <= PROBE_SUMMARY_ABOVE:
        return np.asarray(array, dtype=np.float64)
    picks = flat[np.linspace(0, flat.size - 1, 32).astype(np.int64)]
    sums = [flat.size, flat.sum(), np.abs(flat).sum(), np.sqrt(np.sum(flat**2))]
    return np.concatenate([np.asarray(sums, dtype=np.float64), picks])


def probe_of_result(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The numeric arrays of a result (:func:`result_arrays`) as probe arrays
    (:func:`probe_summary`), timings (names with ``seconds``) and text left out."""
    return {
        name: probe_summary(value)
        for name, value in arrays.items()
        if "seconds" not in name and np.asarray(value).dtype.kind in "biuf"
    }


class ShippedResults(ResultsCache):
    """``results/reader/`` entries of one kind, keyed by behaviour.

    ``probe_for(key)`` replays the behaviour probe of the entry of configuration ``key`` with
    the code as it is now. :meth:`save` stores it with the arrays; :meth:`load` validates an
    entry (checksums, the exact configuration) and replays its probe: an entry whose probe
    differs, or that has none, is not used (a :class:`CacheWarning` says why and names the
    command that reships it).
    """

    def __init__(self, name: str, probe_for: ProbeFor, directory: Path | None = None) -> None:
        super().__init__(READER_DIR if directory is None else directory, BEHAVIOUR_KEYED)
        self.name, self.probe_for = name, probe_for

    @property
    def fix(self) -> str:
        return f"reship it: {SHIP_COMMAND} {self.name}"

    def probe(self, key: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The probe of ``key``'s entry replayed now, as stored (:func:`probe_summary`)."""
        with computing_only():  # replayed, never read from a cache
            replayed = self.probe_for(key)
        return {name: probe_summary(value) for name, value in replayed.items()}

    def _problem(self, meta: Any, arrays: dict[str, np.ndarray], config: Mapping) -> str | None:
        problem = super()._problem(meta, arrays, config)
        if problem is not None and problem.startswith("stale:"):
            return (
                f"it is keyed by the source fingerprint {meta.get('fingerprint')} of the code "
                f"that wrote it, not by a behaviour probe; {self.fix}"
            )
        return problem

    def behaviour_problem(
        self, key: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
    ) -> str | None:
        """Why the entry ``arrays`` of ``key`` is stale by its behaviour probe, or ``None``."""
        stored = {
            k[len(PROBE_PREFIX) :]: v for k, v in arrays.items() if k.startswith(PROBE_PREFIX)
        }
        if not stored:
            return f"it has no behaviour probe; {self.fix}"
        now = self.probe(key)
        if set(now) != set(stored):
            return (
                f"its behaviour probe records {sorted(stored)}, the probe now {sorted(now)}; "
                f"{self.fix}"
            )
        difference = probe_difference(now, stored)
        if difference is None:
            return None
        name, worst = difference
        return (
            f"stale: the code now computes different {name!r} in its behaviour probe "
            f"({PROBE_STEPS} steps replayed in float64; largest relative difference {worst:.3g}, "
            f"tolerance {PROBE_RTOL:g}); {self.fix}"
        )

    def load(self, config: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict] | None:
        loaded = super().load(config)
        if loaded is None:
            return None
        arrays, meta = loaded
        problem = self.behaviour_problem(config, arrays)
        if problem is not None:
            warnings.warn(
                f"ignoring shipped result {self.path(config)} ({self.name}): {problem}",
                CacheWarning,
                stacklevel=2,
            )
            return None
        return {k: v for k, v in arrays.items() if not k.startswith(PROBE_PREFIX)}, meta

    def save(
        self,
        config: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        info: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Write ``arrays`` for ``config`` with its behaviour probe, replayed now."""
        kept = {k: v for k, v in arrays.items() if not k.startswith(PROBE_PREFIX)}
        probe = {PROBE_PREFIX + k: v for k, v in self.probe(config).items()}
        return super().save(config, {**kept, **probe}, info)


@dataclasses.dataclass(frozen=True)
class ShippedKind:
    """A kind of ``results/reader/`` entry other than the deep grid runs: the ``book`` result of
    one experiment configuration (``module:config``), computed by ``module:compute`` as a
    ``module:result`` dataclass.

    Its behaviour probe (:meth:`probe`) is the same computation on a configuration made small
    by ``probe_changes`` (its fields replaced: :data:`~lincollapse.references.PROBE_STEPS`
    steps, float64, fewer seeds or latent sizes), every numeric array of the result but timings.
    """

    name: str
    module: str
    config: str
    compute: str
    result: str
    probe_changes: Callable[[Any], dict[str, Any]]

    def _get(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self.module), attribute)

    def book(self) -> ExperimentConfig:
        """The ``book`` configuration: what the entry holds the result of."""
        return self._get(self.config).for_preset("book")

    def probe(self, config: ExperimentConfig) -> dict[str, np.ndarray]:
        """The probe of ``config``'s result, computed now (float64, a second or less)."""
        small = dataclasses.replace(config, **self.probe_changes(config))
        return probe_of_result(result_arrays(self._get(self.compute)(small)))

    def store(self, directory: Path | None = None) -> ShippedResults:
        def probe_for(key: Mapping[str, Any]) -> dict[str, np.ndarray]:
            fields = {k: v for k, v in key.items() if k != "experiment"}
            return self.probe(self._get(self.config)(**fields))

        return ShippedResults(self.name, probe_for, directory)

    def compute_book(self) -> Any:
        return self._get(self.compute)(self.book())

    def result_type(self) -> type:
        return self._get(self.result)


_STOCHASTIC = "lincollapse.experiments.stochastic_elbo"
_ENCODERS = "lincollapse.experiments.linear_decoder_encoders"
_LINEAR = "lincollapse.experiments.linear_vae"
#: The kinds of entry besides ``deep``, by name (see :data:`SHIPPED`).
KINDS = {
    kind.name: kind
    for kind in (
        ShippedKind(
            "stochastic",
            _STOCHASTIC,
            "StochasticELBOConfig",
            "_stochastic_vs_analytic",
            "StochasticELBOResult",
            lambda c: {
                "n": min(c.n, PROBE_IMAGES),
                "seeds": c.seeds[:1],
                "steps": PROBE_STEPS,
                "record_every": 1,
                "gradient_checkpoints": (0, PROBE_STEPS),
                "gradient_samples": 2,
                "dtype": "float64",
            },
        ),
        ShippedKind(
            "encoders",
            _ENCODERS,
            "EncoderComparisonConfig",
            "_encoder_comparison",
            "EncoderComparisonResult",
            lambda c: {
                "n": min(c.n, PROBE_IMAGES),
                "seeds": c.seeds[:1],
                "steps": PROBE_STEPS,
                "record_every": 1,
                "dtype": "float64",
            },
        ),
        ShippedKind(
            "likelihood",
            _LINEAR,
            "LikelihoodVsLatentSizeConfig",
            "_train_latent_sizes",
            "TrainedLatentSizes",
            lambda c: {"latent_sizes": c.latent_sizes[:2], "steps": PROBE_STEPS, "record_every": 1},
        ),
        ShippedKind(
            "gram",
            _LINEAR,
            "GramMatricesConfig",
            "_train_gram_run",
            "TrainedGramRun",
            lambda c: {"steps": PROBE_STEPS, "record_every": 1},
        ),
        ShippedKind(
            "linear-beta",
            "lincollapse.experiments.beta",
            "MnistLinearBetaConfig",
            "_linear_beta_collapse",
            "MnistLinearBetaResult",
            lambda c: {
                "betas": (c.betas[0], c.betas[-1]),
                "steps": PROBE_STEPS,
                "rotate_every": 1,
            },
        ),
        ShippedKind(
            "beyond-beta",
            "lincollapse.experiments.beyond_the_paper",
            "SyntheticLinearBetaConfig",
            "_linear_beta_optimum",
            "SyntheticLinearBetaResult",
            lambda c: {"betas": (c.betas[0], c.betas[-1]), "steps": PROBE_STEPS},
        ),
    )
}


def kind_of(config: ExperimentConfig) -> ShippedKind:
    """The :class:`ShippedKind` whose entries hold results of ``config``'s type."""
    for kind in KINDS.values():
        if kind.module == type(config).__module__ and kind.config == type(config).__name__:
            return kind
    raise ValueError(f"no result of {type(config).__name__} is shipped in results/reader/")


def deep_probe(
    config: ExperimentConfig, key: Mapping[str, Any], images: int = PROBE_IMAGES
) -> dict[str, np.ndarray]:
    """The behaviour probe of the deep grid run ``key`` of ``config``: its first
    :data:`~lincollapse.references.PROBE_STEPS` Adam steps on the first ``images`` images,
    replayed in float64 on the CPU (:func:`lincollapse.deep_runs.behaviour_probe`)."""
    from lincollapse.deep_runs import Schedule, behaviour_probe

    schedule = Schedule(key["steps"], key["lr"], key["lr_decay"], key["record_every"])
    runs = [(float(key["sigma2"]), bool(key["learned"]))]
    return dict(behaviour_probe(config, runs, schedule, images=images)())


def deep_store(config: ExperimentConfig, directory: Path | None = None) -> ShippedResults:
    """The deep grid runs of ``config`` (a ``DeepVAEConfig``) in ``results/reader/``: one entry
    per run, keyed by :func:`lincollapse.deep_runs.run_key`, with its :func:`deep_probe`."""
    return ShippedResults("deep", lambda key: deep_probe(config, key), directory)


def expected_entries(name: str, directory: Path | None = None) -> list[tuple[dict, ShippedResults]]:
    """The keys of kind ``name``'s entries (those of the ``book`` preset) and their store."""
    if name == "deep":
        from lincollapse.deep_runs import data_for, run_key
        from lincollapse.experiments.deep import DeepVAEConfig

        config = DeepVAEConfig.for_preset("book")
        schedule, data_id = config.grid_schedule(), data_for(config)[1]
        store = deep_store(config, directory)
        return [
            (run_key(config, sigma2, learned, schedule, data_id), store)
            for sigma2, learned in config.runs()
        ]
    if name == "diagnosis":
        from lincollapse.experiments import diagnosis_runs
        from lincollapse.experiments.diagnosis import DiagnosisConfig

        config = DiagnosisConfig.for_preset("book")
        store = diagnosis_runs.reader_store(directory)
        return [(key, store) for key in diagnosis_runs.reader_runs(config)]
    if name not in KINDS:
        raise ValueError(f"unknown shipped result {name!r}; valid: {', '.join(SHIPPED)}")
    return [(KINDS[name].book().as_dict(), KINDS[name].store(directory))]


def shipped_problems(names: Sequence[str] | None = None) -> dict[str, str]:
    """Every missing, invalid or stale entry of ``results/reader/`` (of kinds ``names``, default
    all) by file name, with the reason; empty when all are current. Replays every probe."""
    problems = {}
    for name in names or SHIPPED:
        for key, store in expected_entries(name):
            path = store.path(key)
            if not path.is_file():
                problems[path.name] = f"{name}: missing; {store.fix}"
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", CacheWarning)
                loaded = store.load(key)
            if loaded is None:
                problems[path.name] = "; ".join(str(w.message) for w in caught) or name
    return problems


# ------------------------------------------------------------------ reading instead of training


def book_config(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` as the ``book`` preset's (a reader config has the book's fields)."""
    return dataclasses.replace(config, preset="book")


def shipped_or_compute(
    config: ExperimentConfig,
    compute: Callable[[ExperimentConfig], ResultT],
    result_type: type[ResultT],
) -> tuple[ResultT, str]:
    """For a ``reader`` config: the ``book`` result shipped in ``results/reader/`` when it is
    current (checksums, configuration, behaviour probe), else ``compute(book config)``; and
    where it came from. Any other preset: ``compute(config)``."""
    if config.preset != READER:
        return compute(config), f"computed now ({config.preset} preset)"
    book = book_config(config)
    kind = kind_of(config)
    loaded = kind.store().load(book.as_dict())
    if loaded is None:
        return compute(book), (
            "computed now with the book preset: no current shipped result in results/reader/ "
            f"(reship: {SHIP_COMMAND} {kind.name})"
        )
    arrays, meta = loaded
    has_config = any(field.name == "config" for field in dataclasses.fields(result_type))
    extra = {"config": book} if has_config else {}
    info = meta.get("info", {})
    return result_from_arrays(result_type, arrays, **extra), (
        f"the book preset's result shipped in results/reader/ (computed "
        f"{info.get('created', meta['created'])[:10]} in {info.get('seconds', float('nan')):.0f} "
        "s; its behaviour probe replayed now), not recomputed"
    )


def read_or_compute(
    config: ExperimentConfig,
    compute: Callable[[ExperimentConfig], ResultT],
    result_type: type[ResultT],
    what: str = "runs",
) -> ResultT:
    """:func:`shipped_or_compute`'s result; for a ``reader`` config it first prints where the
    result came from, after ``what`` (``"runs: the book preset's result shipped …"``)."""
    result, provenance = shipped_or_compute(config, compute, result_type)
    if config.preset == READER:
        print(f"{what}:", provenance)
    return result


# ------------------------------------------------------------------ the full rerun cell


def rerun_figures(chapter: str) -> list:
    """The registered figures of ``chapter`` that the ``reader`` preset reads instead of
    computing (their config has an ``OVERRIDES["reader"]`` entry)."""
    from lincollapse.experiments import load_all

    return [
        spec
        for spec in load_all().values()
        if spec.chapter == chapter and spec.config is not None and READER in spec.config.OVERRIDES
    ]


def full_rerun(chapter: str, *, run: bool = False, preset: str = "book") -> dict[str, Any]:
    """Recompute what this chapter read from shipped results, at ``preset``; print the
    expected time first. With ``run=False`` (the default) only print what it would do.

    Returns the results by figure name (empty when not run). Results land in the results
    cache, so running the chapter again with ``preset`` reuses them.
    """
    specs = rerun_figures(chapter)
    names = ", ".join(spec.name for spec in specs) or "none"
    print(f"Full experiment of this chapter at the {preset} preset: figures {names}.")
    print(f"Expected time for the whole chapter: {chapter_cost(chapter, preset)}.")
    for spec in specs:
        if spec.cost(preset):
            print(f"  {spec.name}: {spec.cost(preset)}")
    if not run:
        print("Not started. To start it, set RUN_FULL = True in this cell and run it again.")
        return {}
    from matplotlib import pyplot as plt

    results = {}
    for spec in specs:
        config = spec.config.for_preset(preset)
        print(f"computing {spec.name} ...", flush=True)
        start = time.perf_counter()
        results[spec.name] = spec.compute(config)
        print(f"{spec.name}: {time.perf_counter() - start:.0f} s", flush=True)
        spec.plot_function()(results[spec.name])
        plt.show()
    return results


# ------------------------------------------------------------------ regenerating results/reader


def ship(names: Sequence[str] | None = None) -> None:
    """Compute the ``book`` results the ``reader`` preset reads and write them, with their
    behaviour probes, to ``results/reader/`` (minutes to tens of minutes on 2 CPU cores).
    Deep grid runs that are shipped and current are kept."""
    from lincollapse.deep_runs import load_or_train
    from lincollapse.experiments.deep import DeepVAEConfig

    names = list(names or SHIPPED)
    unknown = sorted(set(names) - set(SHIPPED))
    if unknown:
        raise ValueError(f"unknown shipped result(s) {unknown}; valid: {', '.join(SHIPPED)}")
    if "deep" in names:
        config = DeepVAEConfig.for_preset("book")
        store = deep_store(config)
        store.check_writable()
        _, sources = load_or_train(config, config.runs(), cache=store)
        print("deep grid runs:", "; ".join(dict.fromkeys(sources)))
    if "diagnosis" in names:
        from lincollapse.experiments.diagnosis import DiagnosisConfig
        from lincollapse.experiments.diagnosis_runs import ship_runs

        paths = ship_runs(DiagnosisConfig.for_preset("book"))
        print("diagnosis:", ", ".join(str(p) for p in paths))
    for name in names:
        if name in ("deep", "diagnosis"):
            continue
        kind = KINDS[name]
        store = kind.store()
        store.check_writable()
        start = time.perf_counter()
        result = kind.compute_book()
        info = {"seconds": round(time.perf_counter() - start, 1), "command": SHIP_COMMAND}
        path = store.save(kind.book().as_dict(), result_arrays(result), info)
        print(f"{name}: wrote {path}")


def stamp_probes(legacy_modules: Mapping[str, Sequence[str]], note: str) -> list[Path]:
    """Give the entries written before behaviour probes their probe, without retraining.

    Those entries are keyed by the source fingerprint
    (:func:`lincollapse.results_cache.source_fingerprint`) of the modules that computed them;
    ``legacy_modules`` maps each kind of :data:`SHIPPED` to that list of modules. An entry is
    converted only when it validates under the fingerprint of those modules *now* (checksums,
    the exact ``book`` configuration, and the same code by source text, so the probe replayed
    now is the behaviour of the code that wrote it); it is then saved again, its arrays and info
    unchanged, with its probe, its original creation date (``info.created``) and ``note``
    (``info.probe_stamped``). Entries that already have a current probe are left as they are.
    Anything else (an entry that does not validate, a file that is no expected entry) stops
    with an error before anything is written. Returns the paths written.
    """
    from lincollapse.results_cache import source_fingerprint

    unknown = sorted(set(legacy_modules) - set(SHIPPED))
    if unknown:
        raise ValueError(f"unknown kind(s) {unknown}; valid: {', '.join(SHIPPED)}")
    expected, converting = set(), []
    for name in SHIPPED:
        for key, store in expected_entries(name):
            path = store.path(key)
            expected.add(path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CacheWarning)
                if store.load(key) is not None:
                    continue  # already keyed by a current probe
            if name not in legacy_modules:
                raise ValueError(f"{path.name} ({name}) has no current probe; name its modules")
            fingerprint = source_fingerprint(legacy_modules[name])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CacheWarning)
                loaded = ResultsCache(store.directory, fingerprint).load(key)
            if loaded is None:
                raise ValueError(
                    f"{path.name} ({name}) does not validate under the source fingerprint "
                    f"{fingerprint} of {', '.join(legacy_modules[name])} as they are now (missing, "
                    f"corrupt, or written by other code); {store.fix}"
                )
            converting.append((store, key, *loaded))
    strangers = sorted(p.name for p in READER_DIR.glob("*.npz") if p not in expected)
    if strangers:
        raise ValueError(f"not an entry of any shipped kind: {', '.join(strangers)}")
    written = []
    for store, key, arrays, meta in converting:
        info = {
            **meta.get("info", {}),
            "created": meta.get("info", {}).get("created", meta["created"]),
            "probe_stamped": note,
        }
        written.append(store.save(key, arrays, info))
    return written


if __name__ == "__main__":  # the command in the README and results/README.md: lincollapse.cli
    from lincollapse.cli import main_for_module

    raise SystemExit(main_for_module(__spec__.name))
