"""Build the executed book: ``python -m lincollapse.build_book [ROOT]`` (what ``make book`` runs).

myst-nb's execution cache keys on a notebook's code cells only, so an edit to ``lincollapse``
would otherwise leave stale outputs in the book. This script points the cache at a folder
named after a hash of the package's source and the preset; any change to either re-executes
every chapter. Sphinx runs with ``-W -n --keep-going`` and cells that raise fail the build.

The HTML renders its mathematics offline: before the build, MathJax 3 is fetched from a package
registry (npm, or PyPI when ``npm`` is missing) into ``_build/mathjax`` and copied into the
book's ``_static/mathjax``; ``mathjax_path`` points there, so a reader needs no network. Nothing
of MathJax is committed to this repository. ``--mathjax cdn`` builds with the CDN instead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from lincollapse.presets import ENV_VAR, current_preset

PACKAGE_DIR = Path(__file__).resolve().parent

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
        "`python -m lincollapse.build_book --mathjax cdn` (maths then needs the network)."
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


def write_build_config(root: Path, preset: str, mathjax_static: Path | None = None) -> Path:
    """Copy ``_config.yml`` with ``execute.cache`` keyed on the package; return its path.

    With ``mathjax_static`` (from :func:`ensure_mathjax`), the book loads MathJax from its own
    ``_static/mathjax`` instead of the CDN.
    """
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    cache_dir = root / "_build" / ".jupyter_cache" / f"{preset}-{package_fingerprint(preset)}"
    config.setdefault("execute", {})["cache"] = str(cache_dir.resolve())
    sphinx = config.setdefault("sphinx", {})
    sphinx["extra_extensions"] = [*(sphinx.get("extra_extensions") or []), "lincollapse.build_book"]
    if mathjax_static is not None:
        sphinx_config = sphinx.get("config") or {}
        sphinx["config"] = sphinx_config
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
    app.connect("config-inited", _add_extra_static)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=100)
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


LATEX_TOOLS = ("pdflatex", "latexmk")


def missing_latex_tools() -> list[str]:
    """The LaTeX programs the PDF build needs that are not on ``PATH``."""
    return [tool for tool in LATEX_TOOLS if shutil.which(tool) is None]


def build(root: Path, builder: str = "html", mathjax: str = "local") -> int:
    """Run ``jupyter-book build`` strictly; return its exit code."""
    preset = current_preset()
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
    config = write_build_config(root, preset, mathjax_static)
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
    print(
        f"building the book with {ENV_VAR}={preset}: jupyter-book {' '.join(command[3:])}",
        flush=True,
    )
    return subprocess.call(command, env=_kernel_environment(preset))


def _kernel_environment(preset: str) -> dict[str, str]:
    """The build's environment: the preset set, no MPLBACKEND (kernels plot inline), and no
    progress bars: a tqdm widget in a cell's output would make the page load widget scripts
    from a CDN, and the book must work offline."""
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    return env | {ENV_VAR: preset, "LINCOLLAPSE_QUIET": "1"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=".", help="the book's root folder")
    parser.add_argument("--builder", default="html", choices=("html", "pdflatex", "latex"))
    parser.add_argument(
        "--mathjax",
        default="local",
        choices=("local", "cdn"),
        help="local: serve MathJax from the book (offline; default); cdn: load it from jsdelivr",
    )
    args = parser.parse_args(argv)
    return build(Path(args.root).resolve(), args.builder, args.mathjax)


if __name__ == "__main__":
    sys.exit(main())
