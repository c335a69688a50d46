"""What the chapters print and glue, kept with the results they describe.

A result object that a chapter reports from subclasses :class:`Report` and defines
:meth:`Report.glue_values`, the numbers the chapter's prose quotes; the chapter then calls
``result.glue_all("prefix_")`` instead of one ``glue`` call per number, and prints the result's
``table()`` (and, where there is one, ``verdict()``) instead of building them in a code cell.
"""

from __future__ import annotations

from typing import Any


class Report:
    """Mixin of result objects whose numbers a chapter glues into its prose (myst-nb)."""

    def glue_values(self, **options: Any) -> dict[str, Any]:
        """The numbers the chapter quotes, by glue name without the chapter's prefix."""
        raise NotImplementedError

    def glue_all(self, prefix: str = "", **options: Any) -> None:
        """Glue every value of :meth:`glue_values` (called with ``options``) as
        ``prefix + name``, not displayed where the cell runs (and returning nothing, so that a
        cell ending with it shows nothing either)."""
        from myst_nb import glue

        values = self.glue_values(**options)
        for name, value in values.items():
            glue(prefix + name, value, display=False)
