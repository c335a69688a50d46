"""Input checks that refuse bad arguments before any work, naming the argument and the fix.

Every public check of the package lives here: data matrices (:func:`check_data`,
:func:`check_training_data`), points (:func:`check_points`), noise variances
(:func:`check_sigma2`), KL weights (:func:`check_beta`), latent sizes (:func:`check_q`),
eigenvalues and loadings. Each raises ``ValueError``; the ``check_*`` functions that return a
value return it converted (a float, a float64 array) and never otherwise changed. The training
code calls them as one statement at the top of a function (``validation.check_steps(steps)``),
and :func:`lincollapse.results_cache.source_fingerprint` ignores such statements: adding a check
does not make cached or shipped results stale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = [
    "RankDeficientError",
    "check_beta",
    "check_choice",
    "check_covariance",
    "check_data",
    "check_dimensions",
    "check_eigenvalues",
    "check_finite_matrix",
    "check_loadings",
    "check_points",
    "check_positive",
    "check_positive_each",
    "check_q",
    "check_sigma2",
    "check_steps",
    "check_training_data",
    "check_vector",
    "check_weights",
]


class RankDeficientError(ValueError):
    """q is at or above the numerical rank of the sample covariance, so σ²_MLE would be 0."""


def check_steps(steps: Any, name: str = "steps") -> None:
    """``steps`` must be a whole number ≥ 0 (a Python or numpy integer, not a float or bool)."""
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, Integral) or steps < 0:
        raise ValueError(
            f"{name} must be a non-negative integer number of optimiser steps, got {steps!r}; "
            f"pass e.g. {name}=1000"
        )


def check_choice(value: Any, choices: Sequence[str], name: str) -> None:
    """``value`` must be one of ``choices`` (the error names them all)."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def check_positive(value: Any, name: str) -> None:
    """``value`` must be a real number (not a string, bool or array), finite and > 0.

    The rule of :func:`check_sigma2` and :func:`check_beta`, for a parameter named ``name``.
    """
    real = not isinstance(value, (str, bytes, bool, np.bool_)) and _is_real(value)
    infinite = real and float(value) == math.inf
    _positive_float(
        value if real else math.nan,
        f"{name} must be a finite positive number, got {name}={value!r}"
        + ("; a noise variance of inf would ignore the data" if infinite else ""),
    )


def check_positive_each(values: Any, name: str) -> None:
    """:func:`check_positive` for every element of a sequence."""
    for index, value in enumerate(values):
        check_positive(value, f"{name}[{index}]")


def check_training_data(x: Any, width: int, name: str = "x") -> None:
    """``x`` must be a real (n, ``width``) array, n ≥ 1, without NaN or infinite values.

    Refused up front so that a wrong width is not a matrix-shape error deep inside a batched
    product, and NaN in the data is not reported as a diverging training run.
    """
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    array = np.asarray(x)
    if array.dtype.kind == "c":
        raise ValueError(f"{name} is complex ({array.dtype}); pass real pixel values")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers, got an array of dtype {array.dtype}")
    if array.ndim != 2 or array.shape[0] < 1:
        raise ValueError(
            f"{name} must have shape (n, {width}) with n >= 1, got shape {array.shape}; "
            f"reshape images to (n, {width}) first"
        )
    if array.shape[1] != width:
        raise ValueError(
            f"{name} has {array.shape[1]} columns but the architecture expects "
            f"data_dim={width}; pass Architecture(data_dim={array.shape[1]}) or data of width "
            f"{width}"
        )
    bad = int(np.count_nonzero(~np.isfinite(array))) if array.dtype.kind == "f" else 0
    if bad:
        raise ValueError(
            f"{name} contains {bad} NaN or infinite values; remove or impute them before training"
        )


def check_finite_matrix(matrix: Any, name: str) -> None:
    """``matrix`` must be free of NaN and infinite values (its shape is checked by the caller)."""
    array = np.asarray(matrix)
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")


def _is_real(value: Any) -> bool:
    if isinstance(value, Real):
        return True
    if hasattr(value, "detach"):  # a torch tensor
        return value.numel() == 1 and not value.is_complex()
    array = np.asarray(value) if isinstance(value, np.ndarray) else None
    return array is not None and array.size == 1 and array.dtype.kind in "iuf"


def _positive_float(value: Any, message: str) -> float:
    """``value`` as a float if it is a finite number > 0 (not a string or bool), else raise."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise ValueError(f"{message} ({type(value).__name__})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0.0:
        raise ValueError(message)
    return number


def check_sigma2(sigma2: Any) -> float:
    """σ² as a float if it is a finite number > 0, else a ValueError saying why."""
    return _positive_float(
        sigma2,
        f"σ² must be a finite positive noise variance, got sigma2={sigma2!r}; pass a value > 0 "
        "(σ² = 0 makes the model's covariance singular)",
    )


def check_beta(beta: Any) -> float:
    """β as a float if it is a finite number > 0, else a ValueError saying why."""
    return _positive_float(
        beta,
        f"β must be a finite positive KL weight, got beta={beta!r}: β = 1 is the plain ELBO, "
        "β = 0 drops the KL term (an autoencoder with no prior and an unbounded encoder "
        "variance) and β < 0 rewards a large KL",
    )


def check_data(x: Any, name: str = "data") -> np.ndarray:
    """Validate a data matrix of shape (n, d): real, finite, 2-D, n ≥ 2, d ≥ 1; return float64."""
    if np.iscomplexobj(x):
        raise ValueError(f"{name} is complex; pass real values (e.g. x.real) explicitly")
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must have shape (n_samples, n_features), got shape {array.shape}; "
            "reshape images to (n, 784) first"
        )
    if array.shape[0] < 2:
        raise ValueError(
            f"{name} needs at least 2 rows to estimate a covariance, got {array.shape[0]}"
        )
    if array.shape[1] < 1:
        raise ValueError(f"{name} has no columns (shape {array.shape}); it needs d >= 1 features")
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(
            f"{name} contains {bad} NaN or infinite values; remove or impute them first"
        )
    return array


def check_points(x: Any, d: int | None = None, name: str = "x") -> None:
    """``x`` (a numpy array or torch tensor) must have shape (n, ``d``) and be finite.

    Points to evaluate a model at: unlike :func:`check_data`, one point (n = 1) is enough.
    """
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        want = f"(n, {d})" if d is not None else "(n, d)"
        raise ValueError(
            f"{name} must have shape {want}, got {tuple(x.shape)}; pass a batch of flattened "
            f"images (use {name}[None, :] for a single image)"
        )
    finite = bool(x.isfinite().all()) if hasattr(x, "isfinite") else bool(np.isfinite(x).all())
    if not finite:
        raise ValueError(f"{name} contains NaN or infinite values; remove or impute them first")


def check_eigenvalues(eigenvalues: Any) -> np.ndarray:
    """Eigenvalues λ_1 ≥ … ≥ λ_d of a covariance: non-empty, 1-D, finite, sorted descending.

    Returns them as float64, clipped at 0 (round-off can make a zero eigenvalue slightly
    negative).
    """
    array = np.asarray(eigenvalues, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"eigenvalues must be a non-empty 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("eigenvalues contain NaN or infinite values")
    if np.any(np.diff(array) > 1e-12 * max(1.0, float(np.abs(array).max()))):
        raise ValueError("eigenvalues must be sorted in descending order (λ_1 ≥ λ_2 ≥ …)")
    return np.clip(array, 0.0, None)


def check_q(q: Any, eigenvalues: np.ndarray, rank: int | None = None) -> int:
    """A latent dimension 0 ≤ q < d (d = ``eigenvalues.size``), returned as an int.

    With ``rank`` (the numerical rank of the covariance, when σ² is fitted) also q < rank,
    else :class:`RankDeficientError`: σ²_MLE would be 0.
    """
    if isinstance(q, bool) or not isinstance(q, (int, np.integer)):
        raise ValueError(f"q must be an integer latent dimension, got {q!r}")
    d = eigenvalues.shape[0]
    if q < 0:
        raise ValueError(f"q must be >= 0, got q={q}")
    if q >= d:
        raise ValueError(f"q must be < d={d} (pPCA needs at least one noise dimension), got q={q}")
    if rank is not None and q >= rank:
        raise RankDeficientError(
            f"q={q} is at or above the numerical rank r={rank} of the sample covariance; "
            f"σ²_MLE would be 0 — choose q < r or fix σ²"
        )
    return int(q)


def check_weights(W: Any, name: str = "W") -> np.ndarray:
    """A finite weight matrix of shape (d, q), any d and q; returned as float64."""
    array = np.asarray(W, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (d, q), got {array.shape}")
    check_finite_matrix(array, name)
    return array


def check_loadings(W: Any, d: int | None = None) -> np.ndarray:
    """Factor loadings W of shape (d, q), q < d, finite; returned as float64.

    ``d`` defaults to the number of rows of W (then only the shape (d, q) and q < d are
    checked).
    """
    array = np.asarray(W, dtype=np.float64)
    if d is None:
        d = check_weights(array).shape[0]
    if array.ndim != 2 or array.shape[0] != d:
        raise ValueError(
            f"W must have shape (d, q) = ({d}, q), got {array.shape}; use W.reshape(d, 0) for q = 0"
        )
    if array.shape[1] >= d:
        raise ValueError(f"W has q={array.shape[1]} columns; pPCA needs q < d={d}")
    check_finite_matrix(array, "W")
    return array


def check_dimensions(d: Any, q: Any, min_q: int = 0) -> tuple[int, int]:
    """Data and latent dimensions: integers with d ≥ 1 and ``min_q`` ≤ q < d; returned as ints."""
    if isinstance(d, bool) or isinstance(q, bool) or int(d) != d or int(q) != q:
        raise ValueError(f"d and q must be integers, got d={d!r}, q={q!r}")
    if d < 1 or q < min_q or q >= d:
        raise ValueError(f"need d >= 1 and {min_q} <= q < d, got d={d}, q={q}")
    return int(d), int(q)


def check_covariance(covariance: Any) -> np.ndarray:
    """A finite symmetric (d, d) covariance matrix, returned as float64."""
    array = np.asarray(covariance, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"covariance must be a square (d, d) matrix, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("covariance contains NaN or infinite values; check the data")
    if not np.allclose(array, array.T, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(array).max())):
        raise ValueError("covariance must be symmetric; pass (S + S.T) / 2")
    return array


def check_vector(vector: Any, d: int, name: str) -> np.ndarray:
    """A finite vector of shape (d,), returned as float64."""
    array = np.asarray(vector, dtype=np.float64)
    if array.shape != (d,):
        raise ValueError(f"{name} must have shape ({d},), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array
