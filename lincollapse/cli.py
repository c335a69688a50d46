"""The command line: ``python -m lincollapse {list,run,bench}`` (also installed as ``lincollapse``).

``list``
    every registered figure with its chapter, paper figure and the cost of each preset;
``run FIGURE [--preset P] [--device D] [--out DIR]``
    computes one figure's data with the package function the book calls, and writes the figure
    (``FIGURE.png``) and its data (``FIGURE.npz`` for arrays, ``FIGURE.json`` for scalars and
    the configuration) into ``DIR``, each file written atomically. The preset is ``--preset``,
    else ``$LINCOLLAPSE_PRESET``, else ``reader`` (:mod:`lincollapse.presets`). ``DIR`` (and
    the results cache, for figures that train) is checked before computing; if a write still
    fails afterwards, the data go to a rescue folder
    (:func:`lincollapse.storage.rescue_directory`) that the error names;
``bench [ARGS...]``
    the benchmark tables (``lincollapse.bench``; ``bench --help`` lists its options).

Progress bars follow :func:`lincollapse.training.progress_enabled`: shown to a person at a
terminal, quiet under CI (``CI`` set) and when output goes to a pipe or a file. Threads follow
:mod:`lincollapse.threads` (BLAS single-threaded, torch on every available core).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lincollapse.presets import ENV_VAR, PRESETS, UnknownPresetError, current_preset
from lincollapse.results_cache import CacheNotWritableError, CacheWriteError
from lincollapse.storage import rescue_directory, writable_problem

DEVICES = ("cpu", "cuda", "auto")
DEFAULT_OUT = Path("_build") / "figures"


class CLIError(Exception):
    """A bad request from the user; the message says what is valid."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lincollapse",
        description="Compute and draw the figures of 'Don't Blame the ELBO!' (Lucas et al. 2019).",
        epilog="Run `python -m lincollapse COMMAND --help` for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser(
        "list",
        help="list every figure with its chapter, paper figure and cost per preset",
        description="List every registered figure: its chapter, the paper figure it "
        "reproduces, and the wall time of each preset where it has been measured.",
    )

    run = commands.add_parser(
        "run",
        help="compute one figure and write its PNG and data files",
        description="Compute one figure with the function the book calls, then write "
        "FIGURE.png, FIGURE.npz (arrays) and FIGURE.json (scalars and configuration) into "
        "--out. Each file is written to a temporary name and renamed, so an interrupted run "
        "leaves no partial files.",
    )
    run.add_argument("figure", metavar="FIGURE", help="a figure name from `list`")
    run.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help=f"experiment size: fast (seconds, smoke test), book, paper (use a GPU); "
        f"default: ${ENV_VAR}, else reader (the book's configurations, reading shipped "
        "results where the book's training is long)",
    )
    run.add_argument(
        "--device",
        choices=DEVICES,
        default=None,
        help="where to train: cpu, cuda or auto (default: the figure's own default)",
    )
    run.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder (default: {DEFAULT_OUT})",
    )

    commands.add_parser(
        "bench",
        help="print the benchmark tables (arguments go to lincollapse.bench)",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to lincollapse.bench
        return _bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return _list()
        if args.command == "run":
            return _run(args.figure, args.preset, args.device, args.out)
    except CLIError as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")
    except KeyboardInterrupt:
        print(
            f"\n{parser.prog} {args.command}: interrupted; nothing was written to --out. Training "
            "runs that had finished are in the results cache: run the same command again to "
            "continue from them.",
            file=sys.stderr,
        )
        return 130
    parser.print_help(sys.stderr)
    return 2


def _figures() -> dict[str, Any]:
    from lincollapse.experiments import load_all

    return load_all()


def _list() -> int:
    """One block per figure, wrapped to the terminal (at most 100 columns)."""
    width = min(100, shutil.get_terminal_size((100, 24)).columns)
    figures = sorted(_figures().values(), key=lambda s: (s.chapter, s.name))
    name_width = max(len(spec.name) for spec in figures)

    def wrapped(text: str, indent: str = "    ") -> str:
        return textwrap.fill(
            " ".join(str(text).split()), width, initial_indent=indent, subsequent_indent=indent
        )

    print(f"{'figure'.ljust(name_width)}  chapter (paper figure)")
    for spec in figures:
        print(wrapped(f"{spec.name.ljust(name_width)}  {spec.chapter} ({spec.paper_figure})", ""))
        print(wrapped(spec.summary))
        for preset in PRESETS:
            print(wrapped(f"{preset} cost: {spec.cost(preset) or '?'}", "      "))
    print()
    print(
        wrapped(
            "cost: wall time measured on the book's 2-core CPU unless a GPU is named; "
            "? = not measured yet",
            "",
        )
    )
    return 0


def _check_device(device: str | None) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CLIError("--device cuda, but torch sees no CUDA GPU; use --device cpu or auto")


def _resolve_preset(preset: str | None) -> str:
    """``--preset``, else ``$LINCOLLAPSE_PRESET`` (validated), else ``reader``."""
    if preset is not None:
        return preset
    try:
        return current_preset()
    except UnknownPresetError as error:
        raise CLIError(f"{ENV_VAR}: {error}") from error


def _check_out(out: Path) -> None:
    problem = writable_problem(out)
    if problem is not None:
        raise CLIError(
            f"--out {out} {problem}; nothing was computed. Fix: pass --out a folder you can write"
        )


def _run(name: str, preset: str | None, device: str | None, out: Path) -> int:
    preset = _resolve_preset(preset)
    figures = _figures()
    if name not in figures:
        raise CLIError(f"unknown figure {name!r}; valid figures are: {', '.join(sorted(figures))}")
    spec = figures[name]
    _check_device(device)
    _check_out(out)
    config_changes: dict[str, Any] = {}
    call: dict[str, Any] = {}
    config_fields = (
        {f.name for f in dataclasses.fields(spec.config)} if spec.config is not None else set()
    )
    if device is not None:
        if "device" in config_fields:
            config_changes["device"] = device
        elif "device" in inspect.signature(spec.compute).parameters:
            call["device"] = device
        elif device == "cuda":
            raise CLIError(f"figure {name!r} has no device option: it runs on the CPU")
    config = spec.config.for_preset(preset, **config_changes) if spec.config else None

    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    from matplotlib import pyplot as plt

    print(f"computing {name} (preset {preset}) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        result = spec.compute(config, **call) if config is not None else spec.compute(**call)
    except (CacheNotWritableError, CacheWriteError) as error:
        raise CLIError(str(error)) from error
    seconds = time.perf_counter() - start
    figure = spec.plot_function()(result)

    arrays, scalars = flatten(result)
    metadata = {
        "figure": name,
        "chapter": spec.chapter,
        "paper_figure": spec.paper_figure,
        "preset": preset,
        "device": device,
        "config": _jsonable(config.as_dict()) if config is not None else None,
        "compute_seconds": round(seconds, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scalars": scalars,
        "arrays": {
            key: {"shape": list(a.shape), "dtype": str(a.dtype)} for key, a in arrays.items()
        },
    }
    try:
        written = _write_outputs(out, name, figure, arrays, metadata)
    except OSError as error:
        rescued = _rescue_outputs(name, figure, arrays, metadata)
        raise CLIError(
            f"could not write into --out {out} after computing {name} in {seconds:.0f} s "
            f"({error.strerror or error}); {rescued}"
        ) from error
    finally:
        plt.close(figure)
    print(f"{name}: computed in {seconds:.1f} s; wrote " + ", ".join(str(p) for p in written))
    return 0


def _write_outputs(
    out: Path, name: str, figure: Any, arrays: dict[str, np.ndarray], metadata: dict
) -> list[Path]:
    """Write ``name``'s NPZ, JSON and PNG into ``out``; return their paths.

    All three are written to temporary names first and renamed only when all three are
    complete, so a failure leaves ``out`` as it was (no partial file, no partial set).
    """

    def npz(path: Path) -> None:
        with open(path, "wb") as stream:
            np.savez_compressed(stream, **arrays)

    def js(path: Path) -> None:
        text = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
        path.write_text(text, encoding="utf-8")

    def png(path: Path) -> None:
        figure.savefig(path, format="png", dpi=150)

    writers = {f"{name}.npz": npz, f"{name}.json": js, f"{name}.png": png}
    umask = os.umask(0)
    os.umask(umask)
    staged: dict[str, Path] = {}
    try:
        for filename, write in writers.items():
            handle, temporary = tempfile.mkstemp(prefix=f".{filename}.", suffix=".tmp", dir=out)
            os.close(handle)
            staged[filename] = Path(temporary)
            write(staged[filename])
            os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        for filename, temporary in staged.items():
            os.replace(temporary, out / filename)
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
    return [out / filename for filename in writers]


def _rescue_outputs(name: str, figure: Any, arrays: dict[str, np.ndarray], metadata: dict) -> str:
    """Write the outputs into a fresh rescue folder; the end of a sentence saying where."""
    base = rescue_directory()
    if base is not None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-{stamp}-", dir=base))
        try:
            _write_outputs(folder, name, figure, arrays, metadata)
        except OSError:
            pass
        else:
            return (
                f"the computed results were saved to {folder} instead ({name}.npz, .json, .png). "
                "Fix: copy them from there, or free --out and run again"
            )
    return "no rescue folder could take them either (tried $TMPDIR, ~/.cache and .)"


def flatten(value: Any, prefix: str = "") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Split a result into arrays and JSON scalars, keyed by dotted field path.

    Dataclasses and dicts are walked recursively; numpy arrays and torch tensors (and numeric
    lists) become arrays; numbers, strings, booleans and ``None`` become scalars; anything else
    is recorded by its ``repr``.
    """
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}

    def walk(item: Any, key: str) -> None:
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            for field in dataclasses.fields(item):
                walk(getattr(item, field.name), f"{key}.{field.name}" if key else field.name)
        elif isinstance(item, dict):
            for name, sub in item.items():
                walk(sub, f"{key}.{name}" if key else str(name))
        elif hasattr(item, "detach") and hasattr(item, "cpu"):  # a torch tensor
            walk(item.detach().cpu().numpy(), key)
        elif isinstance(item, np.ndarray):
            if item.ndim == 0:
                scalars[key or "value"] = item.item()
            else:
                arrays[key or "value"] = item
        elif isinstance(item, (list, tuple)):
            array = np.asarray(item) if item else np.asarray([])
            if array.dtype.kind in "biufc" and item:
                arrays[key or "value"] = array
            else:
                scalars[key or "value"] = _jsonable(item)
        else:
            scalars[key or "value"] = _jsonable(item)

    walk(value, prefix)
    return arrays, scalars


def _jsonable(item: Any) -> Any:
    if item is None or isinstance(item, (bool, int, str)):
        return item
    if isinstance(item, float):
        return item if np.isfinite(item) else str(item)
    if isinstance(item, np.generic):
        return _jsonable(item.item())
    if isinstance(item, dict):
        return {str(k): _jsonable(v) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return [_jsonable(v) for v in item]
    if isinstance(item, Path):
        return str(item)
    return repr(item)


def _bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("lincollapse.bench")
    except ModuleNotFoundError as error:
        if error.name != "lincollapse.bench":
            raise
        print("python -m lincollapse bench: lincollapse.bench is not available", file=sys.stderr)
        return 2
    status = bench.main(argv, prog="python -m lincollapse bench")
    return int(status or 0)
