"""Maintainer tooling, kept out of the installed package.

- ``build_book``: builds the executed book (``make book``) and is its Sphinx extension;
- ``browser_check``: opens every page of the built book in headless Chromium
  (``make browser-check``);
- ``nbval_jupytext``: the pytest plugin that lets nbval run the Jupytext MyST chapters
  (enabled by the root ``conftest.py``);
- ``compare_figures``: compares every figure's fast-preset arrays between two revisions.

Run them from the repository root (``python -m tools.build_book``); ``pip install .`` installs
only :mod:`lincollapse`.
"""
