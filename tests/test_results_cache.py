"""Results cache: round trip, corrupt and stale entries, atomic writes, fingerprints."""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from pathlib import Path

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
        path.write_bytes(
            raw[:middle] + bytes(b ^ 0xFF for b in raw[middle : middle + 64]) + raw[middle + 64 :]
        )
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


# ----------------------------------------------------------------------- writable before computing


def _unwritable_folder(kind, tmp_path, monkeypatch):
    if kind == "a file":
        folder = tmp_path / "cache"
        folder.write_text("not a folder")
        return folder
    if kind == "under a file":
        (tmp_path / "file").write_text("not a folder")
        return tmp_path / "file" / "cache"
    folder = tmp_path / "cache"  # read-only, simulated (root ignores permission bits)
    folder.mkdir()
    real_mkstemp = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and os.path.realpath(dir) == os.path.realpath(folder):
            raise PermissionError(13, "Permission denied", str(folder))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    return folder


@pytest.mark.parametrize("kind", ["a file", "under a file", "read-only"])
def test_an_unwritable_cache_is_an_error_before_computing(kind, tmp_path, monkeypatch):
    from lincollapse.results_cache import CacheNotWritableError

    folder = _unwritable_folder(kind, tmp_path, monkeypatch)
    compute = Counter()
    with pytest.raises(CacheNotWritableError) as info:
        ResultsCache(folder, fingerprint="f").get_or_compute(CONFIG, compute)
    assert compute.calls == 0
    message = str(info.value)
    assert str(folder) in message and "LINCOLLAPSE_CACHE_DIR" in message


def test_a_read_only_cache_still_serves_its_entries(cache, monkeypatch):
    cache.save(CONFIG, _arrays())
    real_mkstemp = tempfile.mkstemp

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    compute = Counter()
    arrays, _, hit = cache.get_or_compute(CONFIG, compute)
    assert hit and compute.calls == 0
    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)


def test_a_write_that_fails_after_computing_keeps_the_arrays(cache, tmp_path, monkeypatch):
    from lincollapse.results_cache import CacheWriteError

    rescue = tmp_path / "rescue"
    monkeypatch.setenv("LINCOLLAPSE_RESCUE_DIR", str(rescue))
    real_replace = os.replace

    def disk_full(source, target):
        if os.path.dirname(target) == str(cache.directory):
            raise OSError(28, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr("lincollapse.results_cache.os.replace", disk_full)
    compute = Counter()
    with pytest.warns(CacheWarning, match="No space left on device") as caught:
        arrays, _, hit = cache.get_or_compute(CONFIG, compute)
    assert not hit and compute.calls == 1
    np.testing.assert_array_equal(arrays["values"], _arrays()["values"])
    saved = sorted(rescue.glob("*.npz"))
    assert len(saved) == 1 and str(saved[0]) in str(caught[0].message)
    assert [p.name for p in cache.directory.iterdir() if p.is_file()] == []  # nothing half-written
    with pytest.raises(CacheWriteError, match=str(rescue)):  # save() itself raises, naming it
        cache.save(CONFIG, _arrays())
    monkeypatch.setattr("lincollapse.results_cache.os.replace", real_replace)
    shutil.copy(saved[0], cache.path(CONFIG))  # the rescued file is a valid entry
    assert cache.load(CONFIG) is not None


# ----------------------------------------------------------------------- messages and formats


def test_garbage_entry_message_gives_no_pickle_advice(cache):
    cache.save(CONFIG, _arrays())
    cache.path(CONFIG).write_bytes(b"\x80\x04garbage, not an archive" * 10)
    with pytest.warns(CacheWarning) as caught:
        assert cache.load(CONFIG) is None
    message = str(caught[0].message)
    assert "pickle" not in message and "not a valid .npz archive" in message


def test_truncated_entry_leaks_no_open_file(cache):
    path = cache.save(CONFIG, {"values": np.arange(5000.0)})
    path.write_bytes(path.read_bytes()[:300])
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.load(CONFIG) is None
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert any(issubclass(w.category, CacheWarning) for w in caught)


def test_non_finite_floats_do_not_collide_with_strings():
    assert config_key({"a": float("nan")}) != config_key({"a": "nan"})
    assert config_key({"a": float("inf")}) != config_key({"a": "inf"})
    assert config_key({"a": float("-inf")}) != config_key({"a": "-inf"})
    assert config_key({"a": float("inf")}) != config_key({"a": float("-inf")})
    assert config_key({"a": 1.5}) == config_key({"a": np.float64(1.5)})


def test_entries_get_the_usual_file_permissions(cache):
    umask = os.umask(0o022)
    try:
        path = cache.save(CONFIG, _arrays())
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("content", ["[]", "null", "3", '"text"', '{"checksums": []}'])
def test_reference_with_a_json_that_is_not_a_manifest(tmp_path, content):
    from lincollapse.results_cache import ReferenceResultError, load_reference, save_reference

    stem = tmp_path / "toy"
    save_reference(stem, CONFIG, _arrays(), "code-v1")
    stem.with_suffix(".json").write_text(content)
    with pytest.raises(ReferenceResultError, match="toy"):
        load_reference(stem, CONFIG, "code-v1")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (("info", "command"), "make something-else"),
        (("created",), "1999-01-01T00:00:00+00:00"),
        (("info", "seconds"), 1.0),
    ],
)
def test_reference_provenance_is_covered_by_a_checksum(tmp_path, field, value):
    import json

    from lincollapse.results_cache import ReferenceResultError, load_reference, save_reference

    stem = tmp_path / "toy"
    save_reference(stem, CONFIG, _arrays(), "code-v1", {"command": "make toy", "seconds": 60.0})
    meta = json.loads(stem.with_suffix(".json").read_text())
    target = meta
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    with pytest.raises(ReferenceResultError, match="manifest checksum"):
        load_reference(stem, CONFIG, "code-v1")


def test_garbage_reference_message_gives_no_pickle_advice(tmp_path):
    from lincollapse.results_cache import ReferenceResultError, load_reference, save_reference

    stem = tmp_path / "toy"
    save_reference(stem, CONFIG, _arrays(), "code-v1")
    stem.with_suffix(".npz").write_bytes(b"\x80\x04garbage" * 20)
    with pytest.raises(ReferenceResultError) as info:
        load_reference(stem, CONFIG, "code-v1")
    assert "pickle" not in str(info.value) and "not a valid .npz archive" in str(info.value)


def test_every_shipped_reference_validates():
    from lincollapse.results_cache import load_reference

    results = Path(__file__).resolve().parents[1] / "results"
    stems = sorted({p.with_suffix("") for p in results.glob("*.npz")})
    assert stems
    for stem in stems:
        load_reference(stem, None, None)  # checksums of arrays and manifest


def test_fingerprint_ignores_input_checks(tmp_path, monkeypatch):
    """Adding ``validation.check_…`` statements must not make hours of cached runs stale."""
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))
    plain = "import math\n\ndef f(x, steps):\n    return math.sqrt(x) * steps\n"
    checked = (
        "import math\n\nfrom lincollapse import validation\n\ndef f(x, steps):\n"
        "    validation.check_steps(steps)\n    return math.sqrt(x) * steps\n"
    )
    changed = (
        "import math\n\ndef f(x, steps):\n    steps = int(steps)\n    return math.sqrt(x) * steps\n"
    )
    prints = []
    for source in (plain, checked, changed):
        (tmp_path / "fp_checked.py").write_text(source)
        sys.modules.pop("fp_checked", None)
        importlib.invalidate_caches()
        prints.append(source_fingerprint(["fp_checked"]))
    assert prints[0] == prints[1] != prints[2]


def test_inside_computing_only_the_cache_neither_reads_nor_saves(tmp_path):
    """A behaviour probe replays the code: a saved entry must not answer it."""
    from lincollapse.results_cache import computing_only

    cache = ResultsCache(tmp_path, fingerprint="f")
    cache.save({"a": 1}, {"x": np.arange(3.0)})
    calls = []
    with computing_only():
        arrays, _, hit = cache.get_or_compute(
            {"a": 1}, lambda: calls.append(1) or {"x": np.zeros(3)}
        )
        assert cache.load({"a": 1}) is None
        cache.get_or_compute({"a": 2}, lambda: {"x": np.ones(2)})
    assert not hit and calls == [1] and np.array_equal(arrays["x"], np.zeros(3))
    assert not cache.path({"a": 2}).exists()
    assert np.array_equal(cache.load({"a": 1})[0]["x"], np.arange(3.0))  # after it: read again
