"""Plotting: functions that take an experiment's result and return a Figure.

Nothing here trains or loads data. The house style is applied explicitly through
:func:`house_style` (never at import), with an opaque white background so that figures
stay legible in the book's dark mode.
"""

from lincollapse.plotting.style import ACTIVE, COLLAPSED, OPTIMUM, house_style, new_figure

__all__ = ["ACTIVE", "COLLAPSED", "OPTIMUM", "house_style", "new_figure"]
