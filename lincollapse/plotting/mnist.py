"""Figures of the chapter *The MNIST data*."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from lincollapse.experiments.mnist import SpectrumResult
from lincollapse.plotting.style import ACTIVE, COLLAPSED, house_style, new_figure


def plot_spectrum_with_digits(result: SpectrumResult, n_digits: int = 16) -> Figure:
    """Sample digits (left) and the covariance eigen-spectrum on a log scale (right)."""
    with house_style():
        fig, (ax_digits, ax_spectrum) = new_figure(
            1, 2, figsize=(9.5, 3.6), gridspec_kw={"width_ratios": [1, 1.6]}
        )
        side = int(np.ceil(np.sqrt(n_digits)))
        tiles = np.ones((side * 29 + 1, side * 29 + 1))
        for k in range(min(n_digits, result.data.n)):
            row, col = divmod(k, side)
            tiles[1 + row * 29 : 1 + row * 29 + 28, 1 + col * 29 : 1 + col * 29 + 28] = (
                1.0 - result.data.images[k].reshape(28, 28)
            )
        ax_digits.imshow(tiles, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax_digits.set_axis_off()
        ax_digits.set_title(f"{n_digits} of the {result.data.n} images")

        index = np.arange(1, result.eigenvalues.size + 1)
        nonzero = result.eigenvalues > result.zero_tolerance
        floor = result.zero_tolerance / 10
        ax_spectrum.semilogy(index[nonzero], result.eigenvalues[nonzero], color=ACTIVE, lw=1.5,
                             label=f"non-zero: {result.n_nonzero}")  # fmt: skip
        ax_spectrum.semilogy(index[~nonzero], np.maximum(result.eigenvalues[~nonzero], floor),
                             ".", ms=2, color=COLLAPSED,
                             label=f"numerically zero: {result.n_zero}")  # fmt: skip
        ax_spectrum.axhline(result.zero_tolerance, color=COLLAPSED, ls=":", lw=1,
                            label=r"tolerance $d\,\epsilon\,\lambda_1$")  # fmt: skip
        ax_spectrum.set_xlabel("index $j$")
        ax_spectrum.set_ylabel(r"eigenvalue $\lambda_j$")
        ax_spectrum.set_title("eigenvalues of the sample covariance")
        ax_spectrum.legend(loc="lower left")
    return fig
