"""Chapter code cells stay short.

A chapter calls the package; tables, verdicts and the numbers its prose quotes come from the result
objects (``table()``, ``verdict()``, ``glue_all(prefix)`` of :class:`lincollapse.reporting.Report`).
A cell longer than :data:`MAX_LINES` is report logic that belongs in the package. The code of a
solution (between ``solution-start`` and ``solution-end``) is what a reader would type, and is
exempt.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
MAX_LINES = 15

SOLUTION = re.compile(r"^````\{solution-start\}.*?^````\{solution-end\}", re.M | re.S)
CODE_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
OPTIONS = re.compile(r"\A(?::[\w-]+:[^\n]*\n)+")


def long_cells(text: str, limit: int = MAX_LINES) -> list[tuple[int, int]]:
    """(line of the cell's fence, number of code lines) of every cell outside a solution that has
    more than ``limit`` lines of code; blank lines and comments count, a cell's options do not."""
    outside = SOLUTION.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    found = []
    for match in CODE_CELL.finditer(outside):
        lines = OPTIONS.sub("", match.group(1)).rstrip("\n").splitlines()
        if len(lines) > limit:
            found.append((outside.count("\n", 0, match.start()) + 1, len(lines)))
    return found


def _cell(lines: int, options: str = "") -> str:
    body = "".join(f"x{i} = {i}\n" for i in range(lines))
    return f"```{{code-cell}} ipython3\n{options}{body}```\n"


def test_a_long_cell_is_found_and_a_solution_or_options_are_not_counted():
    chapter = (
        "# A chapter\n\n"
        + _cell(MAX_LINES)
        + "\nText.\n\n"
        + _cell(MAX_LINES + 1)
        + "\n````{solution-start} ex-demo\n:class: dropdown\n````\n\n"
        + _cell(3 * MAX_LINES)
        + "\n````{solution-end}\n````\n\n"
        + _cell(MAX_LINES, options=":tags: [remove-output]\n")
    )
    fence = chapter.count("\n", 0, chapter.index(_cell(MAX_LINES + 1))) + 1
    assert long_cells(chapter) == [(fence, MAX_LINES + 1)]


@pytest.mark.parametrize("chapter", sorted(p.stem for p in BOOK.glob("*.md")))
def test_no_chapter_cell_is_longer_than_the_limit(chapter):
    found = long_cells((BOOK / f"{chapter}.md").read_text(encoding="utf-8"))
    assert not found, (
        f"book/{chapter}.md: code cells over {MAX_LINES} lines at "
        + ", ".join(f"line {line} ({n} lines)" for line, n in found)
        + "; move tables, verdicts and glue into the result object (table(), verdict(), "
        "glue_all(prefix) of lincollapse.reporting.Report), or import where a figure is made"
    )
