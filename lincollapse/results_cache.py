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
partial entry and a writer that fails leaves nothing behind.

The fingerprint hashes the *code* of the modules that compute a result (their syntax tree
without docstrings), not the whole package, so that editing a plot or a chapter does not
discard hours of training. Folder: ``$LINCOLLAPSE_CACHE_DIR``, else ``.lincollapse-cache/`` in
the repository root (next to ``pyproject.toml``), else in the current directory.
"""

from __future__ import annotations

import ast
import contextlib
import datetime
import hashlib
import importlib
import importlib.metadata
import inspect
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CACHE_ENV_VAR = "LINCOLLAPSE_CACHE_DIR"
CACHE_FOLDER = ".lincollapse-cache"
FORMAT_VERSION = 1
_META = "__meta__"
PACKAGE_ROOT = Path(__file__).resolve().parent


class CacheWarning(UserWarning):
    """A cache entry was corrupt or stale and is being ignored (and recomputed)."""


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


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return tree


def source_fingerprint(modules: Sequence[str] | None = None) -> str:
    """16 hex digits identifying the code of ``modules`` (default: every module of the package).

    Comments, docstrings and formatting do not change it; any change to code does.
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
    """JSON-ready form of a configuration: tuples → lists, numpy scalars → Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return repr(value)
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


def _checksum(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


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

    def path(self, config: Mapping[str, Any]) -> Path:
        """File of the entry for ``config``."""
        return self.directory / f"{config_key(config)}.npz"

    def load(self, config: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict] | None:
        """The validated ``(arrays, meta)`` cached for ``config``, or ``None`` (missing/invalid)."""
        if not self.enabled:
            return None
        path = self.path(config)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            meta = json.loads(str(arrays.pop(_META)))
            problem = self._problem(meta, arrays, config)
        except Exception as error:  # noqa: BLE001 - any failure to read means "corrupt"
            problem = f"unreadable ({type(error).__name__}: {error})"
            meta = {}
        if problem is not None:
            warnings.warn(
                f"ignoring cache entry {path}: {problem}; it will be recomputed",
                CacheWarning,
                stacklevel=2,
            )
            return None
        return arrays, meta

    def _problem(self, meta: dict, arrays: dict[str, np.ndarray], config: Mapping) -> str | None:
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
            if _checksum(array) != checksums[name]:
                return f"checksum mismatch in array {name!r}"
        return None

    def save(
        self,
        config: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        info: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Write ``arrays`` for ``config`` atomically; ``info`` (JSON-able) goes into the meta."""
        if not self.enabled:
            return None
        arrays = {name: np.asarray(value) for name, value in arrays.items()}
        for name, array in arrays.items():
            if name == _META or array.dtype.hasobject:
                raise ValueError(f"cannot cache array {name!r} of dtype {array.dtype}")
        meta = self._meta(config, arrays, info)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, **{_META: np.array(json.dumps(meta))})
        path = self.path(config)
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, buffer.getvalue())
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
            "checksums": {name: _checksum(array) for name, array in arrays.items()},
            "info": _canonical(dict(info or {})),
        }

    def get_or_compute(
        self,
        config: Mapping[str, Any],
        compute: Callable[[], Mapping[str, np.ndarray]],
        info: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict, bool]:
        """``(arrays, meta, hit)``: the valid cached entry, else ``compute()``, saved."""
        loaded = self.load(config)
        if loaded is not None:
            return loaded[0], loaded[1], True
        arrays = {name: np.asarray(value) for name, value in compute().items()}
        self.save(config, arrays, info)
        return arrays, self._meta(config, arrays, info), False


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``; nothing partial stays."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


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


def save_reference(
    stem: str | os.PathLike,
    config: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    fingerprint: str,
    info: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write a reference result to be committed: ``<stem>.npz`` (arrays) + ``<stem>.json`` (meta).

    The JSON holds the configuration, the source ``fingerprint`` of the computing modules, the
    package and torch versions, the creation time, a SHA-256 per array and ``info`` (command,
    machine, threads, wall time…). Both files are written atomically, the arrays first.
    """
    stem = Path(stem)
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    for name, array in arrays.items():
        if array.dtype.hasobject:
            raise ValueError(f"cannot store array {name!r} of dtype {array.dtype}")
    cache = ResultsCache(stem.parent, fingerprint)
    meta = cache._meta(config, arrays, info)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    stem.parent.mkdir(parents=True, exist_ok=True)
    npz, js = stem.with_suffix(".npz"), stem.with_suffix(".json")
    _atomic_write(npz, buffer.getvalue())
    _atomic_write(js, (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode())
    for path in (npz, js):  # committed files: readable by everyone (mkstemp makes them 0600)
        path.chmod(0o644)
    return npz, js


def load_reference(
    stem: str | os.PathLike, config: Mapping[str, Any] | None, fingerprint: str | None
) -> tuple[dict[str, np.ndarray], dict]:
    """The validated ``(arrays, meta)`` of a reference written by :func:`save_reference`.

    Raises :class:`ReferenceResultError` saying what is wrong: missing files, unreadable files, a
    checksum mismatch, a different configuration (``config``; ``None`` skips the check) or a
    different fingerprint (``fingerprint``; ``None`` skips the check: the code has changed since
    the reference was computed, so it must be regenerated).
    """
    stem = Path(stem)
    npz, js = stem.with_suffix(".npz"), stem.with_suffix(".json")
    if not (npz.is_file() and js.is_file()):
        raise ReferenceResultError(
            f"reference result {npz.name} / {js.name} not found in {stem.parent}"
        )
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
        with np.load(npz, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:  # noqa: BLE001 - any failure to read means "corrupt"
        raise ReferenceResultError(f"reference {stem.name} is unreadable: {error}") from error
    checksums = meta.get("checksums", {})
    if set(checksums) != set(arrays):
        raise ReferenceResultError(f"reference {stem.name}: arrays do not match the manifest")
    for name, array in arrays.items():
        if _checksum(array) != checksums[name]:
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
