"""Experiments of the linear chapters: *Posterior collapse*, *Probabilistic PCA*, *The linear VAE*.

One function per figure, each returning a dataclass of data (plotting lives in
:mod:`lincollapse.plotting.linear`). Every configuration is a frozen dataclass whose defaults are
the ``book`` preset; ``fast`` shrinks data and training to seconds for CI; ``paper`` uses the
paper's optimiser (Adam, lr 1e-3, full batch) where training is involved.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import numpy as np
import torch

from lincollapse import collapse, linear_vae, ppca
from lincollapse.data import load_mnist
from lincollapse.experiments import figure, linear_baselines
from lincollapse.presets import READER, ExperimentConfig
from lincollapse.reader import shipped_or_compute
from lincollapse.training import maximise

_FAST_DATA = {"n": 300}


@functools.lru_cache(maxsize=4)
def _mnist_spectrum(n: int, seed: int) -> tuple[np.ndarray, ppca.DataSpectrum]:
    """Images and their spectrum, cached: several figures of a chapter share the same data."""
    images = load_mnist(n, seed=seed).images
    return images, ppca.data_spectrum(images)


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
        "fast": {**_FAST_DATA, "q": 40, "grid_size": 25, "check_steps": 60},
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
    identity = torch.eye(q, dtype=torch.float64)
    log_sigma2 = float(np.log(sigma2))

    def log_likelihood() -> torch.Tensor:  # (ppca-loglik), S = diag(λ)
        M = W.T @ W + sigma2 * identity
        chol = torch.linalg.cholesky(M)
        log_det_M = 2.0 * torch.log(chol.diagonal()).sum()
        projected = torch.cholesky_solve((W.T * eigenvalues) @ W, chol).diagonal().sum()
        return -0.5 * (
            d * ppca.LOG_2PI + (d - q) * log_sigma2 + log_det_M
            + (eigenvalues.sum() - projected) / sigma2
        )  # fmt: skip

    if q and steps:
        maximise(log_likelihood, [W], steps=steps, optimiser="lbfgs", record_every=steps,
                 name=f"pPCA σ²={sigma2:g}")  # fmt: skip
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
    _, spectrum = _mnist_spectrum(config.n, config.seed)
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


# --------------------------------------------------------------------------------------------
# Linear VAE: likelihood against latent size
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _ascend(n: int, seed: int, q: int, options: tuple[tuple[str, Any], ...]):
    """:func:`linear_vae.ascend_elbo` on the chapter's data, cached: the Gram figure's run is
    one of the likelihood figure's (same data, q and options), trained once per kernel."""
    images, _ = _mnist_spectrum(n, seed)
    return linear_vae.ascend_elbo(images, q, **dict(options))


class _AscentOptions:
    """Mixin of the two configurations trained with :func:`linear_vae.ascend_elbo`."""

    def ascent_options(self) -> tuple[tuple[str, Any], ...]:
        return (
            ("encoder", self.encoder), ("optimiser", self.optimiser), ("steps", self.steps),
            ("lr", self.lr), ("tolerance", self.tolerance), ("record_every", self.record_every),
            ("seed", self.train_seed), ("block", self.block),
        )  # fmt: skip


_ADAM_PAPER = {
    "encoder": "learned", "optimiser": "adam", "steps": 12_000, "lr": 1e-3, "tolerance": None,
    "record_every": 100,
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class LikelihoodVsLatentSizeConfig(ExperimentConfig, _AscentOptions):
    """Train one linear VAE per latent size from a random start; compare with exact pPCA.

    ``book``: :func:`lincollapse.linear_vae.ascend_elbo` — L-BFGS on ELBO*(W, σ²), the encoder
    in closed form, no eigendecomposition or rotation — for q ∈ {0, 50, …, 300} on 1000 images,
    until a window of ``record_every`` steps gains less than ``tolerance`` nats per image (at
    most ``steps``). ``paper``: Adam, lr 1e-3, 12,000 full-batch steps per q, every parameter
    learned (the official notebook's settings). ``fast``: 300 images, q ∈ {0, 20, 40}.
    ``baselines``: the preset of the shipped joint-training runs to attach
    (:mod:`lincollapse.experiments.linear_baselines`), when they match the data and latent
    sizes; ``None`` for none.
    """

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {
            **_FAST_DATA, "latent_sizes": (0, 20, 40), "steps": 300, "reference_q": 20,
            "block": 10, "baselines": None,
        },
        "paper": _ADAM_PAPER,
        "reader": {},  # the book's runs, read from results/reader/ (lincollapse.reader)
    }  # fmt: skip
    # Measured on the book's 2-core CPU (see lincollapse list).
    COSTS: ClassVar[dict[str, str]] = {
        "fast": "≈ 2 s",
        "book": "≈ 2.5 min of CPU time (L-BFGS on ELBO*, one thread)",
        "paper": "≈ 30 min of CPU time (projected from the shipped Adam runs)",
        "reader": "< 1 s (the book's runs, shipped in results/reader/)",
    }
    n: int = 1000
    seed: int = 0
    latent_sizes: tuple[int, ...] = (0, 50, 100, 150, 200, 250, 300)
    encoder: str = "optimal"
    optimiser: str = "lbfgs"
    steps: int = 3000
    lr: float = 1e-3
    tolerance: float | None = 3e-4
    record_every: int = 25
    block: int = 30
    reference_q: int = 50
    train_seed: int = 0
    baselines: str | None = "book"


@dataclasses.dataclass(frozen=True)
class LikelihoodCurve:
    """Exact pPCA optimum, trained linear-VAE ELBO and fixed-σ² pPCA, per latent size.

    Attributes
    ----------
    latent_sizes : ndarray of shape (k,)
    ppca_optimum : ndarray of shape (k,)
        ℓ*(q), equation (ppca-max-loglik), nats per image.
    elbo : ndarray of shape (k,)
        Final analytic ELBO of the linear VAE trained by :func:`linear_vae.ascend_elbo`.
    fixed_sigma2_loglik : ndarray of shape (k,)
        Average log-likelihood of pPCA with σ² = σ²_MLE(reference_q) and the fixed-σ²
        maximiser as W (columns with λ_j ≤ σ² zero).
    fixed_sigma2 : float
    reference_q : int
    active_columns : ndarray of shape (k,)
        #{j ≤ q : λ_j > fixed σ²}.
    seconds, cpu_seconds, steps, evaluations : ndarray of shape (k,)
        Training cost per latent size (wall time, process CPU time).
    gram_ratio : ndarray of shape (k,)
        Off-diagonal ratio of the leading Gram block of the trained W.
    method : str
        Key of :data:`linear_baselines.LABELS` for the trainer used here.
    baselines : dict of str to BaselineRuns
        The shipped joint-training runs, when attached (else empty).
    baseline_provenance : str
        Where they come from, or why they are missing.
    """

    latent_sizes: np.ndarray
    ppca_optimum: np.ndarray
    elbo: np.ndarray
    fixed_sigma2_loglik: np.ndarray
    fixed_sigma2: float
    reference_q: int
    active_columns: np.ndarray
    seconds: np.ndarray
    cpu_seconds: np.ndarray
    steps: np.ndarray
    evaluations: np.ndarray
    gram_ratio: np.ndarray
    method: str
    baselines: dict[str, linear_baselines.BaselineRuns]
    baseline_provenance: str

    @property
    def gap(self) -> np.ndarray:
        """ℓ*(q) − ELBO, nats per image."""
        return self.ppca_optimum - self.elbo

    def baseline_gap(self, method: str) -> np.ndarray:
        """ℓ*(q) − final ELBO of a shipped method, per latent size."""
        return self.ppca_optimum - self.baselines[method].elbo

    def baseline_summary(self) -> str:
        """One sentence per shipped method: steps, CPU time and the range of its final gaps."""
        if not self.baselines:
            return f"The shipped joint-training runs are not shown ({self.baseline_provenance})."
        used = self.latent_sizes > 0  # at q = 0 only σ² is learned
        parts = []
        for name, base in self.baselines.items():
            gap = (self.ppca_optimum - base.elbo)[used]
            parts.append(
                f"{linear_baselines.LABELS[name]}, after {int(np.nanmax(base.steps)):,} steps "
                f"at each of the {used.sum()} latent sizes q > 0 "
                f"({np.nansum(base.cpu_seconds[used]) / 60:.0f} min of CPU time in all), ends "
                f"between {_nats(gap.min())} and {_nats(gap.max())} nats per image below ℓ*(q)"
            )
        return "; ".join(parts) + "."

    def table(self) -> str:
        """Plain-text table: the curve, then each method's gap and cost per latent size."""
        lines = [
            f"{'q':>4} {'l*(q)':>11} {'fixed-σ² pPCA':>14}   "
            f"{'method':<14} {'ELBO':>11} {'gap':>9} {'steps':>6} {'CPU s':>8} {'Gram ratio':>10}"
        ]
        runs = {self.method: (self.elbo, self.steps, self.cpu_seconds, self.gram_ratio)}
        for name, base in self.baselines.items():
            runs[name] = (base.elbo, base.steps, base.cpu_seconds, base.gram_ratio)
        for j, q in enumerate(self.latent_sizes):
            for i, (name, (elbo, steps, cpu, ratio)) in enumerate(runs.items()):
                head = (
                    f"{q:>4d} {self.ppca_optimum[j]:>11.4f} {self.fixed_sigma2_loglik[j]:>14.4f}"
                    if i == 0 else " " * 31
                )  # fmt: skip
                lines.append(
                    f"{head}   {name:<14} {elbo[j]:>11.4f} {self.ppca_optimum[j] - elbo[j]:>9.2e} "
                    f"{int(steps[j]):>6d} {cpu[j]:>8.1f} {ratio[j]:>10.3f}"
                )
        lines.append(
            f"total CPU time of {self.method}: {self.cpu_seconds.sum():.1f} s "
            f"(wall {self.seconds.sum():.1f} s)"
        )
        if self.baselines:
            lines.append(f"{', '.join(self.baselines)}: {self.baseline_provenance}")
        return "\n".join(lines)


def _nats(value: float) -> str:
    """A gap for prose: two significant digits, no exponent above 10."""
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"


def _method(encoder: str, optimiser: str) -> str:
    if encoder == "optimal":
        return "profiled_lbfgs" if optimiser == "lbfgs" else "profiled_adam"
    return "joint_lbfgs" if optimiser == "lbfgs" else "adam"


def _baselines(preset: str, n: int, seed: int, latent_sizes) -> tuple[dict, str]:
    """The shipped runs of ``preset`` if they were made on these data for these latent sizes."""
    config = linear_baselines.LinearBaselinesConfig.for_preset(preset)
    if (config.n, config.seed) != (n, seed) or not set(latent_sizes) <= set(config.latent_sizes):
        return {}, "the shipped runs are for other data or latent sizes"
    runs, provenance = linear_baselines.load_baselines(config)
    if runs is None:
        return {}, provenance
    index = [list(config.latent_sizes).index(q) for q in latent_sizes]
    return {m: _select(r, index) for m, r in runs.items()}, provenance


def _select(runs: linear_baselines.BaselineRuns, index: list[int]) -> linear_baselines.BaselineRuns:
    fields = ("latent_sizes", *linear_baselines.SUMMARY_FIELDS)
    return dataclasses.replace(runs, **{f: getattr(runs, f)[index] for f in fields})


#: The code that trains the likelihood figure's runs (fingerprint of its results/reader/ entry).
COMPUTING_MODULES = ("lincollapse.linear_vae", "lincollapse.training")


@dataclasses.dataclass(frozen=True)
class TrainedLatentSizes:
    """What :func:`likelihood_vs_latent_size` trains: per latent size, the final ELBO and the
    cost and Gram ratio of :func:`linear_vae.ascend_elbo` (the rest is closed form)."""

    elbo: np.ndarray
    seconds: np.ndarray
    cpu_seconds: np.ndarray
    steps: np.ndarray
    evaluations: np.ndarray
    gram_ratio: np.ndarray


def _train_latent_sizes(config: LikelihoodVsLatentSizeConfig) -> TrainedLatentSizes:
    runs = [_ascend(config.n, config.seed, q, config.ascent_options()) for q in config.latent_sizes]
    return TrainedLatentSizes(*(
        np.asarray([getattr(run, name) for run in runs])
        for name in ("elbo", "seconds", "cpu_seconds", "steps", "evaluations", "gram_ratio")
    ))  # fmt: skip


@figure(
    "likelihood-vs-latent-size",
    chapter="linear_vae",
    plot="lincollapse.plotting.linear:plot_likelihood_vs_latent_size",
    config=LikelihoodVsLatentSizeConfig,
    paper_figure="log-likelihood vs latent size (as in the public course-report reproduction)",
)
def likelihood_vs_latent_size(
    config: LikelihoodVsLatentSizeConfig | None = None,
) -> LikelihoodCurve:
    """ELBO trained from a random start against the exact pPCA optimum and fixed-σ² pPCA."""
    config = config or LikelihoodVsLatentSizeConfig.for_preset()
    _, spectrum = _mnist_spectrum(config.n, config.seed)
    fixed_sigma2 = ppca.sigma2_mle(spectrum, config.reference_q)
    trained, provenance = shipped_or_compute(
        config, _train_latent_sizes, TrainedLatentSizes, COMPUTING_MODULES
    )
    if config.preset == READER:
        print("runs:", provenance)
    optimum, fixed, active = (np.asarray(c) for c in zip(*[
        (ppca.max_log_likelihood(spectrum, q),
         ppca.average_log_likelihood(
             spectrum, ppca.fixed_sigma2_maximiser(spectrum, q, fixed_sigma2), fixed_sigma2),
         q - ppca.collapsed_column_count(spectrum, q, fixed_sigma2))
        for q in config.latent_sizes
    ], strict=True))  # fmt: skip
    elbo, seconds, cpu, steps = trained.elbo, trained.seconds, trained.cpu_seconds, trained.steps
    evaluations, ratio = trained.evaluations, trained.gram_ratio
    baselines, provenance = (
        _baselines(config.baselines, config.n, config.seed, config.latent_sizes)
        if config.baselines
        else ({}, "not requested")
    )
    return LikelihoodCurve(
        latent_sizes=np.asarray(config.latent_sizes), ppca_optimum=optimum, elbo=elbo,
        fixed_sigma2_loglik=fixed, fixed_sigma2=fixed_sigma2, reference_q=config.reference_q,
        active_columns=active, seconds=seconds, cpu_seconds=cpu, steps=steps,
        evaluations=evaluations, gram_ratio=ratio,
        method=_method(config.encoder, config.optimiser), baselines=baselines,
        baseline_provenance=provenance,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Linear VAE: Gram matrices
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GramMatricesConfig(ExperimentConfig, _AscentOptions):
    """Gram matrix WᵀW (leading ``block``) of a linear VAE trained from a random start.

    The training is the likelihood figure's at q = ``q`` (same options: the run is shared).
    """

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {**_FAST_DATA, "q": 20, "block": 10, "steps": 300, "baselines": None},
        "paper": _ADAM_PAPER,
        "reader": {},  # the book's run, read from results/reader/ (lincollapse.reader)
    }
    # Measured on the book's 2-core CPU (see lincollapse list).
    COSTS: ClassVar[dict[str, str]] = {
        "fast": "≈ 1 s",
        "book": "≈ 20 s of CPU time (none when the likelihood figure ran first)",
        "reader": "< 1 s (the book's run, shipped in results/reader/)",
        "paper": "≈ 6 min of CPU time (projected)",
    }
    n: int = 1000
    seed: int = 0
    q: int = 200
    block: int = 30
    encoder: str = "optimal"
    optimiser: str = "lbfgs"
    steps: int = 3000
    lr: float = 1e-3
    tolerance: float | None = 3e-4
    record_every: int = 25
    train_seed: int = 0
    rotation_seed: int = 1
    baselines: str | None = "book"


@dataclasses.dataclass(frozen=True)
class GramRun:
    """One trained linear VAE seen through its Gram matrix.

    Attributes
    ----------
    label : str
    gram : ndarray of shape (block, block)
        Leading block of WᵀW (latents by decreasing ‖w_j‖).
    trace : dict of str to ndarray
        ``steps``, ``cpu_seconds``, ``elbo``, ``gram_ratio`` recorded during training.
    matched, cos2 : ndarray of shape (q,)
        For each column (by decreasing norm), the index of the closest principal direction
        and the squared cosine with it (:func:`linear_baselines.column_alignment`).
    """

    label: str
    gram: np.ndarray
    trace: dict[str, np.ndarray]
    matched: np.ndarray
    cos2: np.ndarray

    @property
    def ratio(self) -> float:
        """Off-diagonal ratio of :attr:`gram`."""
        return linear_vae.off_diagonal_ratio(self.gram)

    @property
    def cpu_seconds(self) -> float:
        """CPU time from the first recorded evaluation to the last (set-up and a process's
        one-off start-up costs excluded)."""
        cpu = self.trace["cpu_seconds"]
        return float(cpu[-1] - cpu[0])


@dataclasses.dataclass(frozen=True)
class GramResult:
    """Gram matrices of trained linear VAEs and of pPCA maximisers, and how training got there.

    Attributes
    ----------
    runs : dict of str to GramRun
        The chapter's trainer first (key :attr:`method`), then the shipped joint-training runs.
    ppca_rotated : ndarray of shape (block, block)
        (W_MLE R)ᵀ(W_MLE R) for a random orthogonal R: as likely under pPCA as W_MLE.
    ppca_mle : ndarray of shape (block, block)
        W_MLEᵀ W_MLE (R = I): diagonal by construction.
    off_diagonal_ratio : dict of str to float
        :func:`linear_vae.off_diagonal_ratio` of each leading block: ``"vae"`` (the chapter's
        trainer), ``"ppca_rotated"``, ``"ppca_mle"``.
    optimum : float
        ℓ*(q), to turn recorded ELBOs into gaps.
    sigma2_mle : float
        σ²_MLE(q), the optimum's noise variance.
    eigenvalues : ndarray of shape (d,)
    method : str
    baseline_provenance : str
    q, block : int
    """

    runs: dict[str, GramRun]
    ppca_rotated: np.ndarray
    ppca_mle: np.ndarray
    off_diagonal_ratio: dict[str, float]
    optimum: float
    sigma2_mle: float
    eigenvalues: np.ndarray
    method: str
    baseline_provenance: str
    q: int
    block: int

    @property
    def vae(self) -> np.ndarray:
        """Leading Gram block of the chapter's trainer."""
        return self.runs[self.method].gram

    @property
    def elbo_gap(self) -> float:
        """ℓ*(q) − final ELBO of the chapter's trainer."""
        return self.optimum - float(self.runs[self.method].trace["elbo"][-1])

    def spacing(self, run: str) -> np.ndarray:
        """Relative spacing of the eigenvalue matched by each column of ``run``."""
        return linear_baselines.relative_spacing(self.eigenvalues, self.runs[run].matched)

    def misalignment(self, run: str, spacing: float) -> tuple[float, float]:
        """Median 1 − cos² over the columns of ``run`` whose matched eigenvalue lies within
        ``spacing`` (relative) of a neighbour, and over the others (NaN when there are none)."""
        near = self.spacing(run) < spacing
        miss = 1.0 - self.runs[run].cos2
        return (
            float(np.median(miss[near])) if near.any() else float("nan"),
            float(np.median(miss[~near])) if (~near).any() else float("nan"),
        )

    def alignment_summary(self, spacing: float) -> str:
        """Per run, :meth:`misalignment` as one clause: near-tied columns, then the others."""
        parts = []
        for name, run in self.runs.items():
            near, far = self.misalignment(name, spacing)
            parts.append(f"{near:.2f} against {far:.2g} for {run.label}")
        return "; ".join(parts)

    def ratio_path(self, run: str) -> tuple[float, float, float]:
        """The Gram ratio of ``run`` at the random start, at its largest, and at the end."""
        ratio = self.runs[run].trace["gram_ratio"]
        return float(ratio[0]), float(ratio.max()), float(ratio[-1])

    def baseline_summary(self) -> str:
        """One clause per shipped joint-training run: steps, final gap and Gram ratio."""
        parts = [
            f"{run.label} ends, after {int(run.trace['steps'][-1]):,} steps, "
            f"{_nats(self.optimum - run.trace['elbo'][-1])} nats below ℓ* with a Gram ratio of "
            f"{run.ratio:.2g}"
            for name, run in self.runs.items()
            if name != self.method
        ]
        if not parts:
            return f"(The joint-training runs are not shown: {self.baseline_provenance}.)"
        return "; ".join(parts) + "."

    def sigma2_steps(self, run: str, within: float = 0.1) -> int | None:
        """First recorded step at which σ² of ``run`` is within ``within`` (relative) of
        σ²_MLE(q) and stays there; ``None`` if it never gets there."""
        trace = self.runs[run].trace
        close = np.abs(trace["sigma2"] / self.sigma2_mle - 1.0) <= within
        if not close[-1]:
            return None
        last_far = np.flatnonzero(~close)
        return int(trace["steps"][last_far[-1] + 1 if last_far.size else 0])

    def sigma2_summary(self, within: float = 0.1) -> str:
        """When each run's σ² settles within ``within`` of σ²_MLE(q) (:meth:`sigma2_steps`)."""
        parts = []
        for name, run in self.runs.items():
            step = self.sigma2_steps(name, within)
            when = (
                f"after {step:,} steps"
                if step is not None
                else f"not within its {int(run.trace['steps'][-1]):,} steps"
            )
            parts.append(f"{run.label} {when}")
        return "; ".join(parts)

    def summary(self) -> str:
        """Per run: final gap, Gram ratio, CPU time and the median misalignment of columns."""
        lines = []
        for name, run in self.runs.items():
            lines.append(
                f"{name:<15} {int(run.trace['steps'][-1]):>5} steps, "
                f"{run.cpu_seconds:6.0f} s CPU: gap "
                f"{self.optimum - run.trace['elbo'][-1]:.2e} nats, Gram ratio {run.ratio:.3f}, "
                f"median 1 − cos² of the {self.q} columns {np.median(1.0 - run.cos2):.2e}, "
                f"σ² {run.trace['sigma2'][-1]:.4g} (σ²_MLE {self.sigma2_mle:.4g})"
            )
        if len(self.runs) == 1:
            lines.append(f"joint-training runs not shown: {self.baseline_provenance}")
        else:
            lines.append(f"joint-training runs: {self.baseline_provenance}")
        return "\n".join(lines)


@figure(
    "gram-matrices",
    chapter="linear_vae",
    plot="lincollapse.plotting.linear:plot_gram_matrices",
    config=GramMatricesConfig,
)
@dataclasses.dataclass(frozen=True)
class TrainedGramRun:
    """What :func:`gram_matrices` trains: the decoder W, its leading Gram block, the trace."""

    W: np.ndarray
    gram: np.ndarray
    trace: dict[str, np.ndarray]


def _train_gram_run(config: GramMatricesConfig) -> TrainedGramRun:
    trained = _ascend(config.n, config.seed, config.q, config.ascent_options())
    trace = {f: np.asarray(getattr(trained.trace, f)) for f in linear_baselines.TRACE_FIELDS}
    return TrainedGramRun(trained.model.W.detach().numpy(), trained.gram(config.block), trace)


def gram_matrices(config: GramMatricesConfig | None = None) -> GramResult:
    """WᵀW of linear VAEs trained from a random start beside pPCA maximisers (any rotation)."""
    config = config or GramMatricesConfig.for_preset()
    _, spectrum = _mnist_spectrum(config.n, config.seed)
    trained, provenance = shipped_or_compute(
        config, _train_gram_run, TrainedGramRun, COMPUTING_MODULES
    )
    if config.preset == READER:
        print("run:", provenance)
    method = _method(config.encoder, config.optimiser)
    matched, cos2 = linear_baselines.column_alignment(trained.W, spectrum)
    runs = {method: GramRun(linear_baselines.LABELS.get(method, method),
                            trained.gram, dict(trained.trace), matched, cos2)}  # fmt: skip
    provenance = "not requested"
    if config.baselines:
        shipped, provenance = _baselines(config.baselines, config.n, config.seed, [config.q])
        base_config = linear_baselines.LinearBaselinesConfig.for_preset(config.baselines)
        if shipped and (base_config.gram_q, base_config.block) != (config.q, config.block):
            shipped, provenance = {}, "the shipped runs are for another q or block"
        for name, base in shipped.items():
            runs[name] = GramRun(base.label, base.gram, base.traces[config.q], base.matched,
                                 base.cos2)  # fmt: skip
    fit = ppca.fit(spectrum, config.q)
    rng = np.random.default_rng(config.rotation_seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(config.q, config.q)))
    b = config.block
    mle = linear_vae.leading_gram(fit.W, b)
    rotated = ((fit.W @ rotation).T @ (fit.W @ rotation))[:b, :b]  # in its own column order
    return GramResult(
        runs=runs, ppca_rotated=rotated, ppca_mle=mle,
        off_diagonal_ratio={
            "vae": runs[method].ratio,
            "ppca_rotated": linear_vae.off_diagonal_ratio(rotated),
            "ppca_mle": linear_vae.off_diagonal_ratio(mle),
        },
        optimum=float(fit.log_likelihood), sigma2_mle=float(fit.sigma2),
        eigenvalues=spectrum.eigenvalues, method=method,
        baseline_provenance=provenance, q=config.q, block=b,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Linear VAE: the ELBO gap along a rotation of the maximiser
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ElboGapConfig(ExperimentConfig):
    """Rotate latents 1 and 2 of W_MLE (q latents) by θ ∈ [0, π]."""

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {"fast": {**_FAST_DATA, "n_angles": 25}}
    # Measured on the book's 2-core CPU (see lincollapse list).
    COSTS: ClassVar[dict[str, str]] = {"fast": "< 1 s", "book": "≈ 5 s", "paper": "≈ 5 s (as book)"}
    n: int = 1000
    seed: int = 0
    q: int = 10
    n_angles: int = 181


@dataclasses.dataclass(frozen=True)
class ElboGapResult:
    """log p, ELBO* and their gap along W_MLE R(θ).

    Attributes
    ----------
    theta : ndarray of shape (m,)
        Rotation angle of latents 1 and 2, radians.
    log_likelihood : ndarray of shape (m,)
        Average log-likelihood (ppca-loglik): constant, = ℓ*(q).
    elbo : ndarray of shape (m,)
        Analytic ELBO (lvae-elbo) with the optimal encoder (lvae-optimal-encoder).
    gap_formula : ndarray of shape (m,)
        ½ (Σ log M_ii − log det M), equation (lvae-elbo-gap).
    optimum : float
        ℓ*(q).
    q : int
    """

    theta: np.ndarray
    log_likelihood: np.ndarray
    elbo: np.ndarray
    gap_formula: np.ndarray
    optimum: float
    q: int

    @property
    def gap(self) -> np.ndarray:
        """log p − ELBO along the path (equals ``gap_formula``)."""
        return self.log_likelihood - self.elbo


@figure(
    "elbo-gap",
    chapter="linear_vae",
    plot="lincollapse.plotting.linear:plot_elbo_gap",
    config=ElboGapConfig,
)
def elbo_gap_along_rotation(config: ElboGapConfig | None = None) -> ElboGapResult:
    """ELBO with the optimal encoder vs log-likelihood along rotations of the pPCA maximiser."""
    config = config or ElboGapConfig.for_preset()
    _, spectrum = _mnist_spectrum(config.n, config.seed)
    fit = ppca.fit(spectrum, config.q)
    theta = np.linspace(0.0, np.pi, config.n_angles)
    loglik, elbo, formula = [], [], []
    for angle in theta:
        rotation = np.eye(config.q)
        c, s = np.cos(angle), np.sin(angle)
        rotation[:2, :2] = [[c, -s], [s, c]]
        W = fit.W @ rotation
        V, D = linear_vae.optimal_encoder(W, fit.sigma2)
        loglik.append(ppca.average_log_likelihood(spectrum, W, fit.sigma2))
        elbo.append(linear_vae.elbo_terms(spectrum, W, V, D, fit.sigma2).elbo)
        formula.append(linear_vae.elbo_gap(W, fit.sigma2))
    return ElboGapResult(
        theta=theta,
        log_likelihood=np.asarray(loglik),
        elbo=np.asarray(elbo),
        gap_formula=np.asarray(formula),
        optimum=fit.log_likelihood,
        q=config.q,
    )


# --------------------------------------------------------------------------------------------
# Collapse metric of trained linear VAEs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CollapseMetricConfig(ExperimentConfig):
    """Linear VAEs trained with σ² fixed at each value; collapsed fraction over ε ∈ [0, 2]."""

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {**_FAST_DATA, "q": 40, "steps": 100, "n_epsilons": 41},
        "paper": {"optimiser": "adam", "steps": 12_000},
    }
    # Measured on the book's 2-core CPU (see lincollapse list).
    COSTS: ClassVar[dict[str, str]] = {
        "fast": "≈ 1 s",
        "book": "≈ 12 s",
        "paper": "≈ 11 min on 2 CPU cores (projected)",
    }
    n: int = 1000
    seed: int = 0
    q: int = 200
    sigma2_values: tuple[float, ...] = (0.1, 0.03)
    optimiser: str = "lbfgs"
    steps: int = 400
    lr: float = 1e-3
    delta: float = 0.01
    epsilon_max: float = 2.0
    n_epsilons: int = 201
    train_seed: int = 0


@dataclasses.dataclass(frozen=True)
class CollapseMetricResult:
    """(ε, δ)-collapsed fraction of trained linear VAEs and the linear prediction.

    Attributes
    ----------
    epsilons : ndarray of shape (m,)
    sigma2_values : ndarray of shape (k,)
    fractions : ndarray of shape (k, m)
        Collapsed fraction (collapse-metric) of the q latents at each ε.
    predicted : ndarray of shape (k,)
        #{j ≤ q : λ_j ≤ σ²} / q.
    mean_kl : ndarray of shape (k, q)
        Average KL_i(x) over the images per latent, sorted ascending.
    elbo_gap : ndarray of shape (k,)
        Best fixed-σ² log-likelihood minus the trained ELBO, nats per image.
    q : int
    delta : float
    """

    epsilons: np.ndarray
    sigma2_values: np.ndarray
    fractions: np.ndarray
    predicted: np.ndarray
    mean_kl: np.ndarray
    elbo_gap: np.ndarray
    q: int
    delta: float

    def fraction_at(self, epsilon: float) -> tuple[float, np.ndarray]:
        """Collapsed fractions at the first grid point ε' ≥ ``epsilon``, and that ε'.

        The metric is stored on the grid :attr:`epsilons`, so a request between grid points
        reads the next one up (0.05 for 0.01 on the ``fast`` preset's 41-point grid over
        [0, 2]); print the returned ε', not the requested one.

        Returns
        -------
        epsilon_used : float
        fractions : ndarray of shape (k,)
            One collapsed fraction per σ² in :attr:`sigma2_values`.
        """
        index = int(np.searchsorted(self.epsilons, epsilon))
        if index == self.epsilons.size:
            raise ValueError(
                f"ε = {epsilon:g} is above the largest ε of the grid, {self.epsilons[-1]:g}"
            )
        return float(self.epsilons[index]), self.fractions[:, index]


@figure(
    "collapse-metric",
    chapter="posterior_collapse",
    plot="lincollapse.plotting.linear:plot_collapse_metric",
    config=CollapseMetricConfig,
)
def collapse_metric(config: CollapseMetricConfig | None = None) -> CollapseMetricResult:
    """Collapsed fraction of trained linear VAEs (fixed σ²) vs ε, against #{λ_j ≤ σ²}/q."""
    config = config or CollapseMetricConfig.for_preset()
    images, spectrum = _mnist_spectrum(config.n, config.seed)
    epsilons = np.linspace(0.0, config.epsilon_max, config.n_epsilons)
    fractions, predicted, mean_kl, gaps = [], [], [], []
    for sigma2 in config.sigma2_values:
        trained = linear_vae.train_linear_vae(
            spectrum, config.q, optimiser=config.optimiser, steps=config.steps, lr=config.lr,
            seed=config.train_seed, learn_sigma2=False, sigma2_init=sigma2,
        )  # fmt: skip
        with torch.no_grad():
            means, variances = trained.model.encode(images)
        kl = collapse.gaussian_kl_per_dimension(means.numpy(), variances.numpy())
        fractions.append(collapse.collapsed_fraction(kl, epsilons, delta=config.delta))
        predicted.append(ppca.collapsed_column_count(spectrum, config.q, sigma2) / config.q)
        mean_kl.append(np.sort(kl.mean(axis=0)))
        gaps.append(trained.gap)
    return CollapseMetricResult(
        epsilons=epsilons,
        sigma2_values=np.asarray(config.sigma2_values, dtype=np.float64),
        fractions=np.asarray(fractions),
        predicted=np.asarray(predicted),
        mean_kl=np.asarray(mean_kl),
        elbo_gap=np.asarray(gaps),
        q=config.q,
        delta=config.delta,
    )
