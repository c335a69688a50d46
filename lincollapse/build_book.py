"""Build the executed book: ``python -m lincollapse.build_book [ROOT]`` (what ``make book`` runs).

myst-nb's execution cache keys on a notebook's code cells only, so an edit to ``lincollapse``
would otherwise leave stale outputs in the book. This script points the cache at a folder
named after a hash of the package's source and the preset; any change to either re-executes
every chapter. Sphinx runs with ``-W -n --keep-going`` and cells that raise fail the build.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from lincollapse.presets import ENV_VAR, current_preset

PACKAGE_DIR = Path(__file__).resolve().parent


def package_fingerprint(preset: str) -> str:
    """Hash of every ``.py`` file in the package plus the preset name (16 hex digits)."""
    digest = hashlib.sha256(preset.encode())
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def write_build_config(root: Path, preset: str) -> Path:
    """Copy ``_config.yml`` with ``execute.cache`` keyed on the package; return its path."""
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    cache_dir = root / "_build" / ".jupyter_cache" / f"{preset}-{package_fingerprint(preset)}"
    config.setdefault("execute", {})["cache"] = str(cache_dir.resolve())
    out = root / "_build" / "_config.build.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    os.replace(tmp, out)
    return out


def build(root: Path, builder: str = "html") -> int:
    """Run ``jupyter-book build`` strictly; return its exit code."""
    preset = current_preset()
    config = write_build_config(root, preset)
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
    """The build's environment: the preset set, and no MPLBACKEND so kernels plot inline."""
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    return env | {ENV_VAR: preset}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=".", help="the book's root folder")
    parser.add_argument("--builder", default="html", choices=("html", "pdflatex", "latex"))
    args = parser.parse_args(argv)
    return build(Path(args.root).resolve(), args.builder)


if __name__ == "__main__":
    sys.exit(main())
