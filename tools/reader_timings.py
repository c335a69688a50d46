"""Time every chapter top to bottom as a reader runs it: one core, cold cache, reader preset.

Each chapter (``book/<name>.md``) is converted by Jupytext and executed by ``jupyter nbconvert
--execute`` under ``taskset -c 0`` with ``OMP_NUM_THREADS=1``, ``LINCOLLAPSE_PRESET`` unset and
its own empty results cache. Prints a Markdown table: wall time, the CPU time of the kernel and
converter (children's user + system time, which load on a shared machine does not inflate), and
the load average before and after each chapter::

    .venv/bin/python tools/reader_timings.py [chapter ...]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 60.0


def time_chapter(chapter: str, tmp: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, error text or "") of running ``chapter`` once."""
    notebook = tmp / f"{chapter}.ipynb"
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [
            str(bin_dir / "jupytext"),
            "--quiet",
            "--to",
            "ipynb",
            "-o",
            str(notebook),
            str(ROOT / "book" / f"{chapter}.md"),
        ],
        check=True,
    )
    cache = tmp / f"cache-{chapter}"
    cache.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "LINCOLLAPSE_PRESET"}
    env |= {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "LINCOLLAPSE_CACHE_DIR": str(cache),
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            str(bin_dir / "jupyter"),
            "nbconvert",
            "--execute",
            "--to",
            "notebook",
            "--output",
            str(tmp / f"{chapter}.out.ipynb"),
            "--ExecutePreprocessor.timeout=1800",
            str(notebook),
        ],
        env=env,
        cwd=ROOT / "book",
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, "" if run.returncode == 0 else run.stderr[-2000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*")
    args = parser.parse_args(argv)
    chapters = args.chapters or sorted(p.stem for p in (ROOT / "book").glob("*.md"))
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(
        f"{now}, {machine}; each chapter on core 0 (taskset -c 0), OMP_NUM_THREADS=1, "
        "empty results cache\n"
    )
    print("| chapter | wall (s) | CPU (s) | load average before → after | ≤ 60 s |")
    print("|---|---|---|---|---|")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="reader-timings-") as tmp:
        for chapter in chapters:
            load_before = os.getloadavg()[0]
            wall, cpu, error = time_chapter(chapter, Path(tmp))
            load_after = os.getloadavg()[0]
            verdict = "yes" if wall <= BUDGET else ("CPU only" if cpu <= BUDGET else "NO")
            if error:
                verdict, failed = "ERROR", failed + 1
            print(
                f"| {chapter} | {wall:.0f} | {cpu:.0f} | {load_before:.1f} → {load_after:.1f} "
                f"| {verdict} |",
                flush=True,
            )
            if error:
                print(error, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
