"""Fixtures shared by every test module."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch

# Every eigendecomposition and singular value decomposition a trainer could reach.
DECOMPOSITIONS = (
    *(f"numpy.linalg.{name}" for name in ("eig", "eigh", "eigvals", "eigvalsh", "svd")),
    *(f"numpy.linalg._linalg.{name}" for name in ("eig", "eigh", "eigvals", "eigvalsh", "svd")),
    *(f"torch.linalg.{name}" for name in ("eig", "eigh", "eigvals", "eigvalsh", "svd", "svdvals")),
    "torch.svd",
    "torch.pca_lowrank",
    "torch.svd_lowrank",
    *(f"scipy.linalg.{name}" for name in ("eig", "eigh", "eigvals", "eigvalsh", "svd")),
)


class DecompositionCalled(AssertionError):
    """An eigendecomposition or SVD was called where training must not use one."""


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test: the problems are tiny, and CI runs two workers on two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_decompositions():
    """A context manager inside which every function of :data:`DECOMPOSITIONS` raises."""

    @contextlib.contextmanager
    def forbid():
        with contextlib.ExitStack() as stack:
            for target in DECOMPOSITIONS:
                with contextlib.suppress(AttributeError, ModuleNotFoundError):
                    stack.enter_context(
                        mock.patch(target, side_effect=DecompositionCalled(f"{target} called"))
                    )
            yield

    return forbid
