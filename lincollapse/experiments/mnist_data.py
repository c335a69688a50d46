"""Experiments of the chapter *The MNIST data* (``book/mnist_data.md``)."""

from __future__ import annotations

import dataclasses

import numpy as np

from lincollapse.data import MNISTData, covariance_eigenvalues, load_mnist, numerical_rank
from lincollapse.experiments import figure
from lincollapse.presets import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class MNISTConfig(ExperimentConfig):
    """The data every MNIST experiment uses: ``n`` images drawn with ``seed``."""

    n: int = 1000
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class SpectrumResult:
    """Eigen-spectrum of the sample covariance of the images.

    Attributes
    ----------
    eigenvalues : ndarray of shape (d,)
        λ_1 ≥ … ≥ λ_d of the 1/N sample covariance.
    zero_tolerance : float
        Eigenvalues at or below it are numerically zero: d · ε_machine · λ_1.
    n_nonzero : int
        Numerical rank of the sample covariance.
    data : MNISTData
        The images used.
    """

    eigenvalues: np.ndarray
    zero_tolerance: float
    n_nonzero: int
    data: MNISTData

    @property
    def n_zero(self) -> int:
        return self.eigenvalues.size - self.n_nonzero

    @property
    def n_constant_pixels(self) -> int:
        """Pixels with the same value in every image (each forces a zero eigenvalue)."""
        return int(np.count_nonzero(np.ptp(self.data.images, axis=0) == 0))


@figure(
    "mnist-spectrum",
    chapter="mnist_data",
    plot="lincollapse.plotting.mnist:plot_spectrum_with_digits",
    config=MNISTConfig,
    costs={"fast": "≈ 3 s", "book": "≈ 3 s", "paper": "≈ 3 s"},
)
def mnist_spectrum(config: MNISTConfig | None = None) -> SpectrumResult:
    """Sample digits and the eigen-spectrum of the sample covariance of the MNIST images."""
    config = config or MNISTConfig.for_preset()
    data = load_mnist(config.n, seed=config.seed)
    eigenvalues = covariance_eigenvalues(data.images)
    n_nonzero, tolerance = numerical_rank(eigenvalues)
    return SpectrumResult(eigenvalues, tolerance, n_nonzero, data)
