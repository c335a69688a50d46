"""Execute the book's chapters on several kernels at once, into myst-nb's execution cache.

Sphinx reads the chapters one after another, and myst-nb executes each one as it reads it: one
kernel for the whole build. On a 2-core machine one kernel with two torch threads leaves much of
the second core idle (a thread pool gains ≈ 1.5× from its second thread on this package's work,
and loses far more when anything else competes for the cores), so :func:`execute_chapters`
runs first, before Sphinx:

- it reads every chapter of ``_toc.yml`` as myst-nb reads it, skips those already in the
  execution cache, and executes the rest on ``kernels`` kernels at once, each with
  ``threads_per_kernel`` torch threads;
- chapters that share training runs through the results cache (``SHARED_SECONDS`` of
  :mod:`lincollapse.experiments`) run one after the other on the same kernel, the first one
  training what they share, so nothing is trained twice;
- the longest jobs start first (their measured cost in ``CHAPTER_SECONDS``), so the kernels
  finish close together;
- each executed chapter is stored in the execution cache the moment it finishes, exactly as
  myst-nb would store it; Sphinx then finds every chapter there. A chapter that fails is not
  stored: Sphinx executes it again (its finished training runs come from the results cache) and
  the build reports the failure as usual, with its chapter, cell, cause and fix.

Nothing here changes what a chapter computes: the same notebooks run in the same kernels with the
same preset; only which core they run on and when.
"""

from __future__ import annotations

import concurrent.futures as futures
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lincollapse.threads import available_cores

KERNELS_VAR = "LINCOLLAPSE_BUILD_KERNELS"


@dataclass
class Job:
    """Chapters executed one after the other on one kernel; ``seconds`` is their measured cost."""

    chapters: list[Path]
    seconds: float = 0.0


@dataclass
class ChapterRun:
    """What executing one chapter gave: its time, the kernel, and the error if it failed."""

    path: Path
    seconds: float
    kernel: int
    notebook: Any = None
    error: str | None = None


@dataclass
class PassReport:
    """The parallel pass: chapters executed, failed, already cached; its wall time."""

    kernels: int
    threads: int
    executed: list[ChapterRun] = field(default_factory=list)
    failed: list[ChapterRun] = field(default_factory=list)
    cached: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        if not self.executed and not self.failed:
            return f"lincollapse: parallel pass: all {len(self.cached)} chapter(s) already cached"
        busy = sum(run.seconds for run in self.executed + self.failed)
        failed = f", {len(self.failed)} failed (Sphinx runs them again)" if self.failed else ""
        return (
            f"lincollapse: parallel pass: {len(self.executed)} chapter(s) executed on "
            f"{self.kernels} kernel(s) × {self.threads} torch thread(s) in {self.seconds:.0f} s "
            f"({busy:.0f} kernel-seconds){failed}; {len(self.cached)} already cached"
        )


def kernel_count(requested: int | None = None, environ: dict[str, str] | None = None) -> int:
    """Kernels of the parallel pass: ``requested``, else ``$LINCOLLAPSE_BUILD_KERNELS``, else 2
    on a machine with at least 2 cores (1 otherwise, which means no parallel pass)."""
    environ = os.environ if environ is None else environ
    if requested is None:
        value = environ.get(KERNELS_VAR, "").strip()
        if value:
            try:
                requested = int(value)
            except ValueError:
                raise SystemExit(
                    f"{KERNELS_VAR}={value!r}: give a whole number of kernels (1 turns the "
                    "parallel pass off)"
                ) from None
        else:
            requested = min(2, available_cores())
    if requested < 1:
        raise SystemExit(f"{KERNELS_VAR}={requested}: give 1 or more (1: no parallel pass)")
    return requested


def threads_per_kernel(kernels: int, environ: dict[str, str] | None = None) -> int:
    """torch threads of each kernel: the user's ``OMP_NUM_THREADS`` if set, else the cores
    shared out evenly (at least one)."""
    environ = os.environ if environ is None else environ
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return max(1, available_cores() // kernels)


def toc_chapters(root: Path) -> list[Path]:
    """The ``.md`` files ``_toc.yml`` lists (root first), in the table's order."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8")) or {}
    names: list[str] = [toc["root"]] if toc.get("root") else []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("file"), str):
                names.append(node["file"])
            for value in node.values():
                if isinstance(value, (list, dict)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({key: value for key, value in toc.items() if key != "root"})
    paths = []
    for name in names:
        path = root / (name if name.endswith(".md") else f"{name}.md")
        if path.is_file() and path not in paths:
            paths.append(path)
    return paths


def read_notebook(path: Path):
    """The notebook myst-nb makes of ``path`` (None if it is plain Markdown, not a notebook)."""
    from myst_nb.core.read import is_myst_markdown_notebook, read_myst_markdown_notebook

    text = path.read_text(encoding="utf-8")
    if not is_myst_markdown_notebook(text):
        return None
    return read_myst_markdown_notebook(text, add_source_map=True, path=str(path))


def pass_seconds(stems: list[str], preset: str) -> float:
    """Measured cost of running ``stems`` one after the other on one kernel of the pass: their
    :data:`~lincollapse.experiments.PARALLEL_CHAPTER_SECONDS`, else the 2-core
    :func:`~lincollapse.experiments.build_seconds` (0 for chapters never measured)."""
    from lincollapse.experiments import PARALLEL_CHAPTER_SECONDS, build_seconds

    measured = PARALLEL_CHAPTER_SECONDS.get(preset, {})
    if all(stem in measured for stem in stems):
        return float(sum(measured[stem] for stem in stems))
    return build_seconds(stems, preset)


def expected_seconds(jobs: list[Job], kernels: int) -> float:
    """The pass's expected wall time: the jobs dealt in order to the first free kernel, as
    :func:`execute_chapters` deals them, with their measured costs; the last kernel to finish."""
    loads = [0.0] * kernels
    for job in jobs:
        loads[loads.index(min(loads))] += job.seconds
    return max(loads)


def plan_jobs(
    chapters: list[Path], preset: str, shared: list[frozenset[str]] | None = None
) -> list[Job]:
    """Group ``chapters`` into jobs (a shared group stays on one kernel, in file-name order) and
    order the jobs longest first by their measured cost in the pass at ``preset``."""
    from lincollapse.experiments import SHARED_SECONDS

    if shared is None:
        shared = list(SHARED_SECONDS.get(preset, {}))
    by_stem = {path.stem: path for path in chapters}
    jobs: list[Job] = []
    placed: set[str] = set()
    for group in shared:
        members = sorted(stem for stem in group if stem in by_stem)
        if len(members) > 1:
            jobs.append(Job([by_stem[s] for s in members], pass_seconds(members, preset)))
            placed.update(members)
    for path in chapters:
        if path.stem not in placed:
            jobs.append(Job([path], pass_seconds([path.stem], preset)))
    jobs.sort(key=lambda job: -job.seconds)  # stable: equal costs keep the table's order
    return jobs


def _ignore_interrupts() -> None:
    """Worker initializer: Ctrl-C goes to the build, which stops the workers and their kernels
    (a worker interrupted inside nbclient can fail in its clean-up instead of stopping)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _execute_chapter(
    path: Path, kernel: int, environment: dict[str, str], timeout: int, started: float, preset: str
) -> ChapterRun:
    """In a worker process: execute one chapter in a fresh kernel."""
    from jupyter_cache.executors.utils import single_nb_execution

    from tools.build_book import chapter_title, minutes

    os.environ.update(environment)  # the kernel started below inherits it
    expected = pass_seconds([path.stem], preset)
    cost = f"measured ≈ {minutes(expected)} in the pass" if expected else "no measured cost"
    print(
        f"lincollapse: parallel pass, kernel {kernel}: "
        f"{chapter_title(path.read_text(encoding='utf-8'), path.stem)} ({path.stem}): "
        f"executing; {cost}; build elapsed {minutes(time.time() - started)}",
        flush=True,
    )
    begin = time.time()
    try:
        result = single_nb_execution(
            read_notebook(path),
            cwd=str(path.parent),
            timeout=None if timeout < 0 else timeout,
            allow_errors=False,
            meta_override=True,
        )
    except Exception as error:  # noqa: BLE001 - any failure leaves the chapter to Sphinx
        error_text = f"{type(error).__name__}: {error}"
        return ChapterRun(path, time.time() - begin, kernel, error=error_text)
    if result.err is not None:
        last = (str(result.err).strip().splitlines() or [""])[-1]
        return ChapterRun(path, result.time, kernel, error=f"{type(result.err).__name__}: {last}")
    return ChapterRun(path, result.time, kernel, notebook=result.nb)


def execute_chapters(
    root: Path,
    cache_path: Path,
    preset: str,
    environment: dict[str, str],
    *,
    timeout: int = -1,
    kernels: int | None = None,
    started: float | None = None,
) -> PassReport | None:
    """Execute the chapters not yet in the execution cache at ``cache_path`` on ``kernels``
    kernels; store each in the cache as it finishes. ``environment`` is the kernels' (the
    build's) environment; its torch thread count is replaced by :func:`threads_per_kernel`.
    Returns ``None`` when there is nothing to do in parallel (one kernel).

    A chapter that fails is left to Sphinx, and so are the chapters of its job after it. On
    Ctrl-C the workers and their kernels are stopped and ``KeyboardInterrupt`` is raised;
    what finished is in the cache.
    """
    from jupyter_cache import get_cache

    from tools.build_book import minutes

    kernels = kernel_count(kernels)
    if kernels < 2:
        return None
    started = time.time() if started is None else started
    threads = threads_per_kernel(kernels)
    environment = environment | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cache = get_cache(str(cache_path))
    report = PassReport(kernels, threads)
    pending = []
    for path in toc_chapters(root):
        notebook = read_notebook(path)
        if notebook is None:
            continue
        try:
            cache.match_cache_notebook(notebook)
            report.cached.append(path)
        except KeyError:
            pending.append(path)
    if not pending:
        return report
    jobs = plan_jobs(pending, preset)
    expected = expected_seconds(jobs, kernels)
    print(
        f"lincollapse: parallel pass: {len(pending)} chapter(s) in {len(jobs)} job(s) on "
        f"{kernels} kernels × {threads} torch thread(s) ({KERNELS_VAR}=1 turns it off)"
        + (f"; measured ≈ {minutes(expected)} on 2 cores" if expected else ""),
        flush=True,
    )
    begin = time.time()
    pool = futures.ProcessPoolExecutor(max_workers=kernels, initializer=_ignore_interrupts)
    queue = [list(job.chapters) for job in jobs]
    running: dict[futures.Future, tuple[int, list[Path]]] = {}  # kernel, its job from here on
    free = list(range(1, kernels + 1))

    def submit(kernel: int, chapters: list[Path]) -> None:
        future = pool.submit(
            _execute_chapter, chapters[0], kernel, environment, timeout, started, preset
        )
        running[future] = (kernel, chapters)

    try:
        while queue or running:
            while queue and free:
                submit(free.pop(0), queue.pop(0))
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in done:
                kernel, chapters = running.pop(future)
                rest = chapters[1:]
                try:
                    run = future.result()
                except Exception as error:  # noqa: BLE001 - a worker that died
                    run = ChapterRun(chapters[0], 0.0, kernel, error=f"{type(error).__name__}")
                _store(cache, run, report)
                if rest and run.error is None:
                    submit(kernel, rest)  # the job's next chapter, on the same kernel
                else:
                    free.append(kernel)
    except KeyboardInterrupt:
        _stop(pool)
        raise
    pool.shutdown(wait=True)
    report.seconds = time.time() - begin
    return report


def _stop(pool: futures.ProcessPoolExecutor) -> None:
    """Stop the workers and every process they started (kernels run in their own sessions,
    so Ctrl-C does not reach them)."""
    import psutil

    workers = list(getattr(pool, "_processes", {}).values())  # noqa: SLF001
    doomed = []
    for worker in workers:
        try:
            process = psutil.Process(worker.pid)
            doomed += process.children(recursive=True) + [process]
        except psutil.NoSuchProcess:
            continue
    for process in doomed:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(doomed, timeout=10)
    pool.shutdown(wait=False, cancel_futures=True)


def _store(cache, run: ChapterRun, report: PassReport) -> None:
    from jupyter_cache.base import CacheBundleIn

    if run.error is not None:
        report.failed.append(run)
        print(
            f"lincollapse: parallel pass, kernel {run.kernel}: {run.path.stem}: FAILED after "
            f"{run.seconds:.0f} s ({run.error}); Sphinx executes it again and reports the cell",
            file=sys.stderr,
            flush=True,
        )
        return
    cache.cache_notebook_bundle(
        CacheBundleIn(run.notebook, str(run.path), data={"execution_seconds": run.seconds}),
        check_validity=False,
        overwrite=True,
    )
    run.notebook = None
    report.executed.append(run)
    print(
        f"lincollapse: parallel pass, kernel {run.kernel}: {run.path.stem}: executed in "
        f"{run.seconds:.0f} s",
        flush=True,
    )
