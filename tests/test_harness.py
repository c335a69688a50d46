"""The harness has teeth: a chapter with a failing cell fails both the book build and nbval.

Each check runs twice, on a chapter that raises and on the same chapter fixed, so a harness that
always fails (or never executes) cannot pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHAPTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A chapter

```{{code-cell}} ipython3
value = 1 + 1
```

```{{code-cell}} ipython3
{body}
```
"""


def make_book(folder: Path, body: str) -> Path:
    """A one-chapter book using the project's own _config.yml and bibliography."""
    (folder / "book").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", folder / "_config.yml")
    shutil.copy(ROOT / "book" / "references.bib", folder / "book" / "references.bib")
    (folder / "_toc.yml").write_text("format: jb-book\nroot: book/chapter\n")
    chapter = folder / "book" / "chapter.md"
    chapter.write_text(CHAPTER.format(body=body))
    return chapter


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``command`` in ``cwd``, with the repository root importable (for ``tools``)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"PYTHONPATH": path}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def build(folder: Path, **env: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "tools.build_book", str(folder), "--mathjax", "cdn"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | env,
    )
    return result.returncode, result.stdout + result.stderr


def test_book_build_fails_on_a_failing_cell_and_names_chapter_cell_cause_and_fix(tmp_path):
    chapter = make_book(tmp_path, "raise RuntimeError('deliberately broken cell')")
    code, output = build(tmp_path)
    assert code != 0, output[-3000:]
    last = output[output.index("lincollapse: the book did not build") :]
    line = chapter.read_text().splitlines().index("raise RuntimeError('deliberately broken cell')")
    assert f"chapter “A chapter” ({chapter})" in last
    assert f"code cell 2 at line {line + 1} (`raise RuntimeError(" in last
    assert "cause: RuntimeError: deliberately broken cell" in last
    assert "fix:" in last and "rerun `make book`" in last and "LINCOLLAPSE_PRESET=fast" in last


def test_book_build_shows_progress_and_resumes_from_the_execution_cache(tmp_path):
    make_book(tmp_path, "print(value)")
    code, output = build(tmp_path)
    assert code == 0, output[-3000:]
    assert (tmp_path / "_build" / "html" / "book" / "chapter.html").is_file()
    assert "lincollapse: [1/1] A chapter (book/chapter): reading" in output
    assert "lincollapse: [1/1] A chapter: executed in" in output
    assert "per-cell timeout" in output and "OPENBLAS_NUM_THREADS=1" in output
    assert "1 executed, 0 from the execution cache" in output
    shutil.rmtree(tmp_path / "_build" / ".doctrees")  # Sphinx forgets; the caches remain
    code, output = build(tmp_path)
    assert code == 0, output[-3000:]
    assert "lincollapse: [1/1] A chapter: from the execution cache" in output
    assert "0 executed, 1 from the execution cache" in output


def test_chapters_run_on_two_kernels_at_once_and_sphinx_reads_them_from_the_cache(tmp_path):
    make_book(tmp_path, "print('first chapter', value)")
    second = tmp_path / "book" / "second.md"
    second.write_text(CHAPTER.format(body="print('second chapter', value)"))
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/chapter\nchapters:\n  - file: book/second\n"
    )
    code, output = build(tmp_path, LINCOLLAPSE_BUILD_KERNELS="2")
    assert code == 0, output[-3000:]
    assert "parallel pass: 2 chapter(s) in 2 job(s) on 2 kernels" in output
    assert "kernel 1:" in output and "kernel 2:" in output
    assert output.count("executed in this build's parallel pass") == 2  # not executed again
    assert "2 executed, 0 from the execution cache" in output
    html = (tmp_path / "_build" / "html" / "book" / "second.html").read_text(encoding="utf-8")
    assert "second chapter 2" in html
    code, output = build(tmp_path, LINCOLLAPSE_BUILD_KERNELS="1")  # no pass: Sphinx as before
    assert code == 0 and "parallel pass" not in output, output[-3000:]


def test_an_interrupt_in_the_parallel_pass_stops_its_kernels_and_keeps_what_finished(tmp_path):
    """Ctrl-C while one chapter is done and the other still runs: the running kernel is stopped
    (kernels run in their own sessions, so Ctrl-C itself does not reach them), the build says how
    to continue, and the rerun takes the finished chapter from the execution cache."""
    import signal
    import time

    import psutil

    make_book(tmp_path, "print('quick chapter', value)")
    pid_file = tmp_path / "kernel.pid"
    slow = tmp_path / "book" / "slow.md"
    slow.write_text(
        CHAPTER.format(
            body=f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
            "time.sleep(600)"
        )
    )
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/chapter\nchapters:\n  - file: book/slow\n"
    )
    log = tmp_path / "build.log"
    with log.open("w") as out:
        # As a terminal starts it: with Ctrl-C's default handling, even when this test runs in a
        # background job (where SIGINT is ignored and a child would inherit that).
        start = (
            "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
            " sys.argv[0] = 'build_book'; runpy.run_module('tools.build_book', run_name='__main__')"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", start, str(tmp_path), "--mathjax", "cdn"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {"LINCOLLAPSE_BUILD_KERNELS": "2"},
            start_new_session=True,  # its own process group, as a terminal's Ctrl-C sees it
        )
    deadline = time.time() + 300
    while time.time() < deadline and not (
        pid_file.is_file() and "chapter: executed in" in log.read_text()
    ):
        time.sleep(0.5)
    assert pid_file.is_file(), log.read_text()[-3000:]
    kernel = int(pid_file.read_text())
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=120) == 130, log.read_text()[-3000:]
    assert "interrupted" in log.read_text() and "rerun `make book`" in log.read_text()
    gone, alive = (
        psutil.wait_procs([psutil.Process(kernel)], timeout=30)
        if psutil.pid_exists(kernel)
        else ([], [])
    )
    assert not alive, "the slow chapter's kernel is still running"
    slow.write_text(CHAPTER.format(body="print('slow chapter, now quick', value)"))
    code, output = build(tmp_path, LINCOLLAPSE_BUILD_KERNELS="2")
    assert code == 0, output[-3000:]
    assert "parallel pass: 1 chapter(s) in 1 job(s)" in output  # the quick one was kept
    assert "1 already cached" in output


def test_a_slow_cell_fails_only_with_a_timeout_that_was_asked_for(tmp_path):
    make_book(tmp_path, "import time\ntime.sleep(20)")
    code, output = build(tmp_path, LINCOLLAPSE_CELL_TIMEOUT="3")
    assert code != 0, output[-3000:]
    assert "per-cell timeout 3 s" in output
    last = output[output.index("lincollapse: the book did not build") :]
    assert "code cell 2" in last and "CellTimeoutError" in last and "(3 s)" in last
    assert "LINCOLLAPSE_CELL_TIMEOUT=none" in last


@pytest.mark.parametrize(
    ("body", "fails"),
    [("raise RuntimeError('deliberately broken cell')", True), ("print(value)", False)],
)
def test_nbval_fails_on_a_failing_cell(tmp_path, body, fails):
    chapter = make_book(tmp_path, body)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "tools.nbval_jupytext",
        "-p",
        "no:cacheprovider",
        "--nbval-lax",
        "--nbval-current-env",
        "--rootdir",
        str(tmp_path),
        str(chapter),
    ]
    result = run(command, tmp_path)
    output = result.stdout + result.stderr
    if fails:
        assert result.returncode == 1, output[-3000:]
        assert "deliberately broken cell" in output and "1 failed, 1 passed" in output
    else:
        assert result.returncode == 0, output[-3000:]
        assert "2 passed" in output
