"""The command line: help, list, one cheap figure end to end, and errors that list the choices."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from lincollapse.cli import MODULE_COMMANDS, build_parser, main, main_for_module
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


@pytest.mark.parametrize(
    "command",
    [
        ["bench"],
        ["study"],
        ["train", "deep"],
        ["train", "annealing"],
        ["train", "linear-baselines"],
    ],
)
def test_every_command_has_help(command, capsys):
    status, out, _ = run_main([*command, "--help"], capsys)
    assert status == 0
    assert out.startswith("usage: python -m lincollapse " + " ".join(command))


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
        (["run", "mnist-spectrum", "--preset", "huge"], ["fast", "reader", "book", "paper"]),
        (["run", "mnist-spectrum", "--device", "tpu"], ["cpu", "cuda", "auto"]),
        (["frobnicate"], ["list", "run", "bench", "study", "train"]),
        (["study", "train", "--group", "nope"], ["baseline", "logit", "learned"]),
        (["study", "retrain"], ["train", "status", "ship", "ship-traversal"]),
        (["train", "deep", "--preset", "huge"], ["fast", "book", "paper"]),
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


# ------------------------------------------------------------------ presets from the environment


def test_run_honours_the_preset_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LINCOLLAPSE_PRESET", "fast")
    status, _, err = run_main(["run", "ppca-landscape", "--out", str(tmp_path)], capsys)
    assert status == 0, err
    meta = json.loads((tmp_path / "ppca-landscape.json").read_text())
    assert meta["preset"] == "fast" and meta["config"]["preset"] == "fast"


def test_run_option_beats_the_preset_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LINCOLLAPSE_PRESET", "book")
    argv = ["run", "ppca-landscape", "--preset", "fast", "--out", str(tmp_path)]
    status, _, err = run_main(argv, capsys)
    assert status == 0, err
    assert json.loads((tmp_path / "ppca-landscape.json").read_text())["preset"] == "fast"


@pytest.mark.parametrize("command", [["run", "ppca-landscape"], ["bench", "linear"]])
def test_an_invalid_preset_variable_is_an_error_before_any_work(
    command, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("LINCOLLAPSE_PRESET", "bogus")
    compute = _count_computations(monkeypatch, "ppca-landscape")
    argv = [*command, "--out", str(tmp_path)] if command[0] == "run" else command
    status, _, err = run_main(argv, capsys)
    assert status == 2
    assert "LINCOLLAPSE_PRESET" in err and "'bogus'" in err
    assert "fast, reader, book, paper" in err and "Traceback" not in err
    assert compute.calls == 0 and not any(tmp_path.iterdir())


# ------------------------------------------------------------------ check before computing


class _CountingCompute:
    def __init__(self, compute) -> None:
        self.compute, self.calls = compute, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.compute(*args, **kwargs)


def _count_computations(monkeypatch, name: str) -> _CountingCompute:
    """Wrap figure ``name``'s computation in a counter (the registry entry is patched)."""
    import dataclasses

    from lincollapse.experiments import FIGURES

    spec = load_all()[name]
    counter = _CountingCompute(spec.compute)
    monkeypatch.setitem(FIGURES, name, dataclasses.replace(spec, compute=counter))
    return counter


def _unusable_out(kind: str, tmp_path, monkeypatch):
    """An --out folder that cannot be written, and the words the error must use."""
    if kind == "a file":
        out = tmp_path / "out"
        out.write_text("not a folder")
        return out, "is a file"
    if kind == "under a file":
        (tmp_path / "file").write_text("not a folder")
        return tmp_path / "file" / "out", "is a file"
    out = tmp_path / "out"  # read-only, simulated (root ignores permission bits)
    out.mkdir()

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and os.path.realpath(dir) == os.path.realpath(out):
            raise PermissionError(13, "Permission denied", str(out))
        return real_mkstemp(*args, dir=dir, **kwargs)

    real_mkstemp = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    return out, "not writable"


@pytest.mark.parametrize("kind", ["a file", "under a file", "read-only"])
def test_an_unusable_out_folder_is_an_error_before_computing(kind, tmp_path, capsys, monkeypatch):
    out, words = _unusable_out(kind, tmp_path, monkeypatch)
    compute = _count_computations(monkeypatch, "ppca-landscape")
    argv = ["run", "ppca-landscape", "--preset", "fast", "--out", str(out)]
    status, _, err = run_main(argv, capsys)
    assert status == 2 and compute.calls == 0
    assert str(out) in err and words in err and "--out" in err
    assert "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_folder_is_an_error_before_computing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    compute = _count_computations(monkeypatch, "ppca-landscape")
    try:
        status, _, err = run_main(["run", "ppca-landscape", "--out", str(out)], capsys)
    finally:
        out.chmod(0o755)
    assert status == 2 and compute.calls == 0 and "not writable" in err


def test_a_write_that_fails_after_computing_saves_the_results_elsewhere(
    tmp_path, capsys, monkeypatch
):
    import lincollapse.cli as cli

    rescue = tmp_path / "rescue"
    monkeypatch.setenv("LINCOLLAPSE_RESCUE_DIR", str(rescue))
    real_replace = os.replace

    def disk_full(source, target):
        if str(target).startswith(str(tmp_path / "out")):
            raise OSError(28, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(cli.os, "replace", disk_full)
    argv = ["run", "ppca-landscape", "--preset", "fast", "--out", str(tmp_path / "out")]
    status, _, err = run_main(argv, capsys)
    assert status == 2 and "No space left on device" in err and "Traceback" not in err
    saved = sorted(rescue.rglob("ppca-landscape.npz"))
    assert len(saved) == 1 and str(saved[0].parent) in err
    with np.load(saved[0]) as data:
        assert data["exact"].shape[0] == len(
            json.loads((saved[0].parent / "ppca-landscape.json").read_text())["config"][
                "sigma2_values"
            ]
        )
    assert not [p for p in (tmp_path / "out").iterdir()]  # nothing half-written


def test_a_cache_that_cannot_be_written_is_an_error_before_training(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("a file where the results cache folder should be")
    monkeypatch.setenv("LINCOLLAPSE_CACHE_DIR", str(cache))
    import lincollapse.deep_runs as deep

    trainings = []

    def train(*args, **kwargs):
        trainings.append(args)
        raise AssertionError("trained although the cache cannot be written")

    monkeypatch.setattr(deep, "train_batched", train)
    argv = ["run", "collapse-vs-eps-fixed", "--preset", "fast", "--out", str(tmp_path / "out")]
    status, _, err = run_main(argv, capsys)
    assert status == 2 and trainings == []
    assert str(cache) in err and "LINCOLLAPSE_CACHE_DIR" in err and "Traceback" not in err


# ------------------------------------------------------------------ bench and list


@pytest.mark.parametrize("threads", ["0", "-1", "two"])
def test_bench_rejects_a_bad_thread_count(threads, capsys):
    status, _, err = run_main(["bench", "linear", "--threads", threads], capsys)
    assert status == 2 and "--threads" in err and "positive" in err


def test_bench_help_is_plain_text_with_the_right_program_name(capsys):
    status, out, _ = run_main(["bench", "--help"], capsys)
    assert status == 0
    assert out.startswith("usage: python -m lincollapse bench")
    assert "``" not in out and ":class:" not in out


def test_list_fits_a_terminal(capsys):
    status, out, _ = run_main(["list"], capsys)
    assert status == 0
    assert max(len(line) for line in out.splitlines()) <= 100
    for spec in load_all().values():
        for preset in ("fast", "book", "paper"):
            cost = " ".join((spec.cost(preset) or "?").split())
            assert cost[:20] in " ".join(out.split())


def test_interrupt_says_what_was_kept(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    import dataclasses

    from lincollapse.experiments import FIGURES

    spec = load_all()["ppca-landscape"]
    monkeypatch.setitem(FIGURES, "ppca-landscape", dataclasses.replace(spec, compute=interrupted))
    try:
        status, _, err = run_main(["run", "ppca-landscape", "--out", str(tmp_path)], capsys)
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped as a traceback")
    assert status == 130 and "interrupted" in err and "results cache" in err
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ one command-line tree

ROOT = Path(__file__).resolve().parents[1]


def test_the_command_line_is_the_only_main():
    """No module of the package but cli.py parses a command line or defines ``main``."""
    for path in sorted((ROOT / "lincollapse").rglob("*.py")):
        if path.name in ("cli.py", "__main__.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "main" not in functions and "argparse" not in imports, path


def documented_commands() -> list[str]:
    """Every ``python -m lincollapse...`` command in the README, the chapters and results/."""
    texts = [ROOT / "README.md", ROOT / "results" / "README.md"]
    texts += sorted((ROOT / "book").glob("*.md")) + sorted((ROOT / "results").glob("*.json"))
    found = set()
    for path in texts:
        for match in re.finditer(
            r"python -m (lincollapse[\w.]*)((?: +-{0,2}[\w.=/-]+)*)", path.read_text()
        ):
            found.add((match.group(1) + match.group(2)).strip())
    return sorted(found)


@pytest.mark.parametrize("command", documented_commands())
def test_every_documented_command_parses(command):
    module, *argv = command.split()
    if any(word.isupper() for word in argv):  # a placeholder: python -m lincollapse COMMAND --help
        return
    if module != "lincollapse":
        assert module in MODULE_COMMANDS, f"{module} cannot be run with python -m"
        argv = [*MODULE_COMMANDS[module], *argv]
    if not argv or argv in (["run"], ["bench"]):  # named in prose without arguments
        return
    build_parser().parse_args(argv)


def test_the_documents_quote_the_old_module_commands():
    """The test above covers what it must: the shipped results' commands, the README's."""
    commands = documented_commands()
    for module in MODULE_COMMANDS:
        assert any(c.startswith(module + " ") for c in commands), module
    assert "lincollapse.experiments.deep_study train --threads 1" in commands


@pytest.fixture
def torch_threads():
    """torch, with its thread count restored after the test."""
    import torch

    threads = torch.get_num_threads()
    yield torch
    torch.set_num_threads(threads)


def shipped_command(name: str) -> str:
    return json.loads((ROOT / "results" / f"{name}.json").read_text())["info"]["command"]


@pytest.mark.parametrize(
    ("shipped", "function", "module"),
    [
        (
            "deep_study_baseline",
            "lincollapse.experiments.deep_study_shipping:ship_group",
            "lincollapse.experiments.deep_study",
        ),
        (
            "deep_traversal",
            "lincollapse.experiments.deep_study_shipping:ship_traversal",
            "lincollapse.experiments.deep_study",
        ),
        (
            "deep_convergence_book",
            "lincollapse.experiments.deep_convergence:run_convergence_study",
            "lincollapse.experiments.deep",
        ),
        (
            "deep_convergence_paper",
            "lincollapse.experiments.deep_convergence:run_convergence_study",
            "lincollapse.experiments.deep",
        ),
        (
            "kl_annealing_long_book",
            "lincollapse.experiments.kl_annealing_runs:run_long_annealing",
            "lincollapse.experiments.beta",
        ),
        (
            "linear_vae_baselines_book",
            "train_baselines",
            "lincollapse.experiments.linear_baselines",
        ),
    ],
)
def test_old_module_commands_run_and_record_themselves_as_typed(
    shipped, function, module, monkeypatch, torch_threads
):
    """``python -m MODULE ARGS`` (as in a shipped result's provenance) reaches the same code,
    with the arguments it had, and what it writes records the same command. ``function`` is
    ``holder:name`` when another module than ``module`` holds it."""
    holder, _, function = function.rpartition(":")
    target = importlib.import_module(holder or module)
    calls = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise KeyboardInterrupt  # stop here: nothing is trained

    monkeypatch.setattr(target, function, record)
    command = shipped_command(shipped)
    prefix = f"python -m {module} "
    assert command.startswith(prefix)
    status = main_for_module(module, command.removeprefix(prefix).split())
    assert status == 130 and len(calls) == 1
    args, kwargs = calls[0]
    recorded = kwargs.get("command", args[-1] if args else None)
    assert recorded == command
    if "--preset" in command:
        preset = command.split("--preset ")[1].split()[0]
        assert getattr(args[0], "preset", args[0]) == preset
    if "--write-reference" in command:
        assert kwargs["write_reference"] is True


def test_study_train_keeps_its_options(monkeypatch, torch_threads):
    from lincollapse.experiments import deep_study

    calls = []
    monkeypatch.setattr(deep_study, "train_queue", lambda groups, **kw: calls.append((groups, kw)))
    argv = ["train", "--group", "logit", "--group", "baseline", "--threads", "2", "--progress"]
    assert main_for_module("lincollapse.experiments.deep_study", argv) == 0
    assert torch_threads.get_num_threads() == 2
    assert main_for_module("lincollapse.experiments.deep_study", ["train"]) == 0
    assert torch_threads.get_num_threads() == 1  # the study's default
    assert calls[0][0] == ["logit", "baseline"] and calls[0][1]["progress"] is True
    assert calls[1][0] == list(deep_study.GROUPS) and calls[1][1]["progress"] is None


def test_the_study_module_still_runs_as_a_program(tmp_path):
    """``python -m lincollapse.experiments.deep_study status``, as the README shows, on an empty
    store: every run of every group is shipped in results/ or waiting (and the module, run as a
    script and imported by name, registers its figures once)."""
    from lincollapse.experiments.deep_study import GROUPS
    from lincollapse.experiments.deep_study_shipping import reference_path
    from lincollapse.references import load_shipped

    env = os.environ | {"LINCOLLAPSE_CACHE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "lincollapse.experiments.deep_study", "status"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == sum(len(specs) for specs in GROUPS.values())
    shipped = [line for line in lines if " shipped: " in line]
    assert all(line.endswith(" waiting") for line in lines if line not in shipped)
    stems = [reference_path(group) for group in GROUPS]
    count = sum(
        load_shipped(s, None)[0]["sigma2"].size for s in stems if s.with_suffix(".npz").is_file()
    )
    assert len(shipped) == count


def test_reader_ship_runs_through_the_command_line(monkeypatch, capsys):
    """``python -m lincollapse.reader ship [NAME ...]`` reaches :func:`lincollapse.reader.ship`."""
    from lincollapse import reader

    calls = []
    monkeypatch.setattr(reader, "ship", lambda names=None: calls.append(names))
    assert main_for_module("lincollapse.reader", ["ship", "gram", "linear-beta"]) == 0
    assert main(["reader", "ship"]) == 0
    assert calls == [["gram", "linear-beta"], None]
    with pytest.raises(SystemExit) as exit_:
        main(["reader", "ship", "grams"])
    assert exit_.value.code == 2 and "valid: deep, stochastic" in capsys.readouterr().err


def test_the_deep_benchmark_table_formats_a_row():
    """The table prints both layouts, their ratio and the load it ran under."""
    from lincollapse.bench import BenchmarkRow, format_benchmark

    row = BenchmarkRow(
        preset="book",
        runs=7,
        threads=2,
        seconds={"loop": 0.2, "batched": 0.25},
        gflops={"loop": 30.0, "batched": 24.0},
        matmul_gflops=50.0,
        chosen="loop",
        grid_seconds=400.0,
        convergence_seconds=3000.0,
    )
    table = format_benchmark([row])
    assert "load average" in table and "book" in table and " 0.80 " in table
