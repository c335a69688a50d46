"""What the ``reader`` preset reads instead of training, and the full rerun of a chapter.

A reader who opens a chapter in Jupyter (``$LINCOLLAPSE_PRESET`` unset, so the ``reader``
preset) gets every figure of the book within about a minute on one CPU core. Most experiments
fit that budget and run exactly as in the ``book`` preset. The few that do not (:data:`SHIPPED`;
their configs carry an ``OVERRIDES["reader"]`` entry) read the ``book`` preset's own results
from ``results/reader/`` instead of training: the same numbers the rendered book computes, not a
shortened run. (The KL-annealing runs are cut from the shipped long runs instead:
:func:`lincollapse.experiments.kl_annealing_runs.book_runs_from_long`.)

``results/reader/`` is a :class:`~lincollapse.results_cache.ResultsCache` folder: each entry is
validated on load (checksums, the exact ``book`` configuration, and the source fingerprint of
the modules that compute it). An entry that is missing or stale is not used: the experiment is
then computed as in the ``book`` preset (slow, and the chapter says so).
``tests/test_reader.py`` fails when an entry is stale, so that it is regenerated
(``python -m lincollapse.reader ship``).

:func:`full_rerun` is the chapter cell that recomputes, on request, what the page read.
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lincollapse.presets import READER, ExperimentConfig, chapter_cost
from lincollapse.results_cache import ResultsCache, source_fingerprint

READER_DIR = Path(__file__).resolve().parents[1] / "results" / "reader"
SHIP_COMMAND = "python -m lincollapse.reader ship"
#: What ``results/reader/`` holds, all of the ``book`` preset: the deep VAE's grid runs (chapter
#: *Deep Gaussian VAEs*), the stochastic-ELBO runs and the encoder comparison (their chapters),
#: the linear VAE trained per latent size (chapter *The linear VAE*) and the linear β-VAEs on
#: MNIST (chapter *β, σ² and KL annealing*).
SHIPPED = ("deep", "stochastic", "encoders", "likelihood", "gram", "linear-beta")

ResultT = TypeVar("ResultT")


def reader_store(fingerprint: str) -> ResultsCache:
    """The shipped ``book`` results in ``results/reader/``, for code with ``fingerprint``."""
    return ResultsCache(READER_DIR, fingerprint=fingerprint)


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


# ------------------------------------------------------------------ reading instead of training


def book_config(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` as the ``book`` preset's (a reader config has the book's fields)."""
    return dataclasses.replace(config, preset="book")


def shipped_or_compute(
    config: ExperimentConfig,
    compute: Callable[[ExperimentConfig], ResultT],
    result_type: type[ResultT],
    modules: Sequence[str],
) -> tuple[ResultT, str]:
    """For a ``reader`` config: the ``book`` result shipped in ``results/reader/`` when it is
    current (fingerprint of ``modules``), else ``compute(book config)``; and where it came from.
    Any other preset: ``compute(config)``."""
    if config.preset != READER:
        return compute(config), f"computed now ({config.preset} preset)"
    book = book_config(config)
    loaded = reader_store(source_fingerprint(modules)).load(book.as_dict())
    if loaded is None:
        return compute(book), (
            "computed now with the book preset: no current shipped result in results/reader/ "
            f"(regenerate: {SHIP_COMMAND})"
        )
    arrays, meta = loaded
    has_config = any(field.name == "config" for field in dataclasses.fields(result_type))
    extra = {"config": book} if has_config else {}
    return result_from_arrays(result_type, arrays, **extra), (
        f"the book preset's result shipped in results/reader/ (computed {meta['created'][:10]} "
        f"in {meta.get('info', {}).get('seconds', float('nan')):.0f} s), not recomputed"
    )


def ship_result(
    config: ExperimentConfig, result: Any, modules: Sequence[str], seconds: float
) -> Path | None:
    """Write ``result`` of the ``book`` ``config`` into ``results/reader/``."""
    if config.preset != "book":
        raise ValueError(f"only book-preset results are shipped, not {config.preset!r} ones")
    info = {"seconds": round(seconds, 1), "command": SHIP_COMMAND}
    return reader_store(source_fingerprint(modules)).save(
        config.as_dict(), result_arrays(result), info
    )


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
    """Compute the ``book`` results the ``reader`` preset reads and write them to
    ``results/reader/`` (minutes to tens of minutes on 2 CPU cores)."""
    from lincollapse.deep_runs import computing_fingerprint, load_or_train
    from lincollapse.experiments import beta, linear_vae
    from lincollapse.experiments import linear_decoder_encoders as lde
    from lincollapse.experiments import stochastic_elbo as se
    from lincollapse.experiments.deep import DeepVAEConfig

    names = list(names or SHIPPED)
    if "deep" in names:
        config = DeepVAEConfig.for_preset("book")
        store = reader_store(computing_fingerprint())
        store.check_writable()
        _, sources = load_or_train(config, config.runs(), cache=store)
        print("deep grid runs:", "; ".join(dict.fromkeys(sources)))
    for name, compute, config_type, modules in (
        ("stochastic", se.stochastic_vs_analytic, se.StochasticELBOConfig, se.COMPUTING_MODULES),
        ("encoders", lde.encoder_comparison, lde.EncoderComparisonConfig, lde.COMPUTING_MODULES),
        (
            "likelihood",
            linear_vae._train_latent_sizes,
            linear_vae.LikelihoodVsLatentSizeConfig,
            linear_vae.COMPUTING_MODULES,
        ),
        (
            "gram",
            linear_vae._train_gram_run,
            linear_vae.GramMatricesConfig,
            linear_vae.COMPUTING_MODULES,
        ),
        (
            "linear-beta",
            beta._linear_beta_collapse,
            beta.MnistLinearBetaConfig,
            beta.LINEAR_BETA_MODULES,
        ),
    ):
        if name in names:
            config = config_type.for_preset("book")
            start = time.perf_counter()
            result = compute(config)
            path = ship_result(config, result, modules, time.perf_counter() - start)
            print(f"{name}: wrote {path}")


def current_fingerprints() -> dict[str, str]:
    """The fingerprint that each kind of ``results/reader/`` entry needs with the code as it is:
    ``deep`` (the grid runs), ``stochastic_elbo``, ``linear_decoder_encoders``,
    ``linear_vae`` (likelihood per latent size, Gram run) and ``linear_beta``."""
    from lincollapse.deep_runs import computing_fingerprint
    from lincollapse.experiments import beta, linear_decoder_encoders, linear_vae, stochastic_elbo

    return {
        "deep": computing_fingerprint(),
        "stochastic_elbo": source_fingerprint(stochastic_elbo.COMPUTING_MODULES),
        "linear_decoder_encoders": source_fingerprint(linear_decoder_encoders.COMPUTING_MODULES),
        "linear_vae": source_fingerprint(linear_vae.COMPUTING_MODULES),
        "linear_beta": source_fingerprint(beta.LINEAR_BETA_MODULES),
    }


def refingerprint(previous: Mapping[str, str], note: str) -> list[Path]:
    """Re-key every ``results/reader/`` entry to the current code, its arrays unchanged.

    Only for a change of the computing code that was shown not to change the results (say a
    refactor, with recomputed entries compared bitwise against the shipped ones; record the
    check in ``results/README.md`` and in ``note``). ``previous`` maps each fingerprint the
    entries were written with to its kind (a key of :func:`current_fingerprints`). Each entry
    is loaded and validated under its old fingerprint (configuration, checksums) and saved again
    under the current one, with its arrays and info as they were, plus its original creation
    date and ``note``. Returns the paths written; an entry of an unknown fingerprint, or one
    that does not validate, stops with an error before anything is written.
    """
    from lincollapse.results_cache import _META

    current = current_fingerprints()
    unknown_kinds = set(previous.values()) - set(current)
    if unknown_kinds:
        raise ValueError(f"unknown kind(s) {sorted(unknown_kinds)}; valid: {', '.join(current)}")
    entries = []
    for path in sorted(READER_DIR.glob("*.npz")):
        with np.load(path, allow_pickle=False) as raw:
            meta = json.loads(str(raw[_META]))
        kind = previous.get(meta.get("fingerprint"))
        if kind is None:
            raise ValueError(
                f"{path.name} was written with fingerprint {meta.get('fingerprint')!r}, which "
                "`previous` does not name; add it with its kind"
            )
        old = ResultsCache(READER_DIR, fingerprint=meta["fingerprint"])
        loaded = old.load(meta["config"]) if old.path(meta["config"]) == path else None
        if loaded is None:
            raise ValueError(f"{path.name} does not validate under its own fingerprint")
        entries.append((path, kind, *loaded))
    written = []
    for path, kind, arrays, meta in entries:
        info = {**meta.get("info", {}), "created": meta["created"], "refingerprinted": note}
        saved = reader_store(current[kind]).save(meta["config"], arrays, info)
        if saved != path:
            raise RuntimeError(f"{path.name} was re-saved as {saved}")
        written.append(path)
    return written


if __name__ == "__main__":  # the command in the README and results/README.md: lincollapse.cli
    from lincollapse.cli import main_for_module

    raise SystemExit(main_for_module(__spec__.name))
