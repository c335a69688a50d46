"""Build the executed book: ``python -m tools.build_book [ROOT]`` (what ``make book`` runs).

myst-nb's execution cache keys on a notebook's code cells only, so an edit to ``lincollapse``
would otherwise leave stale outputs in the book. This script points the cache at a folder
named after a hash of the package's source and the preset; any change to either re-executes
every chapter. Sphinx runs with ``-W -n --keep-going`` and cells that raise fail the build.

A build survives slow machines and resumes after a failure or an interrupt:

- **no per-cell timeout** with the ``book`` and ``paper`` presets (a slower machine than the one
  the costs were measured on must not fail); ``fast`` keeps ``_config.yml``'s 900 s, which only
  a hung cell reaches. ``LINCOLLAPSE_CELL_TIMEOUT`` (seconds, or ``none``) overrides both, and
  the first line of the build says which applies;
- **progress per chapter**: its title, whether it ran or came from the execution cache, its
  time, the measured cost (:data:`lincollapse.experiments.CHAPTER_SECONDS`) and the build's
  elapsed time;
- **resuming**: every finished chapter is kept in the execution cache and every finished
  training run in the results cache (:mod:`lincollapse.results_cache`), so a rerun recomputes
  neither; the last lines of a build count the results-cache entries read and written;
- **on failure** the last lines name the chapter, the code cell (its number and line in the
  ``.md`` file), the cause and the fix.

Before Sphinx reads anything, :mod:`tools.parallel_execution` executes the chapters on two
kernels at once (one torch thread each, on 2 cores) into the execution cache, so that Sphinx
finds them there; ``--kernels 1`` (or ``LINCOLLAPSE_BUILD_KERNELS=1``) leaves every chapter to
Sphinx, one at a time. The kernels run under the thread policy of :mod:`lincollapse.threads`.

The HTML renders its mathematics offline: before the build, MathJax 3 is fetched from a package
registry (npm, or PyPI when ``npm`` is missing) into ``_build/mathjax`` and copied into the
book's ``_static/mathjax``; ``mathjax_path`` points there, so a reader needs no network. Nothing
of MathJax is committed to this repository. ``--mathjax cdn`` builds with the CDN instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import lincollapse
from lincollapse.presets import ENV_VAR, current_preset
from lincollapse.results_cache import LOG_ENV_VAR as CACHE_LOG_VAR
from lincollapse.threads import policy_environment
from tools.parallel_execution import KERNELS_VAR, execute_chapters

PACKAGE_DIR = Path(lincollapse.__file__).resolve().parent
# The folder that holds ``tools/``: Sphinx imports this module (as ``tools.build_book``) from it.
TOOLS_PARENT = Path(__file__).resolve().parents[1]
EXTENSION = "tools.build_book"

MATHJAX_VERSION = "3.2.2"
MATHJAX_NPM = f"mathjax@{MATHJAX_VERSION}"
# Fallback without npm: this wheel ships MathJax 3.2.2's browser build (``es5/``) as static files.
MATHJAX_PYPI = "django-static-mathjax==3.2.2.1"
MATHJAX_SOURCE_VAR = "LINCOLLAPSE_MATHJAX_SOURCE"  # "npm" or "pypi" forces one source
# What the browser needs from ``es5/``: the combined component and what it loads lazily
# (TeX extensions, CHTML fonts, accessibility, menu, speech rules).
MATHJAX_KEEP = ("tex-mml-chtml.js", "input", "output/chtml", "a11y", "ui", "sre")
MATHJAX_PATH = "mathjax/tex-mml-chtml.js"  # relative to the book's _static folder


_FETCH_ERRORS = (OSError, subprocess.CalledProcessError, tarfile.TarError, zipfile.BadZipFile)


class MathJaxUnavailable(RuntimeError):
    """Neither npm nor pip could fetch MathJax; the message names the fixes."""


def ensure_mathjax(root: Path) -> Path:
    """Make sure ``_build/mathjax/static/mathjax`` holds MathJax; return ``.../static``.

    Fetched once (npm's ``mathjax`` package, else the PyPI wheel :data:`MATHJAX_PYPI`), then
    reused while its version matches :data:`MATHJAX_VERSION`.
    """
    static = root / "_build" / "mathjax" / "static"
    target = static / "mathjax"
    stamp = target / ".version"
    if stamp.is_file() and stamp.read_text().strip() == MATHJAX_VERSION:
        if (target / "tex-mml-chtml.js").is_file():
            return static
    forced = os.environ.get(MATHJAX_SOURCE_VAR, "").strip()
    sources = {"npm": _mathjax_from_npm, "pypi": _mathjax_from_pypi}
    if forced and forced not in sources:
        raise MathJaxUnavailable(f"{MATHJAX_SOURCE_VAR}={forced!r}; use npm or pypi")
    order = [forced] if forced else ["npm", "pypi"]
    static.mkdir(parents=True, exist_ok=True)
    failures = []
    with tempfile.TemporaryDirectory(dir=static.parent) as scratch:
        for name in order:
            staged = Path(scratch) / f"staged-{name}"
            try:
                _stage_mathjax(sources[name](Path(scratch)), staged)
            except _FETCH_ERRORS as error:
                failures.append(f"{name}: {error}")
                continue
            if target.exists():
                shutil.rmtree(target)
            os.replace(staged, target)
            print(f"MathJax {MATHJAX_VERSION} from {name} in {target}", flush=True)
            return static
    raise MathJaxUnavailable(
        f"could not fetch MathJax {MATHJAX_VERSION} for offline maths ("
        + "; ".join(failures)
        + "). Install Node.js's npm, or let pip reach PyPI, or build with "
        "`python -m tools.build_book --mathjax cdn` (maths then needs the network)."
    )


def _stage_mathjax(es5: Path, staged: Path) -> None:
    """Copy what the browser needs (:data:`MATHJAX_KEEP`) and the licence into ``staged``."""
    for part in MATHJAX_KEEP:
        source = es5 / part
        if source.is_dir():
            shutil.copytree(source, staged / part)
        else:
            (staged / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, staged / part)
    licence = es5.parent / "LICENSE"
    if licence.is_file():
        shutil.copy2(licence, staged / "LICENSE")
    (staged / ".version").write_text(MATHJAX_VERSION + "\n")


def _mathjax_from_npm(scratch: Path) -> Path:
    """``npm pack`` the ``mathjax`` package into ``scratch``; return its ``es5`` folder."""
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is not on PATH")
    subprocess.run(
        [npm, "pack", "--silent", MATHJAX_NPM, "--pack-destination", str(scratch)],
        check=True,
        cwd=scratch,
        stdout=subprocess.DEVNULL,
    )
    archive = next(scratch.glob("mathjax-*.tgz"), None)
    if archive is None:
        raise FileNotFoundError("npm pack wrote no mathjax-*.tgz")
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(scratch / "npm", filter="data")
        else:  # Python < 3.11.4
            tar.extractall(scratch / "npm")
    return scratch / "npm" / "package" / "es5"


def _mathjax_from_pypi(scratch: Path) -> Path:
    """``pip download`` :data:`MATHJAX_PYPI` into ``scratch``; return its ``es5`` folder."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        + ["--disable-pip-version-check", "--dest", str(scratch), MATHJAX_PYPI],
        check=True,
    )
    wheel = next(scratch.glob("django_static_mathjax-*.whl"), None)
    if wheel is None:
        raise FileNotFoundError(f"pip download wrote no wheel for {MATHJAX_PYPI}")
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith("mathjax/static/mathjax/")]
        archive.extractall(scratch / "pypi", members)
    return scratch / "pypi" / "mathjax" / "static" / "mathjax" / "es5"


def package_fingerprint(preset: str) -> str:
    """Hash of every ``.py`` file in the package plus the preset name (16 hex digits)."""
    digest = hashlib.sha256(preset.encode())
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


CELL_TIMEOUT_VAR = "LINCOLLAPSE_CELL_TIMEOUT"
NO_TIMEOUT_PRESETS = ("book", "paper")
STATUS_FILE = Path("_build") / ".build-status.json"
CACHE_LOG_FILE = Path("_build") / ".results-cache-log.jsonl"


def cell_timeout(preset: str, configured: int | None) -> int:
    """Seconds a cell may run (-1: no limit); see the module docstring."""
    override = os.environ.get(CELL_TIMEOUT_VAR, "").strip().lower()
    if override:
        if override in ("none", "-1", "0", "off"):
            return -1
        try:
            seconds = int(override)
        except ValueError:
            raise SystemExit(
                f"{CELL_TIMEOUT_VAR}={override!r}: give a whole number of seconds, or none"
            ) from None
        return seconds if seconds > 0 else -1
    if preset in NO_TIMEOUT_PRESETS or configured is None:
        return -1
    return int(configured)


def describe_timeout(seconds: int) -> str:
    return "none" if seconds < 0 else f"{seconds} s"


def execution_cache_dir(root: Path, preset: str) -> Path:
    """myst-nb's execution cache for ``preset`` and the package's present source."""
    return root / "_build" / ".jupyter_cache" / f"{preset}-{package_fingerprint(preset)}"


def write_build_config(
    root: Path, preset: str, mathjax_static: Path | None = None, started: float | None = None
) -> Path:
    """Copy ``_config.yml`` with ``execute.cache`` keyed on the package; return its path.

    The per-cell timeout is :func:`cell_timeout`'s, and the progress/failure extension of this
    module writes its record to :data:`STATUS_FILE`. With ``mathjax_static`` (from
    :func:`ensure_mathjax`), the book loads MathJax from its own ``_static/mathjax`` instead of
    the CDN.
    """
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    cache_dir = execution_cache_dir(root, preset)
    execute = config.setdefault("execute", {})
    execute["cache"] = str(cache_dir.resolve())
    execute["timeout"] = cell_timeout(preset, execute.get("timeout"))
    sphinx = config.setdefault("sphinx", {})
    # A local extension: jupyter-book puts TOOLS_PARENT on Sphinx's sys.path to import it.
    sphinx["local_extensions"] = {
        **(sphinx.get("local_extensions") or {}),
        EXTENSION: str(TOOLS_PARENT),
    }
    sphinx_config = sphinx.get("config") or {}
    sphinx["config"] = sphinx_config
    sphinx_config["lincollapse_status_file"] = str((root / STATUS_FILE).resolve())
    sphinx_config["lincollapse_preset"] = preset
    sphinx_config["lincollapse_cell_timeout"] = execute["timeout"]
    sphinx_config["lincollapse_build_started"] = float(started or 0.0)
    if mathjax_static is not None:
        sphinx_config["mathjax_path"] = MATHJAX_PATH
        sphinx_config["lincollapse_extra_static"] = [str(mathjax_static.resolve())]
    out = root / "_build" / "_config.build.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    os.replace(tmp, out)
    return out


def setup(app) -> dict:
    """Sphinx extension (added by :func:`write_build_config`) for the HTML the reader gets.

    - serves the folders in ``lincollapse_extra_static`` (MathJax) as static files; they are
      added after jupyter-book has made its configuration, because jupyter-book would add every
      ``.js`` file of its static folders to every page;
    - lists each script once per page (see :func:`_drop_duplicate_scripts`).
    """
    app.add_config_value("lincollapse_extra_static", [], "html")
    app.add_config_value("lincollapse_status_file", "", "env")
    app.add_config_value("lincollapse_preset", "", "env")
    app.add_config_value("lincollapse_cell_timeout", -1, "env")
    app.add_config_value("lincollapse_build_started", 0.0, "env")
    app.connect("config-inited", _add_extra_static)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=100)
    app.connect("builder-inited", _progress_start)
    app.connect("env-before-read-docs", _progress_plan)
    app.connect("source-read", _chapter_start)
    app.connect("doctree-read", _chapter_done)
    app.connect("build-finished", _build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def _add_extra_static(app, config) -> None:
    config.html_static_path = [*config.html_static_path, *config.lincollapse_extra_static]


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    """Keep the first of scripts that are the same.

    Sphinx 7.4 lists an inline script added with ``add_js_file(None, body=...)`` twice (once
    with filename ``None``, once with ``""``), so sphinx-thebe's inline configuration declared
    its ``const``s twice and every page raised "Identifier 'THEBE_JS_URL' has already been
    declared" in the browser.
    """
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        attributes = getattr(script, "attributes", {}) or {}
        key = (
            getattr(script, "filename", str(script)) or "",
            tuple(sorted((name, str(value)) for name, value in attributes.items())),
        )
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


# ------------------------------------------------------------------ progress and failures


def minutes(seconds: float) -> str:
    """``75.3`` → ``"1 min 15 s"``; under a minute, ``"4.2 s"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    return f"{whole // 60} min {whole % 60:02d} s"


def chapter_title(source: str, default: str) -> str:
    """The first level-1 heading of a MyST chapter, outside front matter and code."""
    in_code = False
    lines = source.splitlines()
    if lines and lines[0].strip() == "---":  # front matter
        end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), 0)
        lines = lines[end + 1 :]
    for line in lines:
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("# "):
            return line[2:].strip()
    return default


_PROGRESS: dict[str, Any] = {}


def _write_status(app) -> None:
    path = app.config.lincollapse_status_file
    if not path:
        return
    from lincollapse.storage import atomic_write

    record = {key: value for key, value in _PROGRESS.items() if not key.startswith("_")}
    try:
        atomic_write(Path(path), json.dumps(record, indent=1).encode(), sync=False)
    except OSError:  # progress is a courtesy; it must never fail the build
        pass


def _progress_start(app) -> None:
    _PROGRESS.clear()
    _PROGRESS.update(
        preset=app.config.lincollapse_preset,
        started=float(getattr(app.config, "lincollapse_build_started", 0) or 0) or time.time(),
        planned=[],
        chapters=[],
        failure=None,
    )


def _progress_plan(app, env, docnames) -> None:
    planned = sorted(docnames)
    _PROGRESS["planned"] = planned
    preset = app.config.lincollapse_preset
    from lincollapse.experiments import build_seconds

    # Chapters that share training runs through the results cache pay for them once.
    total = build_seconds([Path(d).name for d in planned], preset)
    note = f"; measured cost ≈ {minutes(total)}" if total else ""
    print(f"lincollapse: {len(planned)} chapter(s) to read (preset {preset}){note}", flush=True)
    _write_status(app)


def chapter_seconds_for(docname: str, preset: str) -> float | None:
    from lincollapse.experiments import chapter_seconds

    return chapter_seconds(Path(docname).name, preset)


def _chapter_start(app, docname, source) -> None:
    planned = _PROGRESS.get("planned") or [docname]
    position = planned.index(docname) + 1 if docname in planned else len(_PROGRESS["chapters"]) + 1
    title = chapter_title(source[0], docname)
    expected = chapter_seconds_for(docname, app.config.lincollapse_preset)
    elapsed = time.time() - _PROGRESS.get("started", time.time())
    _PROGRESS["_current"] = {
        "docname": docname,
        "title": title,
        "position": position,
        "start": time.time(),
        "expected": expected,
    }
    cost = (
        f"measured cost ≈ {minutes(expected)} on 2 cores"
        if expected
        else "no measured cost for this preset"
    )
    print(
        f"lincollapse: [{position}/{len(planned)}] {title} ({docname}): reading; {cost}; "
        f"build elapsed {minutes(elapsed)}",
        flush=True,
    )


def _chapter_done(app, doctree) -> None:
    current = _PROGRESS.pop("_current", None)
    if current is None:
        return
    seconds = time.time() - current["start"]
    executed, in_pass = None, False
    try:
        from myst_nb.sphinx_ import NbMetadataCollector

        data = NbMetadataCollector.get_exec_data(app.env, current["docname"])
        if data:  # a cached notebook keeps the time it was first executed
            mtime = float(data.get("mtime") or 0)
            executed = mtime >= current["start"] - 1
            started = float(getattr(app.config, "lincollapse_build_started", 0) or 0)
            in_pass = not executed and started > 0 and mtime >= started - 1
    except Exception:  # noqa: BLE001 - myst-nb internals: progress only
        executed = None
    how = {True: "executed", False: "from the execution cache", None: "read"}[executed]
    if in_pass:
        how = "executed in this build's parallel pass, read from the execution cache"
    chapter = {
        "docname": current["docname"],
        "title": current["title"],
        "seconds": round(seconds, 1),
        "executed": True if in_pass else executed,
        "expected": current["expected"],
    }
    _PROGRESS["chapters"].append(chapter)
    print(
        f"lincollapse: [{current['position']}/{len(_PROGRESS['planned'])}] {current['title']}: "
        f"{how} in {minutes(seconds)}",
        flush=True,
    )
    _write_status(app)


def _build_finished(app, exception) -> None:
    if exception is not None:
        current = _PROGRESS.get("_current") or {}
        docname = current.get("docname") or app.env.temp_data.get("docname")
        source = str(app.env.doc2path(docname)) if docname else None
        _PROGRESS["failure"] = describe_failure(
            exception,
            docname=docname,
            title=current.get("title", docname),
            source=source,
            timeout=app.config.lincollapse_cell_timeout,
        )
    _PROGRESS["finished"] = time.time()
    _write_status(app)


_CELL_ERRORS = ("CellExecutionError", "CellTimeoutError", "DeadKernelError")


def describe_failure(
    error: BaseException,
    *,
    docname: str | None,
    title: str | None,
    source: str | None,
    timeout: int = -1,
) -> dict[str, Any]:
    """What failed, where and how to fix it, for :func:`failure_message`."""
    cell_error = error
    seen = 0
    while cell_error is not None and type(cell_error).__name__ not in _CELL_ERRORS and seen < 10:
        cell_error = cell_error.__cause__ or cell_error.__context__
        seen += 1
    cell_error = cell_error or error
    kind = type(cell_error).__name__
    text = str(cell_error)
    if kind == "CellExecutionError":
        ename = getattr(cell_error, "ename", "") or "error"
        evalue = (getattr(cell_error, "evalue", "") or "").strip().splitlines()
        cause = f"{ename}: {evalue[0] if evalue else ''}".strip().rstrip(":")
    elif kind == "CellTimeoutError":
        cause = (
            f"CellTimeoutError: the cell ran past the per-cell timeout "
            f"({describe_timeout(timeout)})"
        )
    elif kind == "DeadKernelError":
        cause = (
            "DeadKernelError: the kernel died (it was killed: by an interrupt, or by the "
            "system when the machine ran out of memory)"
        )
    else:
        cause = f"{kind}: {text.splitlines()[0] if text else ''}"
    cell = locate_cell(Path(source), text) if source and Path(source).is_file() else None
    return {
        "docname": docname,
        "title": title,
        "source": source,
        "kind": kind,
        "cause": cause,
        "cell": cell,
    }


def locate_cell(path: Path, error_text: str) -> dict[str, Any] | None:
    """The code cell of the MyST file ``path`` that ``error_text`` (nbclient's) shows.

    nbclient quotes the failing cell (whole, or its first and last lines for a timeout); the
    cell whose source appears in the text, else whose first line does, is the one. Returns its
    number among the code cells, its line in the file and its first line.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    cells: list[tuple[int, list[str]]] = []  # (1-based line of the first source line, source)
    index = 0
    while index < len(lines):
        if lines[index].lstrip().startswith("```{code-cell}"):
            index += 1
            while index < len(lines) and (
                lines[index].startswith(":") or not lines[index].strip()
            ):  # cell options and blank lines before the source
                index += 1
            start, body = index + 1, []
            while index < len(lines) and not lines[index].startswith("```"):
                body.append(lines[index])
                index += 1
            cells.append((start, body))
        index += 1

    def first(body: list[str]) -> str:
        return next((line.strip() for line in body if line.strip()), "")

    def quoted(body: list[str]) -> bool:  # whole, or cut as nbclient cuts a timed-out cell
        source = "\n".join(body).strip()
        split = source.split("\n")
        return bool(source) and (
            source in error_text or f"{split[:5]}\n...\n{split[-5:]}" in error_text
        )

    exact = [i for i, (_, body) in enumerate(cells) if quoted(body)]
    heads = [i for i, (_, body) in enumerate(cells) if first(body) and first(body) in error_text]
    found = exact[-1] if exact else (heads[0] if len(heads) == 1 else None)
    if found is None:
        return None
    line, body = cells[found]
    return {"number": found + 1, "line": line, "first_line": first(body)}


def failure_message(status: dict[str, Any], cache: dict[str, int] | None = None) -> str:
    """The lines printed when the build failed: chapter, cell, cause and fix."""
    failure = status.get("failure") or {}
    done = [c for c in status.get("chapters", []) if c.get("docname") != failure.get("docname")]
    where = f"chapter “{failure.get('title')}” ({failure.get('source') or failure.get('docname')})"
    cell = failure.get("cell")
    if cell:
        head = (
            cell["first_line"] if len(cell["first_line"]) <= 60 else cell["first_line"][:59] + "…"
        )
        where += f", code cell {cell['number']} at line {cell['line']} (`{head}`)"
    kept = []
    if done:
        kept.append(f"the {len(done)} chapter(s) that finished are in the execution cache")
    if cache and cache.get("saved"):
        kept.append(f"the {cache['saved']} training run(s) finished in it are in the results cache")
    rerun = (
        f"rerun `make book`: {' and '.join(kept)}, so nothing done is recomputed"
        if kept
        else "rerun `make book` (finished chapters and training runs are cached as they finish)"
    )
    kind = failure.get("kind")
    if kind == "CellTimeoutError":
        fix = (
            f"{rerun}; set {CELL_TIMEOUT_VAR}=none (the default of the book and paper presets) "
            "or a larger number of seconds; `LINCOLLAPSE_PRESET=fast make book` checks every "
            "chapter in minutes"
        )
    elif kind == "DeadKernelError":
        fix = (
            f"{rerun} (if memory ran out, close other programs first); "
            "`LINCOLLAPSE_PRESET=fast make book` needs far less"
        )
    elif kind == "CellExecutionError":
        fix = (
            f"correct the error shown above (the traceback is in the build log), then {rerun}; "
            "`LINCOLLAPSE_PRESET=fast make book` checks every chapter in minutes"
        )
    else:
        fix = f"see the messages above, then {rerun}"
    return (
        f"lincollapse: the book did not build, in {where}\n"
        f"  cause: {failure.get('cause')}\n"
        f"  fix:   {fix}"
    )


def _cache_events(path: Path) -> dict[str, int]:
    counts = {"hit": 0, "saved": 0, "resumed": 0}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line).get("event")
            except (json.JSONDecodeError, AttributeError):
                continue
            if event in counts:
                counts[event] += 1
    return counts


def _read_status(path: Path) -> dict[str, Any]:
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return status if isinstance(status, dict) else {}


def build_summary(status: dict[str, Any], cache: dict[str, int], seconds: float) -> str:
    """One line on what the build did: chapters executed or cached, results-cache traffic."""
    chapters = status.get("chapters", [])
    executed = sum(1 for c in chapters if c.get("executed"))
    cached = sum(1 for c in chapters if c.get("executed") is False)
    return (
        f"lincollapse: {minutes(seconds)} in all; {len(chapters)} chapter(s) read: {executed} "
        f"executed, {cached} from the execution cache; results cache: {cache['hit']} "
        f"entr{'y' if cache['hit'] == 1 else 'ies'} read, {cache['saved']} computed and saved"
        + (
            f", {cache['resumed']} training(s) resumed from the state an interrupt left"
            if cache.get("resumed")
            else ""
        )
    )


LATEX_TOOLS = ("pdflatex", "latexmk")


def missing_latex_tools() -> list[str]:
    """The LaTeX programs the PDF build needs that are not on ``PATH``."""
    return [tool for tool in LATEX_TOOLS if shutil.which(tool) is None]


def build(
    root: Path, builder: str = "html", mathjax: str = "local", kernels: int | None = None
) -> int:
    """Run ``jupyter-book build`` strictly; return its exit code.

    The preset is ``$LINCOLLAPSE_PRESET``, else ``book`` (not the interactive ``reader``
    default: the rendered book computes what it shows).
    """
    preset = current_preset() if os.environ.get(ENV_VAR, "").strip() else "book"
    mathjax_static = None
    if builder == "pdflatex" and (missing := missing_latex_tools()):
        print(
            f"the PDF build needs a LaTeX toolchain; not found on PATH: {', '.join(missing)}.\n"
            "Install one (e.g. Debian: apt-get install latexmk texlive-latex-extra "
            "texlive-fonts-recommended texlive-xetex) and run `make pdf` again; "
            "the HTML book (`make book`) needs none of it.",
            file=sys.stderr,
        )
        return 2
    if builder == "html" and mathjax == "local":
        try:
            mathjax_static = ensure_mathjax(root)
        except MathJaxUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    start = time.time()
    config = write_build_config(root, preset, mathjax_static, started=start)
    status_path, log_path = root / STATUS_FILE, root / CACHE_LOG_FILE
    for stale in (status_path, log_path):
        stale.unlink(missing_ok=True)
    seconds = cell_timeout(preset, _configured_timeout(root))
    timeout = describe_timeout(seconds)
    command = [
        sys.executable,
        "-c",
        "from jupyter_book.cli.main import main; main()",
        "build",
        str(root),
        "--config",
        str(config),
        "--builder",
        builder,
        "-W",
        "-n",
        "--keep-going",
    ]
    env = _kernel_environment(preset) | {CACHE_LOG_VAR: str(log_path)}
    threads = " ".join(f"{k}={env[k]}" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"))
    print(
        f"building the book with {ENV_VAR}={preset}: jupyter-book {' '.join(command[3:])}\n"
        f"lincollapse: per-cell timeout {timeout} ({CELL_TIMEOUT_VAR} changes it); threads: "
        f"{threads} (lincollapse.threads)",
        flush=True,
    )
    report = None
    try:
        report = execute_chapters(
            root,
            execution_cache_dir(root, preset),
            preset,
            env,
            timeout=seconds,
            kernels=kernels,
            started=start,
        )
        if report is not None:
            print(report.summary(), flush=True)
        process = subprocess.Popen(command, env=env)
        code = process.wait()
    except KeyboardInterrupt:
        if "process" in locals():
            process.wait()  # the build got the same Ctrl-C; let it stop
        print(
            "\nlincollapse: interrupted. Chapters that finished are in the execution cache and "
            "training runs that finished are in the results cache: rerun `make book` to "
            "continue from them.",
            file=sys.stderr,
            flush=True,
        )
        return 130
    status, cache = _read_status(status_path), _cache_events(log_path)
    print(build_summary(status, cache, time.time() - start), flush=True)
    if report is not None and report.executed:
        print(report.summary(), flush=True)
    if code != 0 and status.get("failure"):
        print(failure_message(status, cache), file=sys.stderr, flush=True)
    return code


def _configured_timeout(root: Path) -> int | None:
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8")) or {}
    return (config.get("execute") or {}).get("timeout")


def _kernel_environment(preset: str) -> dict[str, str]:
    """The build's environment: the preset set, no MPLBACKEND (kernels plot inline), no
    progress bars (a tqdm widget in a cell's output would make the page load widget scripts
    from a CDN, and the book must work offline), and the thread policy
    (:func:`lincollapse.threads.policy_environment`: BLAS on one thread, torch on every core)."""
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    return env | policy_environment(environ=env) | {ENV_VAR: preset, "LINCOLLAPSE_QUIET": "1"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.build_book", description=__doc__.splitlines()[0]
    )
    parser.add_argument("root", nargs="?", default=".", help="the book's root folder")
    parser.add_argument("--builder", default="html", choices=("html", "pdflatex", "latex"))
    parser.add_argument(
        "--mathjax",
        default="local",
        choices=("local", "cdn"),
        help="local: serve MathJax from the book (offline; default); cdn: load it from jsdelivr",
    )
    parser.add_argument(
        "--kernels",
        type=int,
        default=None,
        help="chapters executed at once before Sphinx reads them (default: "
        f"${KERNELS_VAR}, else 2 on 2 or more cores; 1: one after the other, as Sphinx reads)",
    )
    args = parser.parse_args(argv)
    return build(Path(args.root).resolve(), args.builder, args.mathjax, args.kernels)


if __name__ == "__main__":
    sys.exit(main())
