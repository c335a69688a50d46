"""Thread policy of the book build, the command line and the tests (README, *Threads*).

Two thread pools live in one process: numpy's and scipy's BLAS (OpenBLAS in the wheels) and
torch's intra-op pool (OpenMP, sized from ``MKL_NUM_THREADS``, else ``OMP_NUM_THREADS``, else
the core count). By default each takes every core, and OpenBLAS threads busy-wait: with a
second process on the machine (a book build beside a test run, or two pytest workers) the pools
compete with each other and with the kernel, and small numpy problems ran 5× slower (issue 16:
``ppca-collapsed-vs-sigma2`` 1.0 s with one thread against 5.0 s by default at load 4).

The policy:

- **BLAS: one thread everywhere** (``OPENBLAS_NUM_THREADS=1``). The package's numpy work is on
  matrices of at most 784 × 784, where a second thread gains little and costs most under load.
- **torch: every available core in the book build and the command line** (one process, one
  kernel at a time; the deep VAE's batched products use them), **one in the tests** (``make
  test`` runs two pytest workers on two cores; :func:`environment_for_tests`).
- Variables the user has set are kept: ``OMP_NUM_THREADS=1 make book`` runs torch on one thread.
  ``LINCOLLAPSE_THREAD_POLICY=off`` turns the policy off (what ``bench threads`` compares with).

The variables must be set before numpy and torch load their libraries: :func:`apply` runs at the
top of ``python -m lincollapse``, and the book build passes :func:`policy_environment` to its
kernels. This module imports neither numpy nor torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

POLICY_ENV_VAR = "LINCOLLAPSE_THREAD_POLICY"
BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS",)  # numpy's and scipy's BLAS
TORCH_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch's OpenMP pool and its MKL


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def policy_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """False when ``$LINCOLLAPSE_THREAD_POLICY`` is ``off`` (or ``0``, ``no``, ``false``)."""
    value = (os.environ if environ is None else environ).get(POLICY_ENV_VAR, "on")
    return value.strip().lower() not in ("off", "0", "no", "false")


def policy_environment(
    torch_threads: int | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables the policy adds to ``environ`` (default ``os.environ``); none it already has.

    ``torch_threads`` defaults to a value the user set in ``OMP_NUM_THREADS`` or
    ``MKL_NUM_THREADS``, else :func:`available_cores`.
    """
    environ = os.environ if environ is None else environ
    if not policy_enabled(environ):
        return {}
    user = next((environ[name] for name in TORCH_VARIABLES if environ.get(name, "").strip()), None)
    threads = str(torch_threads or (user.strip() if user else available_cores()))
    wanted = dict.fromkeys(BLAS_VARIABLES, "1") | dict.fromkeys(TORCH_VARIABLES, threads)
    return {name: value for name, value in wanted.items() if not environ.get(name, "").strip()}


def environment_for_tests(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`policy_environment` for the tests: torch on one thread too."""
    return policy_environment(1, environ)


def apply(torch_threads: int | None = None) -> dict[str, str]:
    """Put :func:`policy_environment` into ``os.environ``; return what was added.

    Effective only before numpy and torch are imported (they read the variables once).
    """
    added = policy_environment(torch_threads)
    os.environ.update(added)
    return added


def describe() -> str:
    """One line: the BLAS and torch thread counts in force in this process (imports both)."""
    import torch

    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(
            f"{pool['internal_api']} {pool['num_threads']}"
            for pool in threadpool_info()
            if pool.get("user_api") == "blas"
        )
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        blas = f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"
    return f"threads: BLAS {blas or '?'}; torch {torch.get_num_threads()}"
