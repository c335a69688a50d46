"""The thread policy: BLAS on one thread, torch on every core (one in tests); user settings kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lincollapse.threads import (
    POLICY_ENV_VAR,
    available_cores,
    environment_for_tests,
    policy_environment,
)

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def test_policy_blas_one_thread_torch_every_core():
    cores = str(available_cores())
    assert policy_environment(environ={}) == {
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": cores,
        "MKL_NUM_THREADS": cores,
    }


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_a_torch_thread_count_set_by_the_user_is_kept_and_followed(variable):
    added = policy_environment(environ={variable: "3"})
    assert variable not in added
    assert added == {"OPENBLAS_NUM_THREADS": "1"} | {
        other: "3" for other in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if other != variable
    }


def test_a_blas_setting_of_the_user_is_kept():
    assert "OPENBLAS_NUM_THREADS" not in policy_environment(environ={"OPENBLAS_NUM_THREADS": "2"})


def test_the_policy_can_be_turned_off():
    assert policy_environment(environ={POLICY_ENV_VAR: "off"}) == {}


def test_tests_run_torch_on_one_thread():
    assert environment_for_tests(environ={})["OMP_NUM_THREADS"] == "1"


def _threads_in_a_fresh_process(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean | {"PYTHONPATH": str(ROOT)} | env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_command_line_applies_the_policy_before_numpy_and_torch_load():
    code = "import lincollapse.__main__\nfrom lincollapse import threads\nprint(threads.describe())"
    assert _threads_in_a_fresh_process(code) == (
        f"threads: BLAS openblas 1; torch {available_cores()}"
    )


def test_the_book_kernels_get_the_policy(monkeypatch):
    from tools.build_book import _kernel_environment

    for variable in THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    env = _kernel_environment("book")
    assert env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == str(available_cores())


def test_this_test_process_follows_the_tests_policy():
    import torch
    from threadpoolctl import threadpool_info

    if any(os.environ.get(v) not in (None, "1") for v in THREAD_VARIABLES):
        pytest.skip("the user chose other thread counts")
    assert torch.get_num_threads() == 1
    assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
