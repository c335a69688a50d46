"""The book's figure style: one place for colours, sizes and the opaque background."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import matplotlib as mpl
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

# Consistent meaning across chapters.
ACTIVE = "#1f77b4"  # active latents / principal directions in use
COLLAPSED = "#d62728"  # collapsed latents / zero columns
OPTIMUM = "#2b2b2b"  # closed-form optimum lines
SERIES = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")

_RC = {
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.transparent": False,
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=SERIES),
    "legend.frameon": False,
}


@contextlib.contextmanager
def house_style() -> Iterator[None]:
    """Context manager applying the book's rc settings to the figures created inside it.

    Interactive mode is kept as it is at the exit: a notebook's inline backend switches it on
    when the first figure loads it, inside this context, and restoring the rc settings would
    switch it off again, so that no later figure of the notebook would be displayed.
    """
    with mpl.rc_context(_RC):
        try:
            yield
        finally:
            interactive = mpl.is_interactive()
    mpl.interactive(interactive)


def new_figure(*args, **kwargs) -> tuple[Figure, object]:
    """``plt.subplots`` under the house style, with an opaque white figure background."""
    with house_style():
        fig, axes = plt.subplots(*args, layout="constrained", **kwargs)
    fig.patch.set_facecolor("white")
    fig.patch.set_alpha(1.0)
    return fig, axes
