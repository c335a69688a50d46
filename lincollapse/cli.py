"""The command line: ``python -m lincollapse {list,run,bench}`` (also installed as ``lincollapse``).

``list``
    every registered figure with its chapter, paper figure and the cost of each preset;
``run FIGURE [--preset P] [--device D] [--out DIR]``
    computes one figure's data with the package function the book calls, and writes the figure
    (``FIGURE.png``) and its data (``FIGURE.npz`` for arrays, ``FIGURE.json`` for scalars and
    the configuration) into ``DIR``, each file written atomically;
``bench [ARGS...]``
    the benchmark tables (``lincollapse.bench``; ``bench --help`` lists its options).

Progress bars follow :func:`lincollapse.training.progress_enabled`: shown to a person at a
terminal, quiet under CI (``CI`` set) and when output goes to a pipe or a file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lincollapse.presets import PRESETS

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
        default="book",
        help="experiment size: fast (seconds, smoke test), book (default), paper (use a GPU)",
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
    parser.print_help(sys.stderr)
    return 2


def _figures() -> dict[str, Any]:
    from lincollapse.experiments import load_all

    return load_all()


def _list() -> int:
    figures = _figures()
    header = ("figure", "chapter", "paper", *(f"{p} cost" for p in PRESETS))
    rows = [
        (
            spec.name,
            spec.chapter,
            spec.paper_figure,
            *(spec.cost(preset) or "?" for preset in PRESETS),
        )
        for spec in sorted(figures.values(), key=lambda s: (s.chapter, s.name))
    ]
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )
    print()
    for spec in sorted(figures.values(), key=lambda s: (s.chapter, s.name)):
        print(f"{spec.name}: {spec.summary}")
    print(
        "\ncost: wall time measured on the book's 2-core CPU unless a GPU is named; "
        "? = not measured yet"
    )
    return 0


def _check_device(device: str | None) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CLIError("--device cuda, but torch sees no CUDA GPU; use --device cpu or auto")


def _run(name: str, preset: str, device: str | None, out: Path) -> int:
    figures = _figures()
    if name not in figures:
        raise CLIError(f"unknown figure {name!r}; valid figures are: {', '.join(sorted(figures))}")
    spec = figures[name]
    _check_device(device)
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
    result = spec.compute(config, **call) if config is not None else spec.compute(**call)
    seconds = time.perf_counter() - start
    figure = spec.plot_function()(result)

    out.mkdir(parents=True, exist_ok=True)
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
    written = []
    with _atomic(out / f"{name}.png") as tmp:
        figure.savefig(tmp, format="png", dpi=150)
    written.append(out / f"{name}.png")
    plt.close(figure)
    with _atomic(out / f"{name}.npz") as tmp:
        with open(tmp, "wb") as stream:
            np.savez_compressed(stream, **arrays)
    written.append(out / f"{name}.npz")
    with _atomic(out / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written.append(out / f"{name}.json")
    print(f"{name}: computed in {seconds:.1f} s; wrote " + ", ".join(str(p) for p in written))
    return 0


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    status = bench.main(argv)
    return int(status or 0)
