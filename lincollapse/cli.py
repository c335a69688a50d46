"""The command line: ``python -m lincollapse COMMAND`` (also installed as ``lincollapse``).

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
``bench {linear,training,deep,threads}``
    the benchmark tables of :mod:`lincollapse.bench`;
``study {train,status,ship,ship-traversal}``
    the deep chapter's converged σ² study (:mod:`lincollapse.experiments.deep_study`): train its
    runs resumably, show their state, ship them to ``results/``;
``train {deep,annealing,linear-baselines}``
    the long runs behind a chapter's shipped results (deep-VAE convergence study and grid, KL
    annealing, the linear VAE's joint-training baselines), optionally writing the reference;
``reader {ship,check} [NAMES...]``
    recompute the ``book`` results that the ``reader`` preset reads and write them, with their
    behaviour probes, to ``results/reader/`` (:func:`lincollapse.reader.ship`); or replay every
    shipped entry's behaviour probe and list those missing or stale
    (:func:`lincollapse.reader.shipped_problems`).

This is the package's only command line. ``python -m lincollapse.experiments.deep_study ARGS``
(and ``...deep``, ``...beta``, ``...linear_baselines``, ``lincollapse.reader``), the commands
recorded in shipped results and the README, still work: each module hands its arguments to
:func:`main_for_module`.

Progress bars follow :func:`lincollapse.training.progress_enabled`: shown to a person at a
terminal, quiet under CI (``CI`` set) and when output goes to a pipe or a file. Threads follow
:mod:`lincollapse.threads` (BLAS single-threaded, torch on every available core).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
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

    from lincollapse import bench

    bench_parser = commands.add_parser(
        "bench",
        help="print a benchmark table: " + ", ".join(sorted(bench.SUBCOMMANDS)),
        description=plain_text(bench.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench_parser.add_argument("subcommand", choices=sorted(bench.SUBCOMMANDS))
    bench_parser.add_argument(
        "--preset", choices=PRESETS, default=None, help=f"default: ${ENV_VAR}, else reader"
    )
    bench_parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch intra-op threads (default: the thread policy's, lincollapse.threads)",
    )
    bench_parser.add_argument(
        "--figure",
        action="append",
        default=None,
        help="threads only: a figure to time (repeatable; default: "
        + ", ".join(bench.THREAD_FIGURES)
        + ")",
    )
    bench_parser.add_argument(
        "--repeat", type=positive_int, default=3, help="threads only: runs per variant (3)"
    )

    from lincollapse.experiments import deep_study

    study = commands.add_parser(
        "study",
        help="train, inspect and ship the deep chapter's converged σ² study",
        description="Train, inspect and ship the deep chapter's converged σ² study "
        "(lincollapse.experiments.deep_study). train: every run of the groups that is neither "
        "finished here nor shipped in results/ (a shipped group whose behaviour probe no longer "
        "replays is retrained), resumably (several processes may train at once); status: "
        "finished / in progress / shipped / waiting, per run; ship: write "
        "results/deep_study_<group> (the runs finished here, plus those shipped before that are "
        "not); ship-traversal: write results/deep_traversal.",
    )
    study.add_argument("action", choices=("train", "status", "ship", "ship-traversal"))
    study.add_argument(
        "--group",
        action="append",
        choices=sorted(deep_study.GROUPS),
        help="group(s) to train or ship (default: all, in order)",
    )
    study.add_argument("--threads", type=positive_int, default=None, help="torch threads (1)")
    study.add_argument("--progress", action="store_true", help="progress bars even into a file")

    train = commands.add_parser(
        "train",
        help="train the long runs behind a chapter's shipped results",
        description="Train the long runs behind a chapter's shipped results (filling the "
        "results cache); with --write-reference, write them into results/.",
    )
    runs = train.add_subparsers(dest="runs", metavar="RUNS", required=True)
    deep = runs.add_parser(
        "deep",
        help="the deep-VAE convergence study (long runs) and/or the σ² grid",
        description="Train the deep-VAE long runs (convergence study) and/or the grid runs; "
        "with --write-reference, write results/deep_convergence_<preset>.{npz,json}.",
    )
    deep.add_argument("--convergence", action="store_true", help="the long runs (the default)")
    deep.add_argument("--grid", action="store_true", help="the grid runs")
    deep.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="steps of the long runs (default: the preset's convergence_steps)",
    )
    annealing = runs.add_parser(
        "annealing",
        help="the KL-annealing long runs",
        description="Train the KL-annealing long runs; with --write-reference, write "
        "results/kl_annealing_long_<preset>.{npz,json}.",
    )
    annealing.add_argument("--long", action="store_true", help="the long runs (the default)")
    baselines = runs.add_parser(
        "linear-baselines",
        help="the linear VAE's joint-training runs (Adam at the paper's settings, L-BFGS)",
        description="Train the linear VAE's joint-training comparison runs (Adam at the "
        "paper's settings, joint L-BFGS); with --write-reference, write "
        "results/linear_vae_baselines_<preset>. The paper preset trains the book's runs.",
    )
    for sub in (deep, annealing, baselines):
        sub.add_argument("--preset", default="book", choices=PRESETS, help="default: book")
        if sub is not baselines:
            sub.add_argument("--device", default="auto", choices=DEVICES, help="default: auto")
        sub.add_argument("--write-reference", action="store_true", help="write the shipped results")
        sub.add_argument("--threads", type=positive_int, default=None, help="torch threads")
        sub.add_argument("--progress", action="store_true", help="progress bars even into a file")

    from lincollapse import reader

    reader_parser = commands.add_parser(
        "reader",
        help="regenerate or check the shipped results that the reader preset reads",
        description="ship: recompute the book preset's results that the reader preset reads "
        "instead of training, and write them to results/reader/ (minutes to tens of minutes on "
        "2 CPU cores). check: replay each shipped result's behaviour probe with the code now "
        "and list the missing or stale ones (exit status 1 if any; seconds).",
    )
    reader_parser.add_argument("action", choices=("ship", "check"))
    reader_parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"what to ship or check: {', '.join(reader.SHIPPED)} (default: all)",
    )
    return parser


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1, else an error that says so."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1, 2, …), got {text!r}")
    return value


def plain_text(rst: str) -> str:
    """``rst`` without reStructuredText markup (roles, literals, emphasis), for ``--help``."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", rst)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"(?<![\w*])\*([A-Za-z][^*\n]*?)\*(?![\w*])", r"\1", text)
    return re.sub(r"\n-{3,}\n", "\n", text)


def main(argv: list[str] | None = None, *, typed: str | None = None) -> int:
    """Run one command; ``typed`` is the command line as the user typed it (for provenance)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    typed = typed or " ".join(["python -m lincollapse", *argv])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return _list()
        if args.command == "run":
            return _run(args.figure, args.preset, args.device, args.out)
        if args.command == "bench":
            return _bench(args)
        if args.command == "study":
            return _study(args, typed)
        if args.command == "train":
            return _train(args, typed)
        if args.command == "reader":
            return _reader(args)
    except CLIError as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")
    except KeyboardInterrupt:
        kept = "nothing was written to --out. " if args.command == "run" else ""
        print(
            f"\n{parser.prog} {args.command}: interrupted; {kept}Training runs that had "
            "finished are in the results cache: run the same command again to continue from them.",
            file=sys.stderr,
        )
        return 130
    parser.print_help(sys.stderr)
    return 2


#: Modules that still run as ``python -m MODULE ARGS`` (the commands recorded in shipped results
#: and quoted in the README), and the command each stands for (``python -m lincollapse COMMAND``).
MODULE_COMMANDS: dict[str, tuple[str, ...]] = {
    "lincollapse.experiments.deep_study": ("study",),
    "lincollapse.experiments.deep": ("train", "deep"),
    "lincollapse.experiments.beta": ("train", "annealing"),
    "lincollapse.experiments.linear_baselines": ("train", "linear-baselines"),
    "lincollapse.reader": ("reader",),
}


def main_for_module(module: str, argv: list[str] | None = None) -> int:
    """``python -m MODULE ARGS``, run as ``python -m lincollapse COMMAND ARGS``.

    What such a command writes records it as typed (``python -m
    lincollapse.experiments.deep_study ship ...``), as the shipped results already do.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = list(MODULE_COMMANDS[module])
    return main([*command, *argv], typed=" ".join([f"python -m {module}", *argv]))


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


def _bench(args: argparse.Namespace) -> int:
    from lincollapse import bench

    preset = _resolve_preset(args.preset)
    if args.threads is not None:
        _set_torch_threads(args.threads)
    if args.subcommand == "threads":
        bench.bench_threads(preset, figures=args.figure or bench.THREAD_FIGURES, repeat=args.repeat)
    else:
        bench.SUBCOMMANDS[args.subcommand](preset)
    return 0


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _reader(args: argparse.Namespace) -> int:
    from lincollapse import reader

    unknown = sorted(set(args.names) - set(reader.SHIPPED))
    if unknown:
        raise CLIError(f"unknown result(s) {unknown}; valid: {', '.join(reader.SHIPPED)}")
    if args.action == "check":
        problems = reader.shipped_problems(args.names or None)
        for name, problem in problems.items():
            print(f"{name}: {problem}")
        if not problems:
            print(f"every entry of {reader.READER_DIR} is current")
        return 1 if problems else 0
    reader.ship(args.names or None)
    return 0


def _study(args: argparse.Namespace, typed: str) -> int:
    from lincollapse.experiments import deep_study, deep_study_shipping
    from lincollapse.references import ReferenceResultError

    _set_torch_threads(args.threads or 1)
    groups = args.group or list(deep_study.GROUPS)
    if args.action == "train":
        progress = args.progress or None
        deep_study.train_queue(groups, progress=progress, log=lambda m: print(m, flush=True))
    elif args.action == "status":
        deep_study.status()
    elif args.action == "ship-traversal":
        print("shipped", deep_study_shipping.ship_traversal(typed))
    else:
        for group in groups:
            try:
                print("shipped", deep_study_shipping.ship_group(group, typed))
            except ReferenceResultError as error:
                print(f"not shipped: {error}")
    return 0


def _train(args: argparse.Namespace, typed: str) -> int:
    if args.threads:
        _set_torch_threads(args.threads)
    progress = args.progress or None
    if args.runs == "deep":
        from lincollapse.experiments import deep, deep_convergence

        if args.convergence or not args.grid:
            arrays, sources = deep_convergence.run_convergence_study(
                args.preset,
                args.device,
                write_reference=args.write_reference,
                command=typed,
                progress=progress,
                steps=args.steps,
            )
            print(deep_convergence.convergence_summary(arrays, args.preset))
            print(sources)
        if args.grid:
            from lincollapse.deep_runs import load_or_train

            config = deep.DeepVAEConfig.for_preset(args.preset)
            _, sources = load_or_train(config, config.runs(), device=args.device, progress=progress)
            print("\n".join(sources))
    elif args.runs == "annealing":
        from lincollapse.experiments import kl_annealing_runs

        runs, provenance = kl_annealing_runs.run_long_annealing(
            args.preset,
            args.device,
            write_reference=args.write_reference,
            command=typed,
            progress=progress,
        )
        print(kl_annealing_runs.long_annealing_summary(runs, args.preset))
        print(provenance)
    else:
        from lincollapse.experiments import linear_baselines

        preset = "book" if args.preset == "paper" else args.preset
        linear_baselines.train_baselines(
            linear_baselines.LinearBaselinesConfig.for_preset(preset),
            write_reference=args.write_reference,
            command=typed,
            progress=progress,
        )
    return 0
