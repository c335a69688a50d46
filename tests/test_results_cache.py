"""Results cache: round trip, corrupt and stale entries, atomic writes, fingerprints."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest

from lincollapse.results_cache import (
    CacheWarning,
    ResultsCache,
    cached_paper_result,
    config_key,
    source_fingerprint,
)

CONFIG = {"experiment": "toy", "steps": 10, "grid": (1.0, 0.1), "preset": "fast"}


def _arrays() -> dict[str, np.ndarray]:
    return {"values": np.arange(12.0).reshape(3, 4), "flags": np.array([True, False])}


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        return _arrays()


@pytest.fixture
def cache(tmp_path) -> ResultsCache:
    return ResultsCache(tmp_path, fingerprint="code-v1")


def test_round_trip(cache):
    compute = Counter()
    first, meta, hit = cache.get_or_compute(CONFIG, compute, info={"seconds": 1.5})
    assert not hit and compute.calls == 1
    second, meta, hit = cache.get_or_compute(CONFIG, compute)
    assert hit and compute.calls == 1
    for name, array in _arrays().items():
        np.testing.assert_array_equal(second[name], array)
        assert second[name].dtype == array.dtype
    assert meta["fingerprint"] == "code-v1" and meta["info"] == {"seconds": 1.5}
    assert meta["config"]["grid"] == [1.0, 0.1]


def test_key_depends_on_every_field_and_not_on_order():
    assert config_key(CONFIG) == config_key(dict(reversed(list(CONFIG.items()))))
    assert config_key(CONFIG) != config_key(CONFIG | {"steps": 11})
    assert config_key(CONFIG) != config_key(CONFIG | {"grid": (1.0, 0.01)})
    assert config_key(CONFIG) != config_key(CONFIG, version="999")


@pytest.mark.parametrize("damage", ["truncate", "garble", "empty", "not-npz"])
def test_corrupt_entry_is_recomputed_with_a_warning(cache, damage):
    path = cache.save(CONFIG, _arrays())
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garble":
        middle = len(raw) // 2
        path.write_bytes(raw[:middle] + bytes(b ^ 0xFF for b in raw[middle : middle + 64])
                         + raw[middle + 64 :])  # fmt: skip
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("hello")
    compute = Counter()
    with pytest.warns(CacheWarning, match="recomputed"):
        arrays, _, hit = cache.get_or_compute(CONFIG, compute)
    assert not hit and compute.calls == 1
    np.testing.assert_array_equal(arrays["values"], _arrays()["values"])
    assert cache.load(CONFIG) is not None  # rewritten, valid again


def test_array_tampered_but_readable_fails_the_checksum(cache):
    path = cache.save(CONFIG, _arrays())
    with np.load(path, allow_pickle=False) as archive:
        content = {name: archive[name] for name in archive.files}
    content["values"] = content["values"] + 1.0
    np.savez(path.with_suffix(""), **content)  # savez appends .npz: overwrites the entry
    with pytest.warns(CacheWarning, match="checksum"):
        assert cache.load(CONFIG) is None


def test_stale_fingerprint_is_not_used(cache, tmp_path):
    cache.save(CONFIG, _arrays())
    newer = ResultsCache(tmp_path, fingerprint="code-v2")
    compute = Counter()
    with pytest.warns(CacheWarning, match="stale"):
        _, meta, hit = newer.get_or_compute(CONFIG, compute)
    assert not hit and compute.calls == 1 and meta["fingerprint"] == "code-v2"


def test_other_config_is_not_used(cache):
    path = cache.save(CONFIG, _arrays())
    other = CONFIG | {"steps": 20}
    assert cache.load(other) is None  # a different file
    os.replace(path, cache.path(other))  # a key collision, simulated
    with pytest.warns(CacheWarning, match="different configuration"):
        assert cache.load(other) is None


def test_failed_write_leaves_nothing_and_keeps_the_old_entry(cache, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lincollapse.results_cache.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        cache.save(CONFIG, _arrays())
    assert list(cache.directory.iterdir()) == []
    monkeypatch.undo()
    cache.save(CONFIG, _arrays())
    monkeypatch.setattr("lincollapse.results_cache.os.replace", fail)
    with pytest.raises(OSError):
        cache.save(CONFIG, {"values": np.zeros(2)})
    assert [p.name for p in cache.directory.iterdir()] == [cache.path(CONFIG).name]
    np.testing.assert_array_equal(cache.load(CONFIG)[0]["values"], _arrays()["values"])


def test_compute_that_raises_writes_nothing(cache):
    def boom():
        raise RuntimeError("training failed")

    with pytest.raises(RuntimeError):
        cache.get_or_compute(CONFIG, boom)
    assert not cache.directory.exists() or list(cache.directory.iterdir()) == []


def test_object_arrays_are_refused(cache):
    with pytest.raises(ValueError, match="dtype object"):
        cache.save(CONFIG, {"bad": np.array([{"a": 1}], dtype=object)})


def test_disabled_cache_always_computes(tmp_path):
    cache = ResultsCache(tmp_path, fingerprint="x", enabled=False)
    compute = Counter()
    cache.get_or_compute(CONFIG, compute)
    cache.get_or_compute(CONFIG, compute)
    assert compute.calls == 2 and list(tmp_path.iterdir()) == []


def test_fingerprint_ignores_docstrings_and_comments_but_not_code(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    versions = {
        "a": '"""Doc."""\n\ndef f(x):\n    return x + 1\n',
        "b": '"""Other doc."""\n\n# a comment\ndef f(x):\n    """Doc."""\n    return x + 1\n',
        "c": '"""Doc."""\n\ndef f(x):\n    return x + 2\n',
    }
    for name, source in versions.items():
        (tmp_path / f"fp_module_{name}.py").write_text(textwrap.dedent(source))
    prints = {}
    for name in versions:
        # same module name for all three: copy the source into one file and re-import
        (tmp_path / "fp_module.py").write_text(versions[name])
        import importlib
        import sys

        sys.modules.pop("fp_module", None)
        importlib.invalidate_caches()
        prints[name] = source_fingerprint(["fp_module"])
    assert prints["a"] == prints["b"]
    assert prints["a"] != prints["c"]
    assert len(source_fingerprint()) == 16


def test_cached_paper_result(tmp_path):
    import dataclasses

    from lincollapse.presets import ExperimentConfig

    @dataclasses.dataclass(frozen=True)
    class Toy(ExperimentConfig):
        OVERRIDES = {"paper": {"steps": 1000}}
        steps: int = 10

    cache = ResultsCache(tmp_path, fingerprint="f")
    assert cached_paper_result(Toy, cache) is None
    cache.save(Toy.for_preset("paper").as_dict(), _arrays())
    arrays, meta = cached_paper_result(Toy, cache)
    assert meta["config"]["steps"] == 1000 and meta["config"]["preset"] == "paper"
    assert cached_paper_result(Toy, cache, steps=5) is None


# ----------------------------------------------------------------------------- shipped references


def test_reference_round_trip_and_validation(tmp_path):
    from lincollapse.results_cache import ReferenceResultError, load_reference, save_reference

    stem = tmp_path / "results" / "toy_reference"
    with pytest.raises(ReferenceResultError, match="not found"):
        load_reference(stem, CONFIG, "code-v1")
    npz, js = save_reference(stem, CONFIG, _arrays(), "code-v1", {"command": "make toy"})
    assert npz.suffix == ".npz" and js.suffix == ".json"
    arrays, meta = load_reference(stem, CONFIG, "code-v1")
    np.testing.assert_array_equal(arrays["values"], _arrays()["values"])
    assert meta["info"]["command"] == "make toy" and meta["fingerprint"] == "code-v1"
    with pytest.raises(ReferenceResultError, match="stale"):
        load_reference(stem, CONFIG, "code-v2")
    with pytest.raises(ReferenceResultError, match="another configuration"):
        load_reference(stem, CONFIG | {"steps": 11}, "code-v1")
    load_reference(stem, None, None)  # checks skipped
    content = dict(arrays)
    content["values"] = content["values"] + 1.0
    np.savez(npz, **content)
    with pytest.raises(ReferenceResultError, match="checksum"):
        load_reference(stem, CONFIG, "code-v1")
    npz.write_bytes(b"garbage")
    with pytest.raises(ReferenceResultError, match="unreadable"):
        load_reference(stem, CONFIG, "code-v1")
