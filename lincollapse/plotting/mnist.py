"""Figures of the chapter *The MNIST data*."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from lincollapse.experiments.mnist_data import SpectrumResult
from lincollapse.plotting.style import ACTIVE, COLLAPSED, house_style, new_figure


def plot_spectrum_with_digits(result: SpectrumResult, n_digits: int = 20) -> Figure:
    """Sample digits (left) and the covariance eigen-spectrum on a log scale (right)."""
    with house_style():
        fig, (ax_digits, ax_spectrum) = new_figure(
            1, 2, figsize=(9.5, 3.6), gridspec_kw={"width_ratios": [1, 1.6]}
        )
        chosen = _digits_per_class(result.data.labels, n_digits)
        rows, cols = 4, int(np.ceil(len(chosen) / 4))
        tiles = np.ones((rows * 29 + 1, cols * 29 + 1))
        for k, image_index in enumerate(chosen):
            row, col = k % rows, k // rows
            tiles[1 + row * 29 : 1 + row * 29 + 28, 1 + col * 29 : 1 + col * 29 + 28] = (
                1.0 - result.data.images[image_index].reshape(28, 28)
            )
        ax_digits.imshow(tiles, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax_digits.set_axis_off()
        ax_digits.set_title(f"{len(chosen)} of the {result.data.n} images")

        index = np.arange(1, result.eigenvalues.size + 1)
        nonzero = result.eigenvalues > result.zero_tolerance
        floor = result.zero_tolerance / 10
        ax_spectrum.semilogy(
            index[nonzero],
            result.eigenvalues[nonzero],
            color=ACTIVE,
            lw=1.5,
            label=f"non-zero: {result.n_nonzero}",
        )
        ax_spectrum.semilogy(
            index[~nonzero],
            np.maximum(result.eigenvalues[~nonzero], floor),
            ".",
            ms=2,
            color=COLLAPSED,
            label=f"numerically zero: {result.n_zero} (drawn below the tolerance)",
        )
        ax_spectrum.axhline(
            result.zero_tolerance,
            color=COLLAPSED,
            ls=":",
            lw=1,
            label=r"tolerance $d\,\epsilon\,\lambda_1$",
        )
        ax_spectrum.set_xlabel("index $j$")
        ax_spectrum.set_ylabel(r"eigenvalue $\lambda_j$")
        ax_spectrum.set_title("eigenvalues of the sample covariance")
        ax_spectrum.legend(loc="lower left")
    return fig


def _digits_per_class(labels: np.ndarray, n_digits: int) -> list[int]:
    """Indices of up to ``n_digits`` images, cycling through the classes so all digits show."""
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < min(n_digits, labels.size):
        for members in by_class:
            if members and len(chosen) < n_digits:
                chosen.append(int(members.pop(0)))
    return chosen
