"""Experiments of the chapter *Probabilistic PCA*: the 2-D worked example, the landscape around a
collapsed stationary point, and the collapsed columns of fixed-σ² pPCA on MNIST.

One function per figure, each returning a dataclass of data (plotting lives in
:mod:`lincollapse.plotting.linear`). Every configuration is a frozen dataclass whose defaults are
the ``book`` preset; ``fast`` shrinks data and training to seconds for CI.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from lincollapse import gaussian, ppca
from lincollapse.experiments import FAST_MNIST, figure, mnist_with_spectrum
from lincollapse.presets import ExperimentConfig
from lincollapse.training import maximise

# --------------------------------------------------------------------------------------------
# pPCA: a worked example in two dimensions
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PPCA2DConfig(ExperimentConfig):
    """``n`` points in the plane (d = 2) whose 1/n sample covariance has the given spectrum.

    The points are drawn from a Gaussian and then re-coloured exactly, so that their sample mean
    is ``mean`` and their sample covariance is S = U diag(``eigenvalues``) Uᵀ, with u_1 at
    ``angle_degrees`` from the first axis: round numbers a reader can check by hand. One latent
    (q = 1); the model is shown at the MLE and at each fixed σ² in ``sigma2_values``, and the
    posterior of z for one data point is swept over a log-spaced grid of σ².
    """

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {"fast": {"sweep_size": 41}}
    # Measured on the book's 2-core CPU.
    COSTS: ClassVar[dict[str, str]] = {"fast": "< 1 s", "book": "< 1 s", "paper": "< 1 s (as book)"}
    n: int = 200
    eigenvalues: tuple[float, float] = (4.0, 1.0)
    angle_degrees: float = 45.0
    mean: tuple[float, float] = (0.0, 0.0)
    sigma2_values: tuple[float, ...] = (0.25, 2.5, 5.0)
    sweep_min: float = 0.05
    sweep_max: float = 10.0
    sweep_size: int = 201
    radius: float = 2.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class PPCA2DState:
    """pPCA with one latent at one σ², and the exact posterior of z for one point.

    Attributes
    ----------
    sigma2 : float
    W : ndarray of shape (2, 1)
        The fixed-σ² maximiser u_1 √(λ_1 − σ²)₊ (at σ² = σ²_MLE: the MLE).
    covariance : ndarray of shape (2, 2)
        The model's covariance C = W Wᵀ + σ² I (ppca-marginal).
    posterior_mean, posterior_variance : float
        p(z | x⋆) = N(m, v), equation (ppca-posterior).
    log_likelihood : float
        Average log-likelihood (ppca-loglik), nats per point.
    collapsed : bool
        λ_1 ≤ σ²: W = 0 and the posterior is the prior for every point.
    """

    sigma2: float
    W: np.ndarray
    covariance: np.ndarray
    posterior_mean: float
    posterior_variance: float
    log_likelihood: float
    collapsed: bool

    @property
    def decoded_mean(self) -> np.ndarray:
        """W m: where the posterior mean puts x⋆ on the model's line, relative to μ̂; shape (2,)."""
        return self.W[:, 0] * self.posterior_mean


def ppca_2d_state(spectrum: ppca.DataSpectrum, point: np.ndarray, sigma2: float) -> PPCA2DState:
    """The fixed-σ² pPCA maximiser with q = 1 and the exact posterior of z for ``point``.

    Every formula is :mod:`lincollapse.ppca`'s: :func:`~lincollapse.ppca.fixed_sigma2_maximiser`,
    :func:`~lincollapse.ppca.marginal_covariance`, :func:`~lincollapse.ppca.posterior` and
    :func:`~lincollapse.ppca.average_log_likelihood`.

    Parameters
    ----------
    spectrum : DataSpectrum
        Of data in d dimensions (the chapter's example has d = 2).
    point : ndarray of shape (d,)
    sigma2 : float
        σ² > 0.

    Returns
    -------
    PPCA2DState
    """
    W = ppca.fixed_sigma2_maximiser(spectrum, 1, sigma2)
    posterior = ppca.posterior(np.asarray(point)[None, :], W, sigma2, spectrum.mean)
    return PPCA2DState(
        sigma2=float(sigma2),
        W=W,
        covariance=ppca.marginal_covariance(W, sigma2),
        posterior_mean=float(posterior.mean[0, 0]),
        posterior_variance=float(posterior.covariance[0, 0]),
        log_likelihood=ppca.average_log_likelihood(spectrum, W, sigma2),
        collapsed=ppca.collapsed_column_count(spectrum, 1, sigma2) == 1,
    )


@dataclasses.dataclass(frozen=True)
class PPCA2DResult:
    """The two-dimensional example: data, model at the MLE and at fixed σ², posterior of z.

    Attributes
    ----------
    x : ndarray of shape (n, 2)
        The data points.
    spectrum : DataSpectrum
        Sample mean μ̂, covariance S (``spectrum.covariance``), eigenvalues λ_1 ≥ λ_2 and
        eigenvectors (columns u_1, u_2, each with a non-negative first coordinate).
    point_index : int
        The point x⋆ whose posterior is shown: the one farthest from μ̂ in the direction u_1.
    sigma2_mle : float
        σ²_MLE = λ_2 (the mean of the d − q = 1 discarded eigenvalues).
    mle : PPCA2DState
        The model at σ²_MLE.
    fixed : tuple of PPCA2DState
        The model at each fixed σ² of the configuration.
    sweep_sigma2 : ndarray of shape (m,)
        Log-spaced σ² grid.
    sweep_posterior_mean, sweep_posterior_sd : ndarray of shape (m,)
        Mean and standard deviation of p(z | x⋆) at each σ² of the grid.
    radius : float
        Mahalanobis radius at which ellipses are drawn.
    """

    x: np.ndarray
    spectrum: ppca.DataSpectrum
    point_index: int
    sigma2_mle: float
    mle: PPCA2DState
    fixed: tuple[PPCA2DState, ...]
    sweep_sigma2: np.ndarray
    sweep_posterior_mean: np.ndarray
    sweep_posterior_sd: np.ndarray
    radius: float

    @property
    def point(self) -> np.ndarray:
        """x⋆, shape (2,)."""
        return self.x[self.point_index]

    @property
    def collapse_sigma2(self) -> float:
        """λ_1: from this σ² on the latent is collapsed (W = 0, posterior = prior)."""
        return float(self.spectrum.eigenvalues[0])

    def state(self, sigma2: float) -> PPCA2DState:
        """:func:`ppca_2d_state` of this data and x⋆ at any σ² (what the slider shows)."""
        return ppca_2d_state(self.spectrum, self.point, sigma2)

    def glue_values(self, prefix: str = "ppca2d") -> dict[str, float | int]:
        """The numbers of the chapter's hand computation, named ``{prefix}_{name}``.

        ``s11, s12, s22``: entries of S; ``half_trace`` = (λ_1 + λ_2)/2 = (s11 + s22)/2 and
        ``half_gap`` = (λ_1 − λ_2)/2 = √(((s11 − s22)/2)² + s12²), the two terms of the 2 × 2
        eigenvalue formula; ``u1_raw_*`` = (s12, λ_1 − s11), an unnormalised u_1; ``w_*``: the
        MLE's loading vector; ``point_*``: x⋆; ``projection`` = u_1ᵀ(x⋆ − μ̂); ``M`` = wᵀw + σ²
        at the MLE; ``m``, ``v``: mean and variance of p(z | x⋆) at the MLE.
        """
        S = self.spectrum.covariance
        lam1, lam2 = (float(v) for v in self.spectrum.eigenvalues)
        u1 = self.spectrum.eigenvectors[:, 0]
        w = self.mle.W[:, 0]
        values = {
            "n": int(self.x.shape[0]),
            "mean_1": round(float(self.spectrum.mean[0]), 12) + 0.0,  # no "-0.00" from round-off
            "mean_2": round(float(self.spectrum.mean[1]), 12) + 0.0,
            "s11": float(S[0, 0]),
            "s12": float(S[0, 1]),
            "s22": float(S[1, 1]),
            "half_trace": (lam1 + lam2) / 2,
            "half_gap": (lam1 - lam2) / 2,
            "lambda1": lam1,
            "lambda2": lam2,
            "u1_raw_1": float(S[0, 1]),
            "u1_raw_2": lam1 - float(S[0, 0]),
            "u1_1": float(u1[0]),
            "u1_2": float(u1[1]),
            "sigma2_mle": self.sigma2_mle,
            "w_1": float(w[0]),
            "w_2": float(w[1]),
            "w_squared": float(w @ w),
            "point_1": float(self.point[0]),
            "point_2": float(self.point[1]),
            "projection": float(u1 @ (self.point - self.spectrum.mean)),
            "M": float(w @ w) + self.sigma2_mle,
            "m": self.mle.posterior_mean,
            "v": self.mle.posterior_variance,
            "radius": self.radius,
        }
        return {f"{prefix}_{name}": value for name, value in values.items()}


def recoloured_gaussian(
    n: int, covariance: np.ndarray, mean: np.ndarray, seed: int = 0
) -> np.ndarray:
    """n Gaussian points re-coloured so that their sample mean and 1/n covariance are exact.

    Draws ξ_i ~ N(0, I), centres them, whitens them with the Cholesky factor of their own 1/n
    covariance, and colours them with that of ``covariance``.

    Parameters
    ----------
    n : int
        Number of points, > d.
    covariance : ndarray of shape (d, d)
        Symmetric positive definite.
    mean : ndarray of shape (d,)

    Returns
    -------
    ndarray of shape (n, d)
    """
    covariance = np.asarray(covariance, dtype=np.float64)
    d = covariance.shape[0]
    if n <= d:
        raise ValueError(f"need n > d = {d} points to fix a covariance, got n={n}")
    xi = np.random.default_rng(seed).normal(size=(n, d))
    xi -= xi.mean(axis=0)
    own = np.linalg.cholesky(xi.T @ xi / n)
    target = np.linalg.cholesky(covariance)
    white = np.linalg.solve(own, xi.T).T  # 1/n covariance exactly I
    return white @ target.T + np.asarray(mean, dtype=np.float64)


@figure(
    "ppca-2d-example",
    chapter="ppca",
    plot="lincollapse.plotting.linear:plot_ppca_2d",
    config=PPCA2DConfig,
)
def ppca_2d_example(config: PPCA2DConfig | None = None) -> PPCA2DResult:
    """pPCA in two dimensions: data and model ellipses, the posterior of z, collapse at σ² ≥ λ_1."""
    config = config or PPCA2DConfig.for_preset()
    if len(config.eigenvalues) != 2 or not config.eigenvalues[0] > config.eigenvalues[1] > 0:
        raise ValueError(f"need two eigenvalues λ_1 > λ_2 > 0, got {config.eigenvalues}")
    angle = np.radians(config.angle_degrees)
    basis = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    covariance = (basis * np.asarray(config.eigenvalues)) @ basis.T
    x = recoloured_gaussian(config.n, covariance, np.asarray(config.mean), seed=config.seed)
    spectrum = ppca.data_spectrum(x)
    # eigenvectors have no sign; show each with a non-negative first coordinate, as by hand
    signs = np.where(spectrum.eigenvectors[0] < 0, -1.0, 1.0)
    spectrum = dataclasses.replace(spectrum, eigenvectors=spectrum.eigenvectors * signs)
    along = (x - spectrum.mean) @ spectrum.eigenvectors[:, 0]
    point_index = int(np.argmax(along))
    sigma2_mle = ppca.sigma2_mle(spectrum, 1)
    grid = np.geomspace(config.sweep_min, config.sweep_max, config.sweep_size)
    sweep = [ppca_2d_state(spectrum, x[point_index], s) for s in grid]
    return PPCA2DResult(
        x=x,
        spectrum=spectrum,
        point_index=point_index,
        sigma2_mle=sigma2_mle,
        mle=ppca_2d_state(spectrum, x[point_index], sigma2_mle),
        fixed=tuple(ppca_2d_state(spectrum, x[point_index], s) for s in config.sigma2_values),
        sweep_sigma2=grid,
        sweep_posterior_mean=np.array([s.posterior_mean for s in sweep]),
        sweep_posterior_sd=np.sqrt([s.posterior_variance for s in sweep]),
        radius=config.radius,
    )


# --------------------------------------------------------------------------------------------
# pPCA: the landscape around a collapsed stationary point
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PPCALandscapeConfig(ExperimentConfig):
    """Synthetic data with a known spectrum: a covariance with these eigenvalues.

    The stationary point has q = 2 columns: u_1 √(λ_1 − σ²) and a zero column. The zero column
    is moved to ε u_2 + η u_3 (both eigenvectors unused), for each σ² in ``sigma2_values``.
    """

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {"fast": {"grid_size": 21}}
    # Measured on the book's 2-core CPU (see lincollapse list).
    COSTS: ClassVar[dict[str, str]] = {"fast": "< 1 s", "book": "≈ 1 s", "paper": "≈ 1 s (as book)"}
    eigenvalues: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    sigma2_values: tuple[float, ...] = (1.5, 2.5)
    extent: float = 1.0
    grid_size: int = 61
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class LandscapeResult:
    """Average log-likelihood around a collapsed stationary point, exact and to second order.

    Attributes
    ----------
    epsilon : ndarray of shape (g,)
        Coefficient of u_2 in the zero column (first axis of the grids).
    eta : ndarray of shape (g,)
        Coefficient of u_3 in the zero column (second axis).
    sigma2_values : ndarray of shape (k,)
    eigenvalues : ndarray of shape (d,)
        Spectrum of the synthetic covariance (λ_2 and λ_3 are the ones probed).
    exact : ndarray of shape (k, g, g)
        Change of the average log-likelihood (ppca-loglik) from the stationary point.
    predicted : ndarray of shape (k, g, g)
        Second-order prediction (ppca-perturbation) divided by n:
        ½ [ε² (λ_2 − σ²) + η² (λ_3 − σ²)] / σ⁴.
    kind : tuple of str, length k
        ``"saddle"`` if some probed λ exceeds σ², else ``"local maximum"``.
    """

    epsilon: np.ndarray
    eta: np.ndarray
    sigma2_values: np.ndarray
    eigenvalues: np.ndarray
    exact: np.ndarray
    predicted: np.ndarray
    kind: tuple[str, ...]


@figure(
    "ppca-landscape",
    chapter="ppca",
    plot="lincollapse.plotting.linear:plot_ppca_landscape",
    config=PPCALandscapeConfig,
)
def ppca_landscape(config: PPCALandscapeConfig | None = None) -> LandscapeResult:
    """pPCA log-likelihood around a zero column: a saddle when σ² < λ_i, a maximum when σ² > λ_i."""
    config = config or PPCALandscapeConfig.for_preset()
    eigenvalues = np.asarray(config.eigenvalues, dtype=np.float64)
    d = eigenvalues.size
    basis, _ = np.linalg.qr(np.random.default_rng(config.seed).normal(size=(d, d)))
    spectrum = ppca.spectrum_from_covariance((basis * eigenvalues) @ basis.T, n=1)
    epsilon = np.linspace(-config.extent, config.extent, config.grid_size)
    eta = epsilon.copy()
    exact, predicted, kinds = [], [], []
    for sigma2 in config.sigma2_values:
        W = ppca.stationary_point(spectrum, [0, None], sigma2)
        base = ppca.average_log_likelihood(spectrum, W, sigma2)
        grid = np.empty((epsilon.size, eta.size))
        for a, e in enumerate(epsilon):
            for b, h in enumerate(eta):
                moved = W.copy()
                moved[:, 1] = e * spectrum.eigenvectors[:, 1] + h * spectrum.eigenvectors[:, 2]
                grid[a, b] = ppca.average_log_likelihood(spectrum, moved, sigma2) - base
        exact.append(grid)
        predicted.append(
            ppca.perturbation_change(spectrum.eigenvalues[1], sigma2, epsilon)[:, None]
            + ppca.perturbation_change(spectrum.eigenvalues[2], sigma2, eta)[None, :]
        )
        kinds.append("saddle" if spectrum.eigenvalues[1] > sigma2 else "local maximum")
    return LandscapeResult(
        epsilon=epsilon,
        eta=eta,
        sigma2_values=np.asarray(config.sigma2_values, dtype=np.float64),
        eigenvalues=spectrum.eigenvalues,
        exact=np.asarray(exact),
        predicted=np.asarray(predicted),
        kind=tuple(kinds),
    )


# --------------------------------------------------------------------------------------------
# pPCA: collapsed columns against σ² on MNIST
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CollapsedColumnsConfig(ExperimentConfig):
    """Count #{j ≤ q : λ_j ≤ σ²} on a σ² grid; check a few σ² by maximising over W."""

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {**FAST_MNIST, "q": 40, "grid_size": 25, "check_steps": 60},
        "paper": {"check_steps": 1000},
    }
    # Measured on the book's 2-core CPU (see lincollapse list).
    COSTS: ClassVar[dict[str, str]] = {
        "fast": "≈ 1 s (13 s with torch start-up)",
        "book": "≈ 5 s",
        "paper": "≈ 5 s",
    }
    n: int = 1000
    seed: int = 0
    q: int = 200
    sigma2_min: float = 1e-4
    sigma2_max: float = 10.0
    grid_size: int = 61
    check_sigma2: tuple[float, ...] = (1.0, 0.1, 0.01)
    check_steps: int = 300
    column_tolerance: float = 1e-3
    train_seed: int = 0


@dataclasses.dataclass(frozen=True)
class CollapsedColumnsResult:
    """Collapsed columns of the fixed-σ² pPCA maximiser.

    Attributes
    ----------
    sigma2 : ndarray of shape (m,)
        Log-spaced grid.
    collapsed : ndarray of shape (m,), int
        #{j ≤ q : λ_j ≤ σ²} from the eigenvalues.
    q : int
    check_sigma2 : ndarray of shape (k,)
    check_predicted : ndarray of shape (k,), int
        The count at those σ².
    check_trained : ndarray of shape (k,), int
        Singular values of W below ``column_tolerance`` after maximising the log-likelihood over
        W from a random start with σ² fixed (singular values, because the likelihood cannot tell
        W from WR).
    check_singular_values : ndarray of shape (k, q)
        Those singular values, descending.
    check_gap : ndarray of shape (k,)
        Maximum minus reached average log-likelihood (nats per image).
    eigenvalues : ndarray of shape (d,)
    """

    sigma2: np.ndarray
    collapsed: np.ndarray
    q: int
    check_sigma2: np.ndarray
    check_predicted: np.ndarray
    check_trained: np.ndarray
    check_singular_values: np.ndarray
    check_gap: np.ndarray
    eigenvalues: np.ndarray


def maximise_fixed_sigma2(
    spectrum: ppca.DataSpectrum, q: int, sigma2: float, *, steps: int, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Maximise the pPCA log-likelihood over W (σ² fixed) with L-BFGS from a random start.

    Works in the eigenbasis of S (an orthogonal change of coordinates) so that each step costs
    O(d q²). Returns W in pixel coordinates, shape (d, q), and its average log-likelihood.
    """
    eigenvalues = torch.as_tensor(spectrum.eigenvalues)
    d = spectrum.d
    generator = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(torch.randn(d, q, generator=generator, dtype=torch.float64) * 0.01)
    log_sigma2 = float(np.log(sigma2))

    def log_likelihood() -> torch.Tensor:  # (ppca-loglik), S = diag(λ)
        M = gaussian.m_matrix(W, sigma2)
        chol = torch.linalg.cholesky(M)
        log_det_M = 2.0 * torch.log(chol.diagonal()).sum()
        projected = torch.cholesky_solve((W.T * eigenvalues) @ W, chol).diagonal().sum()
        return -0.5 * (
            d * gaussian.LOG_2PI
            + (d - q) * log_sigma2
            + log_det_M
            + (eigenvalues.sum() - projected) / sigma2
        )

    if q and steps:
        maximise(
            log_likelihood,
            [W],
            steps=steps,
            optimiser="lbfgs",
            record_every=steps,
            name=f"pPCA σ²={sigma2:g}",
        )
    W_pixels = spectrum.eigenvectors @ W.detach().numpy()
    return W_pixels, ppca.average_log_likelihood(spectrum, W_pixels, sigma2)


@figure(
    "ppca-collapsed-vs-sigma2",
    chapter="ppca",
    plot="lincollapse.plotting.linear:plot_collapsed_columns",
    config=CollapsedColumnsConfig,
)
def ppca_collapsed_columns(config: CollapsedColumnsConfig | None = None) -> CollapsedColumnsResult:
    """Collapsed columns of fixed-σ² pPCA on MNIST against σ², with numerical checks."""
    config = config or CollapsedColumnsConfig.for_preset()
    _, spectrum = mnist_with_spectrum(config.n, config.seed)
    grid = np.geomspace(config.sigma2_min, config.sigma2_max, config.grid_size)
    counts = np.array([ppca.collapsed_column_count(spectrum, config.q, s) for s in grid])
    predicted, trained, singular, gaps = [], [], [], []
    for sigma2 in config.check_sigma2:
        W, reached = maximise_fixed_sigma2(
            spectrum, config.q, sigma2, steps=config.check_steps, seed=config.train_seed
        )
        best = ppca.average_log_likelihood(
            spectrum, ppca.fixed_sigma2_maximiser(spectrum, config.q, sigma2), sigma2
        )
        values = np.linalg.svd(W, compute_uv=False)
        predicted.append(ppca.collapsed_column_count(spectrum, config.q, sigma2))
        trained.append(int(np.count_nonzero(values < config.column_tolerance)))
        singular.append(values)
        gaps.append(best - reached)
    return CollapsedColumnsResult(
        sigma2=grid,
        collapsed=counts,
        q=config.q,
        check_sigma2=np.asarray(config.check_sigma2, dtype=np.float64),
        check_predicted=np.asarray(predicted),
        check_trained=np.asarray(trained),
        check_singular_values=np.asarray(singular).reshape(len(config.check_sigma2), config.q),
        check_gap=np.asarray(gaps),
        eigenvalues=spectrum.eigenvalues,
    )
