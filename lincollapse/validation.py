"""Input checks that refuse bad arguments before any work, naming the argument and the fix.

Each function returns ``None`` or raises ``ValueError``; none changes a value. The training code
calls them as one statement at the top of a function (``validation.check_steps(steps)``), and
:func:`lincollapse.results_cache.source_fingerprint` ignores such statements: adding a check does
not make cached or shipped results stale.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np


def check_steps(steps: Any, name: str = "steps") -> None:
    """``steps`` must be a whole number ≥ 0 (a Python or numpy integer, not a float or bool)."""
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, Integral) or steps < 0:
        raise ValueError(
            f"{name} must be a non-negative integer number of optimiser steps, got {steps!r}; "
            f"pass e.g. {name}=1000"
        )


def check_positive(value: Any, name: str) -> None:
    """``value`` must be a real number (not a string or bool), finite and > 0."""
    if isinstance(value, (str, bytes, bool, np.bool_)) or not _is_real(value):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0.0):
        raise ValueError(
            f"{name} must be a finite positive number, got {name}={value!r}"
            + ("; a noise variance of inf would ignore the data" if number == math.inf else "")
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
