"""A results cache on disk for expensive training runs.

An entry is one ``.npz`` file (no pickles: loaded with ``allow_pickle=False``) holding named
float/int/bool arrays plus a ``__meta__`` JSON string with the configuration it was computed
for, the source fingerprint, the package and torch versions, the creation time and a SHA-256
checksum of every array. Its file name is a hash of the configuration (a plain ``dict``, e.g.
``ExperimentConfig.as_dict()``) and the package version.

Loading validates everything: an unreadable, truncated or garbled file, a checksum mismatch, a
configuration that differs from the one asked for, or a different source fingerprint (the code
that computed it has changed) makes :meth:`ResultsCache.load` warn (:class:`CacheWarning`) and
return ``None``; :meth:`ResultsCache.get_or_compute` then recomputes and overwrites. Writes go
to a temporary file in the same folder followed by ``os.replace``, so a reader never sees a
partial entry and a writer that fails leaves nothing behind; two processes computing the same
entry both succeed and the entry stays valid (the last rename wins).

Nothing computed is lost to a folder that cannot be written: :meth:`ResultsCache.get_or_compute`
checks the folder before computing (:class:`CacheNotWritableError`, naming the fix), and a write
that still fails afterwards saves the entry in :func:`lincollapse.storage.rescue_directory` and
says where (:class:`CacheWriteError`; ``get_or_compute`` warns and returns the arrays). Callers
that train and then :meth:`~ResultsCache.save` call :meth:`~ResultsCache.check_writable` first.

Every hit and every saved entry is counted in :data:`STATS` and, when ``$LINCOLLAPSE_CACHE_LOG``
names a file, appended to it as one JSON line: the book build reports from it how much of a
rerun came from the cache.

The fingerprint hashes the *code* of the modules that compute a result (their syntax tree
without docstrings), not the whole package, so that editing a plot or a chapter does not
discard hours of training. Folder: ``$LINCOLLAPSE_CACHE_DIR``, else ``.lincollapse-cache/`` in
the repository root (next to ``pyproject.toml``), else in the current directory.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import datetime
import hashlib
import importlib
import importlib.metadata
import inspect
import io
import json
import os
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lincollapse.storage import atomic_write, rescue_directory, writable_problem

CACHE_ENV_VAR = "LINCOLLAPSE_CACHE_DIR"
LOG_ENV_VAR = "LINCOLLAPSE_CACHE_LOG"
CACHE_FOLDER = ".lincollapse-cache"
FORMAT_VERSION = 1
_META = "__meta__"
_NON_FINITE = "__non_finite_float__"
PACKAGE_ROOT = Path(__file__).resolve().parent

#: Events of this process: ``"hit"`` (a valid entry was read) and ``"saved"`` (one was written).
STATS: collections.Counter[str] = collections.Counter()


class CacheWarning(UserWarning):
    """A cache entry was corrupt or stale and is being ignored (and recomputed), or could not be
    written (and was saved elsewhere)."""


class CacheNotWritableError(RuntimeError):
    """The cache folder cannot take entries; raised before computing. The message names the fix."""


class CacheWriteError(OSError):
    """Writing an entry failed after computing; the message says where a copy was saved."""


def record_event(event: str, path: Path) -> None:
    """Count ``event`` and append it to ``$LINCOLLAPSE_CACHE_LOG`` (best effort)."""
    STATS[event] += 1
    log = os.environ.get(LOG_ENV_VAR, "").strip()
    if not log:
        return
    line = json.dumps({"event": event, "entry": path.name, "pid": os.getpid(), "time": time.time()})
    try:
        with open(log, "a", encoding="utf-8") as stream:
            stream.write(line + "\n")
    except OSError:  # a log that cannot be written must not stop a computation
        pass


_computing_only = threading.local()


@contextlib.contextmanager
def computing_only():
    """Within this block every :class:`ResultsCache` misses and saves nothing: what runs in it
    is computed (a behaviour probe must replay the code, not read what it saved)."""
    depth = getattr(_computing_only, "depth", 0)
    _computing_only.depth = depth + 1
    try:
        yield
    finally:
        _computing_only.depth = depth


def _read_problem(error: BaseException) -> str:
    """What a failure to read an ``.npz`` file means, without numpy's pickle advice."""
    if isinstance(error, zipfile.BadZipFile) or (
        isinstance(error, ValueError) and "pickle" in str(error)
    ):
        return "not a valid .npz archive (truncated, garbled or another kind of file)"
    if isinstance(error, EOFError):
        return "empty or truncated"
    return f"{type(error).__name__}: {error}"


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path`` (no pickles); the file is closed on any failure."""
    with open(path, "rb") as stream, np.load(stream, allow_pickle=False) as archive:
        if not hasattr(archive, "files"):
            raise ValueError("not a valid .npz archive (a single .npy array)")
        return {name: archive[name] for name in archive.files}


def package_version() -> str:
    try:
        return importlib.metadata.version("lincollapse")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - always installed here
        return "0+unknown"


def default_cache_dir() -> Path:
    """``$LINCOLLAPSE_CACHE_DIR``, else ``<repo root>/.lincollapse-cache``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    root = PACKAGE_ROOT.parent
    if not (root / "pyproject.toml").is_file():  # pragma: no cover - installed elsewhere
        root = Path.cwd()
    return root / CACHE_FOLDER


def _is_input_check(statement: ast.stmt) -> bool:
    """``validation.check_…(…)`` as a statement: it raises or does nothing, never changes values."""
    if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)):
        return False
    function = statement.value.func
    return (
        isinstance(function, ast.Attribute)
        and isinstance(function.value, ast.Name)
        and function.value.id == "validation"
    )


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """Drop what cannot change a result: docstrings, input checks of :mod:`lincollapse.validation`
    (:func:`_is_input_check`) and the import of that module."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list) or not body:
            continue
        if (
            isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body = body[1:]
        kept = []
        for statement in body:
            if _is_input_check(statement):
                continue
            if isinstance(statement, ast.ImportFrom) and statement.module == "lincollapse":
                statement.names = [alias for alias in statement.names if alias.name != "validation"]
                if not statement.names:
                    continue
            kept.append(statement)
        node.body = kept or [ast.Pass()]
    return tree


def source_fingerprint(modules: Sequence[str] | None = None) -> str:
    """16 hex digits identifying the code of ``modules`` (default: every module of the package).

    Comments, docstrings, formatting and input checks (statements calling
    :mod:`lincollapse.validation`) do not change it; any other change to code does.
    """
    if modules is None:
        paths = sorted(PACKAGE_ROOT.rglob("*.py"))
        names = [str(p.relative_to(PACKAGE_ROOT)) for p in paths]
        sources = [p.read_text(encoding="utf-8") for p in paths]
    else:
        names = sorted(modules)
        sources = [inspect.getsource(importlib.import_module(name)) for name in names]
    digest = hashlib.sha256()
    for name, source in zip(names, sources, strict=True):
        digest.update(name.encode())
        digest.update(ast.dump(_strip_docstrings(ast.parse(source))).encode())
    return digest.hexdigest()[:16]


def _canonical(value: Any) -> Any:
    """JSON-ready form of a configuration: tuples → lists, numpy scalars → Python numbers.

    A NaN or infinite float becomes ``{"__non_finite_float__": "nan"}`` (JSON has no such
    numbers), so that it cannot collide with the string ``"nan"``.
    """
    if isinstance(value, Mapping):
        if _NON_FINITE in value:
            raise TypeError(f"{_NON_FINITE!r} is reserved and cannot be a configuration key")
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return _canonical(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return {_NON_FINITE: repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot use {type(value).__name__} {value!r} in a cache key")


def config_key(config: Mapping[str, Any], version: str | None = None) -> str:
    """Hash (24 hex digits) of the canonical JSON of ``config`` and the package version."""
    payload = json.dumps(
        {"config": _canonical(config), "version": version or package_version()},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def array_checksum(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (an entry's checksums; a data identity)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def data_digest(x: Any) -> str:
    """Content hash of training data (an array or a tensor): a cache key's stand-in for them."""
    array = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return array_checksum(array)[:24]


class ResultsCache:
    """Named arrays on disk keyed by a configuration; see the module docstring.

    Parameters
    ----------
    directory : path, optional
        Folder of the entries (default :func:`default_cache_dir`).
    fingerprint : str, optional
        Identifies the code computing the results (default: ``source_fingerprint()`` of the
        whole package). Entries with another fingerprint are stale.
    enabled : bool
        ``False`` turns every lookup into a miss and every save into a no-op.
    """

    def __init__(
        self,
        directory: str | os.PathLike | None = None,
        fingerprint: str | None = None,
        *,
        enabled: bool = True,
    ) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.fingerprint = fingerprint if fingerprint is not None else source_fingerprint()
        self.enabled = enabled

    @property
    def active(self) -> bool:
        """Whether lookups and saves happen (``enabled``, and not inside :func:`computing_only`)."""
        return self.enabled and not getattr(_computing_only, "depth", 0)

    def path(self, config: Mapping[str, Any]) -> Path:
        """File of the entry for ``config``."""
        return self.directory / f"{config_key(config)}.npz"

    def partial_path(self, config: Mapping[str, Any]) -> Path:
        """Where a training whose result will be the entry for ``config`` saves its state
        part-way (``partial/``), so that an interrupted training resumes instead of restarting
        (:func:`lincollapse.training_state.maximise_in_chunks`). A state already there (left
        by an interrupt) is counted as the event ``resumed``."""
        path = self.directory / "partial" / f"{config_key(config)}.pt"
        if path.is_file():
            record_event("resumed", path)
        return path

    def load(self, config: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict] | None:
        """The validated ``(arrays, meta)`` cached for ``config``, or ``None`` (missing/invalid)."""
        if not self.active:
            return None
        path = self.path(config)
        if not path.is_file():
            return None
        try:
            arrays = _load_npz(path)
            if _META not in arrays:
                raise ValueError("it has no manifest (not written by this cache)")
            meta = json.loads(str(arrays.pop(_META)))
            problem = self._problem(meta, arrays, config)
        except Exception as error:  # noqa: BLE001 - any failure to read means "corrupt"
            problem = f"unreadable: {_read_problem(error)}"
            meta = {}
        if problem is not None:
            warnings.warn(
                f"ignoring cache entry {path}: {problem}; it will be recomputed",
                CacheWarning,
                stacklevel=2,
            )
            return None
        record_event("hit", path)
        return arrays, meta

    def check_writable(self) -> None:
        """Raise :class:`CacheNotWritableError` unless entries can be written (before computing).

        Creates the folder if it is missing. A disabled cache is always fine.
        """
        if not self.active:
            return
        problem = writable_problem(self.directory)
        if problem is not None:
            raise CacheNotWritableError(
                f"the results cache folder {self.directory} {problem}, so results computed now "
                f"could not be kept; nothing was computed. Fix: set {CACHE_ENV_VAR} to a "
                f"writable folder (e.g. {CACHE_ENV_VAR}=$HOME/.cache/lincollapse), or make "
                f"{self.directory} a writable folder"
            )

    def _problem(self, meta: Any, arrays: dict[str, np.ndarray], config: Mapping) -> str | None:
        if not isinstance(meta, dict) or not isinstance(meta.get("checksums", {}), dict):
            return "its manifest is not a JSON object of the expected form"
        if meta.get("format") != FORMAT_VERSION:
            return f"format {meta.get('format')!r}, expected {FORMAT_VERSION}"
        if meta.get("config") != _canonical(config):
            return "it was computed for a different configuration"
        if meta.get("fingerprint") != self.fingerprint:
            return (
                f"stale: computed by code with fingerprint {meta.get('fingerprint')}, "
                f"the code now has {self.fingerprint}"
            )
        checksums = meta.get("checksums", {})
        if set(checksums) != set(arrays):
            return "its arrays do not match its manifest"
        for name, array in arrays.items():
            if array_checksum(array) != checksums[name]:
                return f"checksum mismatch in array {name!r}"
        return None

    def save(
        self,
        config: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        info: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Write ``arrays`` for ``config`` atomically; ``info`` (JSON-able) goes into the meta.

        Raises :class:`CacheWriteError` if the write fails, after saving the entry (a valid
        cache file) in :func:`lincollapse.storage.rescue_directory`; the message names it.
        """
        if not self.active:
            return None
        arrays = {name: np.asarray(value) for name, value in arrays.items()}
        for name, array in arrays.items():
            if name == _META or array.dtype.hasobject:
                raise ValueError(f"cannot cache array {name!r} of dtype {array.dtype}")
        meta = self._meta(config, arrays, info)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, **{_META: np.array(json.dumps(meta))})
        path = self.path(config)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(path, buffer.getvalue())
        except OSError as error:
            raise CacheWriteError(
                f"could not write the cache entry {path} ({error.strerror or error}); "
                + _rescue(path.name, buffer.getvalue(), self.directory)
            ) from error
        record_event("saved", path)
        return path

    def _meta(
        self, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray], info: Mapping | None
    ) -> dict[str, Any]:
        import torch  # only for the provenance record

        return {
            "format": FORMAT_VERSION,
            "config": _canonical(config),
            "fingerprint": self.fingerprint,
            "version": package_version(),
            "torch": torch.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "checksums": {name: array_checksum(array) for name, array in arrays.items()},
            "info": _canonical(dict(info or {})),
        }

    def get_or_compute(
        self,
        config: Mapping[str, Any],
        compute: Callable[[], Mapping[str, np.ndarray]],
        info: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict, bool]:
        """``(arrays, meta, hit)``: the valid cached entry, else ``compute()``, saved.

        Before computing, the folder is checked (:meth:`check_writable`). If saving still fails
        afterwards, a :class:`CacheWarning` says where the entry was saved instead, and the
        computed arrays are returned all the same.
        """
        loaded = self.load(config)
        if loaded is not None:
            return loaded[0], loaded[1], True
        self.check_writable()
        arrays = {name: np.asarray(value) for name, value in compute().items()}
        try:
            self.save(config, arrays, info)
        except CacheWriteError as error:
            warnings.warn(f"{error}; using the computed arrays", CacheWarning, stacklevel=2)
        return arrays, self._meta(config, arrays, info), False


def _rescue(name: str, data: bytes, home: Path) -> str:
    """Save ``data`` as ``name`` in the rescue folder; the end of a sentence saying where."""
    folder = rescue_directory()
    if folder is not None:
        try:
            atomic_write(folder / name, data)
        except OSError:
            folder = None
    if folder is None:
        return "no folder could take a copy either (tried $TMPDIR, ~/.cache and .)"
    return (
        f"the computed arrays were saved to {folder / name} instead, a valid entry: copy it into "
        f"{home} once that is writable"
    )


def cached_paper_result(
    config_class: type, cache: ResultsCache | None = None, **changes: Any
) -> tuple[dict[str, np.ndarray], dict] | None:
    """The cached ``paper``-preset entry of ``config_class`` (with ``changes``), or ``None``.

    Never computes. A chapter calls it to show a paper-preset result when one has been run
    (and says so, using ``meta["created"]``), and falls back to its own preset otherwise.
    """
    config = config_class.for_preset("paper", **changes)
    return (cache or ResultsCache()).load(config.as_dict())


# --------------------------------------------------------------------------- shipped references


class ReferenceResultError(RuntimeError):
    """A shipped reference result is missing, corrupt, stale or for another configuration."""


MANIFEST_CHECKSUM = "manifest_sha256"


def manifest_checksum(meta: Mapping[str, Any]) -> str:
    """SHA-256 of a reference's manifest (every field but this checksum, canonical JSON).

    It covers the provenance (``info.command``, ``created``, ``info.seconds``…) that the array
    checksums do not.
    """
    body = {key: value for key, value in meta.items() if key != MANIFEST_CHECKSUM}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def save_reference(
    stem: str | os.PathLike,
    config: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    fingerprint: str,
    info: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write a reference result to be committed: ``<stem>.npz`` (arrays) + ``<stem>.json`` (meta).

    The JSON holds the configuration, the source ``fingerprint`` of the computing modules, the
    package and torch versions, the creation time, a SHA-256 per array, ``info`` (command,
    machine, threads, wall time…) and a SHA-256 of all of that (:func:`manifest_checksum`). Both
    files are written atomically, the arrays first, readable by everyone (0644).
    """
    stem = Path(stem)
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise ValueError(f"cannot store array {name!r} of dtype {array.dtype}")
    cache = ResultsCache(stem.parent, fingerprint)
    meta = cache._meta(config, arrays, info)
    meta[MANIFEST_CHECKSUM] = manifest_checksum(meta)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    stem.parent.mkdir(parents=True, exist_ok=True)
    npz, js = stem.with_suffix(".npz"), stem.with_suffix(".json")
    atomic_write(npz, buffer.getvalue())
    atomic_write(js, (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode())
    for path in (npz, js):  # committed files: readable by everyone whatever the umask
        path.chmod(0o644)
    return npz, js


def seal_reference(stem: str | os.PathLike) -> Path:
    """Add :func:`manifest_checksum` to a reference written before manifests were checksummed.

    Its arrays are validated first; check its provenance fields by eye before sealing them.
    """
    stem = Path(stem)
    js = stem.with_suffix(".json")
    meta = json.loads(js.read_text(encoding="utf-8"))
    meta[MANIFEST_CHECKSUM] = manifest_checksum(meta)
    load_reference(stem, None, None, _meta=meta)  # the arrays must match their checksums
    atomic_write(js, (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode())
    js.chmod(0o644)
    return js


def load_reference(
    stem: str | os.PathLike,
    config: Mapping[str, Any] | None,
    fingerprint: str | None,
    *,
    _meta: dict | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """The validated ``(arrays, meta)`` of a reference written by :func:`save_reference`.

    Raises :class:`ReferenceResultError` saying what is wrong: missing files, unreadable files, a
    manifest that is not a JSON object or whose checksum (:func:`manifest_checksum`) does not
    match, an array checksum mismatch, a different configuration (``config``; ``None`` skips the
    check) or a different fingerprint (``fingerprint``; ``None`` skips the check: the code has
    changed since the reference was computed, so it must be regenerated).
    """
    stem = Path(stem)
    npz, js = stem.with_suffix(".npz"), stem.with_suffix(".json")
    if not (npz.is_file() and js.is_file()):
        raise ReferenceResultError(
            f"reference result {npz.name} / {js.name} not found in {stem.parent}"
        )
    try:
        meta = _meta if _meta is not None else json.loads(js.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReferenceResultError(
            f"reference {stem.name}: {js.name} is not valid JSON ({error})"
        ) from error
    if not isinstance(meta, dict) or not isinstance(meta.get("checksums"), dict):
        raise ReferenceResultError(
            f"reference {stem.name}: {js.name} is not a manifest (a JSON object with checksums)"
        )
    if MANIFEST_CHECKSUM not in meta:
        raise ReferenceResultError(
            f"reference {stem.name}: {js.name} has no manifest checksum ({MANIFEST_CHECKSUM}); "
            "regenerate it with the command in its info.command, or, after checking its fields, "
            f"add one with lincollapse.results_cache.seal_reference({str(stem)!r})"
        )
    if meta[MANIFEST_CHECKSUM] != manifest_checksum(meta):
        raise ReferenceResultError(
            f"reference {stem.name}: manifest checksum mismatch: {js.name} was edited after it "
            "was written (provenance or configuration changed); restore it from version control "
            "or regenerate it with the command in its info.command"
        )
    try:
        arrays = _load_npz(npz)
    except Exception as error:  # noqa: BLE001 - any failure to read means "corrupt"
        raise ReferenceResultError(
            f"reference {stem.name}: {npz.name} is unreadable: {_read_problem(error)}"
        ) from error
    checksums = meta["checksums"]
    if set(checksums) != set(arrays):
        raise ReferenceResultError(f"reference {stem.name}: arrays do not match the manifest")
    for name, array in arrays.items():
        if array_checksum(array) != checksums[name]:
            raise ReferenceResultError(
                f"reference {stem.name}: checksum mismatch in array {name!r}"
            )
    if config is not None and meta.get("config") != _canonical(config):
        raise ReferenceResultError(
            f"reference {stem.name} was computed for another configuration than the current one"
        )
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise ReferenceResultError(
            f"reference {stem.name} is stale: computed by code with fingerprint "
            f"{meta.get('fingerprint')}, the code now has {fingerprint}; regenerate it"
        )
    return arrays, meta
