"""The harness has teeth: a chapter with a failing cell fails both the book build and nbval.

Each check runs twice, on a chapter that raises and on the same chapter fixed, so a harness that
always fails (or never executes) cannot pass.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHAPTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A chapter

```{{code-cell}} ipython3
value = 1 + 1
```

```{{code-cell}} ipython3
{body}
```
"""


def make_book(folder: Path, body: str) -> Path:
    """A one-chapter book using the project's own _config.yml and bibliography."""
    (folder / "book").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", folder / "_config.yml")
    shutil.copy(ROOT / "book" / "references.bib", folder / "book" / "references.bib")
    (folder / "_toc.yml").write_text("format: jb-book\nroot: book/chapter\n")
    chapter = folder / "book" / "chapter.md"
    chapter.write_text(CHAPTER.format(body=body))
    return chapter


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    ("body", "fails"),
    [("raise RuntimeError('deliberately broken cell')", True), ("print(value)", False)],
)
def test_book_build_fails_on_a_failing_cell(tmp_path, body, fails):
    make_book(tmp_path, body)
    result = run([sys.executable, "-m", "lincollapse.build_book", str(tmp_path)], ROOT)
    output = result.stdout + result.stderr
    if fails:
        assert result.returncode != 0, output[-3000:]
        assert "deliberately broken cell" in output
    else:
        assert result.returncode == 0, output[-3000:]
        assert (tmp_path / "_build" / "html" / "book" / "chapter.html").is_file()


@pytest.mark.parametrize(
    ("body", "fails"),
    [("raise RuntimeError('deliberately broken cell')", True), ("print(value)", False)],
)
def test_nbval_fails_on_a_failing_cell(tmp_path, body, fails):
    chapter = make_book(tmp_path, body)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "lincollapse.testing",
        "-p",
        "no:cacheprovider",
        "--nbval-lax",
        "--nbval-current-env",
        "--rootdir",
        str(tmp_path),
        str(chapter),
    ]
    result = run(command, tmp_path)
    output = result.stdout + result.stderr
    if fails:
        assert result.returncode == 1, output[-3000:]
        assert "deliberately broken cell" in output and "1 failed, 1 passed" in output
    else:
        assert result.returncode == 0, output[-3000:]
        assert "2 passed" in output
