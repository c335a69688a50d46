"""``pip install .`` installs the numerical package only: no browser, build or pytest code.

The book builder, the browser check and the nbval plugin live in ``tools/`` (run from a clone);
these tests read what setuptools would install and what the installed modules import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from setuptools import find_packages

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
# Top-level modules of the tooling; the installed package must import none of them (myst_nb's
# glue, which chapters call through lincollapse.reporting, is not tooling).
TOOLING_IMPORTS = {
    "jupyter_book",
    "jupytext",
    "nbclient",
    "nbformat",
    "nbval",
    "playwright",
    "pytest",
    "sphinx",
    "tools",
}


def installed_packages() -> list[str]:
    """The packages ``pip install .`` installs, found as pyproject.toml tells setuptools."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    find = config["tool"]["setuptools"]["packages"]["find"]
    return sorted(find_packages(where=str(ROOT), include=find["include"]))


def installed_modules() -> list[Path]:
    return sorted(
        path
        for package in installed_packages()
        for path in (ROOT / package.replace(".", "/")).glob("*.py")
    )


def imported_top_levels(path: Path) -> set[str]:
    """Top-level names of every ``import`` in ``path`` (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_lincollapse_is_installed():
    packages = installed_packages()
    assert "lincollapse" in packages and "lincollapse.experiments" in packages
    assert all(p == "lincollapse" or p.startswith("lincollapse.") for p in packages), packages


def test_the_tooling_is_not_in_the_package():
    names = {path.stem for path in installed_modules()}
    assert {"browser_check", "build_book", "testing"}.isdisjoint(names)
    for tool in ("browser_check", "build_book", "nbval_jupytext"):
        assert (ROOT / "tools" / f"{tool}.py").is_file()


@pytest.mark.parametrize("path", installed_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_installed_module_imports_tooling(path):
    assert not imported_top_levels(path) & TOOLING_IMPORTS


def test_the_import_check_sees_tooling_imports():
    """The check above can fail: it finds the tooling imports of the tools themselves."""
    tools = ROOT / "tools"
    assert {"jupytext", "nbval", "pytest"} <= imported_top_levels(tools / "nbval_jupytext.py")
    assert "yaml" in imported_top_levels(tools / "build_book.py")  # imported inside functions
    assert "playwright" in imported_top_levels(tools / "browser_check.py")
