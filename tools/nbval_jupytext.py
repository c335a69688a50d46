"""A pytest plugin that lets nbval execute the book's Jupytext MyST chapters in place.

nbval collects only ``.ipynb`` files. With this plugin, a ``.md`` file whose front matter has a
``kernelspec`` (a Jupytext MyST notebook) is collected too, converted in memory by jupytext:
nothing is written next to the chapter. Enabled by the root ``conftest.py``; use it elsewhere
with ``pytest -p tools.nbval_jupytext --nbval-lax ...`` from the repository root.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest
from nbval import plugin as nbval_plugin


def is_jupytext_notebook(path: Path) -> bool:
    """True for a ``.md`` file whose YAML front matter declares a ``kernelspec``."""
    if path.suffix != ".md":
        return False
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return False
    front_matter = text.split("---", 2)[1] if text.count("---") >= 2 else ""
    return "kernelspec:" in front_matter


class _NbformatReadingMarkdown:
    """Stands in for :mod:`nbformat` inside nbval: ``read`` understands Jupytext ``.md``."""

    def __getattr__(self, name):
        return getattr(nbformat, name)

    @staticmethod
    def read(path, as_version=4, **kwargs):
        if str(path).endswith(".md"):
            return jupytext.read(str(path), as_version=as_version)
        return nbformat.read(path, as_version=as_version, **kwargs)


nbval_plugin.nbformat = _NbformatReadingMarkdown()


@pytest.hookimpl
def pytest_collect_file(file_path: Path, parent):
    option = parent.config.option
    if not (getattr(option, "nbval", False) or getattr(option, "nbval_lax", False)):
        return None
    if is_jupytext_notebook(file_path):
        return nbval_plugin.IPyNbFile.from_parent(parent, path=file_path)
    return None
