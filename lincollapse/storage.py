"""Writing results safely: check a folder before computing, write atomically, rescue on failure.

Used by the results cache (:mod:`lincollapse.results_cache`) and the command line
(:mod:`lincollapse.cli`), so that no computation ends in a traceback that loses its result:

- :func:`writable_problem` says, *before* any training, why a folder cannot take files (it is a
  file, sits under a file, cannot be created, or refuses a probe file);
- :func:`atomic_write` writes through a temporary file in the same folder and ``os.replace``,
  so a reader never sees a partial file, with the permissions the umask gives (``mkstemp``
  alone makes 0600);
- :func:`rescue_directory` is where results go when a write still fails after computing:
  ``$LINCOLLAPSE_RESCUE_DIR``, else ``<temporary folder>/lincollapse-rescued``, else
  ``~/.cache/lincollapse-rescued``, else ``./lincollapse-rescued``: the first that can be written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

RESCUE_ENV_VAR = "LINCOLLAPSE_RESCUE_DIR"


def writable_problem(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written into ``folder`` (created if missing), or ``None`` if they can.

    The answer completes a sentence about the folder: "is a file, not a folder", "cannot be
    created: /a/b is a file", "is not writable (Permission denied)".
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return "is a file, not a folder"
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"cannot be created: {parent} is a file, not a folder"
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot be created ({error.strerror or error})"
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-", suffix=".tmp")
    except OSError as error:
        return f"is not writable ({error.strerror or error})"
    os.close(handle)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``; nothing partial stays.

    The file gets the permissions of an ordinary new file (0666 minus the umask).
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            if sync:
                os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def rescue_directory() -> Path | None:
    """A writable folder for results whose destination failed (see the module docstring)."""
    configured = os.environ.get(RESCUE_ENV_VAR, "").strip()
    candidates = [Path(configured).expanduser()] if configured else []
    candidates += [
        Path(tempfile.gettempdir()) / "lincollapse-rescued",
        Path("~/.cache/lincollapse-rescued").expanduser(),
        Path.cwd() / "lincollapse-rescued",
    ]
    for folder in candidates:
        if writable_problem(folder) is None:
            return folder
    return None
