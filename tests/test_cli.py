"""The command line: help, list, one cheap figure end to end, and errors that list the choices."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from lincollapse.cli import main
from lincollapse.experiments import load_all


def run_main(argv, capsys) -> tuple[int, str, str]:
    """``main(argv)``'s exit status (argparse's SystemExit included), stdout and stderr."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def test_module_help_runs_as_a_program():
    result = subprocess.run(
        [sys.executable, "-m", "lincollapse", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for command in ("list", "run", "bench"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["list", "run"])
def test_subcommand_help(command, capsys):
    status, out, _ = run_main([command, "--help"], capsys)
    assert status == 0
    assert f"python -m lincollapse {command}" in out


def test_bench_help_is_forwarded(capsys):
    if importlib.util.find_spec("lincollapse.bench") is None:
        status, _, err = run_main(["bench"], capsys)
        assert status == 2 and "not available" in err
    else:
        status, out, _ = run_main(["bench", "--help"], capsys)
        assert status == 0 and "usage" in out


def test_list_shows_every_figure_with_chapter_and_costs(capsys):
    status, out, _ = run_main(["list"], capsys)
    assert status == 0
    assert "fast cost" in out and "book cost" in out and "paper cost" in out
    for name, spec in load_all().items():
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert spec.chapter in row


def test_run_writes_the_figure_and_its_data(tmp_path, capsys):
    status, out, err = run_main(
        ["run", "mnist-spectrum", "--preset", "fast", "--out", str(tmp_path)], capsys
    )
    assert status == 0, err
    png = tmp_path / "mnist-spectrum.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(tmp_path / "mnist-spectrum.npz") as data:
        eigenvalues = data["eigenvalues"]
        images = data["data.images"]
    assert eigenvalues.shape == (784,) and np.all(np.diff(eigenvalues) <= 0)
    assert images.shape[1] == 784
    meta = json.loads((tmp_path / "mnist-spectrum.json").read_text())
    assert meta["preset"] == "fast" and meta["config"]["preset"] == "fast"
    assert meta["scalars"]["n_nonzero"] == int(
        np.count_nonzero(eigenvalues > meta["scalars"]["zero_tolerance"])
    )
    assert meta["arrays"]["eigenvalues"]["shape"] == [784]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mnist-spectrum.json",
        "mnist-spectrum.npz",
        "mnist-spectrum.png",
    ]  # no temporary files left behind
    assert str(png) in out


@pytest.mark.parametrize(
    ("argv", "choices"),
    [
        (["run", "no-such-figure"], sorted(load_all())),
        (["run", "mnist-spectrum", "--preset", "huge"], ["fast", "book", "paper"]),
        (["run", "mnist-spectrum", "--device", "tpu"], ["cpu", "cuda", "auto"]),
        (["frobnicate"], ["list", "run", "bench"]),
    ],
)
def test_bad_arguments_list_the_valid_choices(argv, choices, capsys, tmp_path):
    status, _, err = run_main([*argv, "--out", str(tmp_path)] if argv[0] == "run" else argv, capsys)
    assert status != 0
    for choice in choices:
        assert choice in err
    assert not any(tmp_path.iterdir())


def test_cuda_without_a_gpu_is_an_error(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = ["run", "mnist-spectrum", "--device", "cuda", "--out", str(tmp_path)]
    status, _, err = run_main(argv, capsys)
    assert status == 2 and "no CUDA GPU" in err
