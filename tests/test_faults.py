"""Fault injection: interrupts, corrupt files, unwritable folders, concurrent writers.

Each test breaks one thing on purpose and checks that (a) nothing already computed is lost or
recomputed, (b) nothing half-written is left on disk, and (c) the message names the fix. All
use the ``fast`` preset or toy arrays: the whole module runs in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lincollapse.deep_runs as deep_runs
import lincollapse.experiments.deep as deep
import lincollapse.experiments.kl_annealing_runs as annealing
from lincollapse.experiments.deep import DeepVAEConfig
from lincollapse.experiments.kl_annealing_runs import AnnealingConfig
from lincollapse.results_cache import (
    CacheNotWritableError,
    CacheWarning,
    ReferenceResultError,
    ResultsCache,
    load_reference,
)

ROOT = Path(__file__).resolve().parents[1]


class CountingTrainer:
    """Stands in for ``train_batched``: counts runs trained; raises ``KeyboardInterrupt`` on the
    call numbered ``interrupt_on`` (1-based), as Ctrl-C in the middle of a long training would."""

    def __init__(self, train, interrupt_on: int | None = None) -> None:
        self.train, self.interrupt_on = train, interrupt_on
        self.calls, self.runs = 0, 0

    def __call__(self, x, arch, sigma2s, *args, **kwargs):
        self.calls += 1
        if self.calls == self.interrupt_on:
            raise KeyboardInterrupt
        self.runs += len(sigma2s)
        return self.train(x, arch, sigma2s, *args, **kwargs)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def config() -> DeepVAEConfig:
    """The fast deep-VAE grid (5 runs), trained two runs per batched model."""
    return DeepVAEConfig.for_preset("fast", runs_per_batch=2)


def test_interrupted_training_resumes_without_redoing_finished_runs(config, tmp_path, monkeypatch):
    cache = ResultsCache(tmp_path / "cache", deep_runs.computing_fingerprint())
    first = CountingTrainer(deep_runs.train_batched, interrupt_on=2)
    monkeypatch.setattr(deep_runs, "train_batched", first)
    with pytest.raises(KeyboardInterrupt):
        deep_runs.load_or_train(config, config.runs(), cache=cache, device="cpu", progress=False)
    assert first.runs == 2 and len(list(cache.directory.glob("*.npz"))) == 2
    assert _leftovers(cache.directory) == []

    rerun = CountingTrainer(first.train)
    monkeypatch.setattr(deep_runs, "train_batched", rerun)
    resumed, sources = deep_runs.load_or_train(
        config, config.runs(), cache=cache, device="cpu", progress=False
    )
    assert rerun.runs == len(config.runs()) - 2  # only what the interrupt stopped
    assert sum(s.startswith("cache") for s in sources) == 2

    again = CountingTrainer(first.train)
    monkeypatch.setattr(deep_runs, "train_batched", again)
    deep_runs.load_or_train(config, config.runs(), cache=cache, device="cpu", progress=False)
    assert again.runs == 0  # a third run computes nothing

    fresh = ResultsCache(tmp_path / "fresh", deep_runs.computing_fingerprint())
    whole, _ = deep_runs.load_or_train(
        config, config.runs(), cache=fresh, device="cpu", progress=False
    )
    np.testing.assert_array_equal(resumed.elbo, whole.elbo)  # resuming changes no number
    np.testing.assert_array_equal(resumed.thresholds, whole.thresholds)


def test_a_figure_computed_twice_trains_once(tmp_path, monkeypatch):
    monkeypatch.setenv("LINCOLLAPSE_CACHE_DIR", str(tmp_path / "cache"))
    counter = CountingTrainer(deep_runs.train_batched)
    monkeypatch.setattr(deep_runs, "train_batched", counter)
    config = DeepVAEConfig.for_preset("fast")
    first = deep.collapse_vs_eps_fixed(config, device="cpu")
    trained = counter.runs
    second = deep.collapse_vs_eps_fixed(config, device="cpu")
    assert trained == len(config.runs()) and counter.runs == trained
    np.testing.assert_array_equal(first.fraction, second.fraction)


def test_a_corrupt_run_is_the_only_one_retrained(config, tmp_path, monkeypatch):
    cache = ResultsCache(tmp_path, deep_runs.computing_fingerprint())
    deep_runs.load_or_train(config, config.runs(), cache=cache, device="cpu", progress=False)
    victim = sorted(tmp_path.glob("*.npz"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    counter = CountingTrainer(deep_runs.train_batched)
    monkeypatch.setattr(deep_runs, "train_batched", counter)
    with pytest.warns(CacheWarning, match="recomputed"):
        deep_runs.load_or_train(config, config.runs(), cache=cache, device="cpu", progress=False)
    assert counter.runs == 1
    assert cache.load(json.loads(str(np.load(victim)["__meta__"]))["config"]) is not None


def test_an_unwritable_cache_stops_before_training(config, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    folder.write_text("a file, not a folder")
    counter = CountingTrainer(deep_runs.train_batched)
    monkeypatch.setattr(deep_runs, "train_batched", counter)
    cache = ResultsCache(folder, deep_runs.computing_fingerprint())
    with pytest.raises(CacheNotWritableError, match="LINCOLLAPSE_CACHE_DIR"):
        deep_runs.load_or_train(config, config.runs(), cache=cache, device="cpu", progress=False)
    assert counter.calls == 0


def test_an_unwritable_cache_stops_the_annealing_runs_before_training(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    folder.write_text("a file, not a folder")
    trained = []
    monkeypatch.setattr(annealing, "train_annealed", lambda *a, **k: trained.append(1))
    cache = ResultsCache(folder, "f")
    with pytest.raises(CacheNotWritableError):
        annealing.annealing_runs(AnnealingConfig.for_preset("fast"), cache=cache, device="cpu")
    assert trained == []


def test_an_interrupted_annealing_run_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(annealing, "train_annealed", interrupted)
    cache = ResultsCache(tmp_path, "f")
    with pytest.raises(KeyboardInterrupt):
        annealing.annealing_runs(AnnealingConfig.for_preset("fast"), cache=cache, device="cpu")
    assert list(tmp_path.iterdir()) == []


WRITER = textwrap.dedent(
    """
    import os, pathlib, sys, time
    import numpy as np
    from lincollapse.results_cache import ResultsCache

    cache = ResultsCache(sys.argv[1], fingerprint="shared")
    barrier = pathlib.Path(sys.argv[2])
    (barrier / str(os.getpid())).touch()
    deadline = time.time() + 60
    while len(list(barrier.iterdir())) < 2 and time.time() < deadline:  # start together
        time.sleep(0.01)

    def compute():
        time.sleep(0.3)
        return {"values": np.arange(100_000.0)}

    for round in range(3):
        arrays, meta, hit = cache.get_or_compute({"experiment": "race"}, compute)
        cache.save({"experiment": "race", "round": round}, arrays)
    print(arrays["values"][1], hit)
    """
)


def test_two_processes_on_one_cache(tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    folder = tmp_path / "cache"
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", WRITER, str(folder), str(barrier)]
    processes = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert out.split()[0] == "1.0"
    assert _leftovers(folder) == []
    cache = ResultsCache(folder, fingerprint="shared")
    for config in [{"experiment": "race"}] + [{"experiment": "race", "round": r} for r in range(3)]:
        arrays, _ = cache.load(config)
        np.testing.assert_array_equal(arrays["values"], np.arange(100_000.0))


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped references in a folder that the experiments read instead."""
    folder = tmp_path / "results"
    shutil.copytree(ROOT / "results", folder)
    monkeypatch.setattr(deep_runs, "RESULTS_DIR", folder)
    monkeypatch.setattr(annealing, "RESULTS_DIR", folder)
    monkeypatch.setenv("LINCOLLAPSE_CACHE_DIR", str(tmp_path / "cache"))
    return folder


def _corrupt(stem: Path, how: str) -> None:
    js, npz = stem.with_suffix(".json"), stem.with_suffix(".npz")
    if how == "json is a list":
        js.write_text("[]")
    elif how == "json is null":
        js.write_text("null")
    elif how == "json garbage":
        js.write_text("{not json")
    elif how == "npz garbage":
        npz.write_bytes(b"\x80\x04garbage" * 50)
    elif how == "npz truncated":
        npz.write_bytes(npz.read_bytes()[:500])
    elif how == "provenance edited":
        meta = json.loads(js.read_text())
        meta["info"]["seconds"] = 1.0
        js.write_text(json.dumps(meta, indent=1))
    elif how == "missing":
        js.unlink()


CORRUPTIONS = [
    "json is a list",
    "json is null",
    "json garbage",
    "npz garbage",
    "npz truncated",
    "provenance edited",
    "missing",
]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_corrupt_shipped_deep_reference_falls_back(shipped, how):
    config = DeepVAEConfig.for_preset("book")
    assert deep_runs.long_runs(config)[0] is not None  # the intact copy is used
    _corrupt(shipped / "deep_convergence_book", how)
    with pytest.raises(ReferenceResultError):
        load_reference(shipped / "deep_convergence_book", None, None)
    arrays, reason = deep_runs.long_runs(config, train_missing=False)
    assert arrays is None and "deep_convergence_book" in reason


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_corrupt_shipped_annealing_reference_falls_back(shipped, how):
    config = AnnealingConfig.for_preset("book")
    _corrupt(shipped / "kl_annealing_long_book", how)
    runs, reason = annealing.long_annealing_runs(config, train_missing=False)
    assert runs is None and "kl_annealing_long_book" in reason
