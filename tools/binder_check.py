"""Run every chapter the way a Binder reader does, and fail on an error or a slow chapter.

Steps, each as Binder (repo2docker) does it where it matters:

1. a fresh virtual environment, ``pip install -r .binder/requirements.txt`` from the repository
   root (``PIP_RETRIES=0``: when the PyTorch CPU index cannot be reached, pip gives up on it at
   once and must resolve every pin from the main index), then ``.binder/postBuild`` with the
   environment's ``bin`` first on ``PATH`` and a fresh ``HOME``;
2. JupyterLab from that environment on ONE core (``taskset -c 0``, ``OMP_NUM_THREADS=1``),
   ``LINCOLLAPSE_PRESET`` unset (the ``reader`` preset) and an empty results cache;
3. headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright) opens each chapter
   ``book/<name>.md`` through Jupytext's notebook view, waits for its kernel, runs every cell
   with JupyterLab's *Run → Run All Cells*, and waits until every code cell has run and the
   kernel is idle.

A chapter fails when an output shows a traceback (an error output, or stderr naming an
exception), when the kernel dies, or when running its cells takes longer than its budget
(``--budget``, 60 s). The per-chapter table of times is printed at the end. Chapters are run
from a copy of ``book/`` with autosave off, so the checkout is never written.

Usage::

    python tools/binder_check.py                       # every chapter, fresh environment
    python tools/binder_check.py --venv /tmp/binder ch  # reuse/keep that environment; one chapter
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# An error output, or stderr that names an exception; warnings on stderr are reported only.
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception)\b", re.M)
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
# JupyterLab settings of the check: every cell in the DOM (no windowing), no autosave.
SETTINGS = {
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
}


def log(message: str) -> None:
    print(message, flush=True)


def build_environment(venv: Path, python: str) -> None:
    """Fresh venv with .binder/requirements.txt installed (skipped when ``venv`` has it)."""
    stamp = venv / ".binder-installed"
    requirements = ROOT / ".binder" / "requirements.txt"
    if stamp.is_file() and stamp.read_text() == requirements.read_text():
        log(f"environment {venv}: already built from this requirements file")
        return
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    env = os.environ | {"PIP_RETRIES": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    start = time.perf_counter()
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(requirements)],
        check=True,
        cwd=ROOT,
        env=env,
    )
    log(f"installed .binder/requirements.txt in {time.perf_counter() - start:.0f} s")
    stamp.write_text(requirements.read_text())


def run_post_build(venv: Path, home: Path) -> dict[str, str]:
    """Run .binder/postBuild as Binder does; return the environment of the session."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LINCOLLAPSE_", "JUPYTER", "VIRTUAL_ENV", "PYTHON"))
    }
    env |= {
        "HOME": str(home),
        "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
        "PIP_RETRIES": "0",
    }
    subprocess.run(["bash", str(ROOT / ".binder" / "postBuild")], check=True, cwd=ROOT, env=env)
    overrides = home / ".jupyter" / "labconfig" / "default_setting_overrides.json"
    settings = json.loads(overrides.read_text()) if overrides.is_file() else {}
    for plugin, values in SETTINGS.items():
        settings.setdefault(plugin, {}).update(values)
    overrides.parent.mkdir(parents=True, exist_ok=True)
    overrides.write_text(json.dumps(settings, indent=1))
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_lab(env: dict[str, str], root_dir: Path, cache: Path, port: int, token: str):
    """JupyterLab on core 0, one thread, cold cache, reader preset; returns the process."""
    lab_env = env | {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "LINCOLLAPSE_CACHE_DIR": str(cache),
    }
    lab_env.pop("LINCOLLAPSE_PRESET", None)
    command = [
        "taskset",
        "-c",
        "0",
        "jupyter",
        "lab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.open_browser=False",
    ]
    if os.geteuid() == 0:  # CI runs as root; Binder's notebook user is not
        command.append("--allow-root")
    process = subprocess.Popen(
        command, env=lab_env, cwd=root_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited: {process.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError("JupyterLab did not answer within 120 s")


def shut_down_kernels(port: int, token: str) -> None:
    base = f"http://127.0.0.1:{port}/api"
    sessions = json.loads(urllib.request.urlopen(f"{base}/sessions?token={token}").read())
    for session in sessions:
        request = urllib.request.Request(
            f"{base}/sessions/{session['id']}?token={token}", method="DELETE"
        )
        urllib.request.urlopen(request).read()


def run_chapter(browser, port: int, token: str, chapter: str, budget: float) -> dict:
    """Open ``chapter`` as a notebook, Run All, wait; return its time and problems."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    result = {"chapter": chapter, "seconds": float("nan"), "cells": 0, "errors": [], "warnings": 0}
    try:
        # A workspace of its own, reset: nothing reopened from the previous chapter.
        page.goto(
            f"http://127.0.0.1:{port}/lab/workspaces/check-{chapter}/tree/book/{chapter}.md"
            f"?reset&token={token}"
        )
        page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=120_000)
        # The kernel has started when the toolbar's status reads idle.
        page.wait_for_function(
            """() => {
                const s = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) '
                    + '.jp-Notebook-ExecutionIndicator');
                return s && s.getAttribute('data-status') === 'idle';
            }""",
            timeout=120_000,
        )
        cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell").count()
        result["cells"] = cells
        page.wait_for_timeout(1000)  # a dialog opened on load (e.g. no kernel) shows by now
        if page.locator(".jp-Dialog").count():
            text = page.locator(".jp-Dialog").first.inner_text()
            result["errors"].append(f"dialog on opening: {text[:300]}")
            return result
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        start = time.perf_counter()
        # Done: the kernel is idle, no cell is queued or running, and one has run; or a dialog
        # (a dead kernel) opened. After an error JupyterLab clears the queue, so this ends too.
        done = """() => {
            const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
            if (document.querySelector('.jp-Dialog') !== null) return true;
            const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                .map(p => p.textContent.trim());
            const status = panel.querySelector('.jp-Notebook-ExecutionIndicator');
            return status !== null && status.getAttribute('data-status') === 'idle'
                && !prompts.includes('[*]:') && prompts.some(p => /\\[\\d+\\]/.test(p));
        }"""
        limit = max(4 * budget, budget + 120)
        try:
            page.wait_for_function(done, timeout=limit * 1000, polling=250)
        except Exception:  # noqa: BLE001 - report a hang as a failure, with what ran
            result["errors"].append(f"not finished after {limit:.0f} s")
        result["seconds"] = time.perf_counter() - start
        if page.locator(".jp-Dialog").count():
            text = page.locator(".jp-Dialog").first.inner_text()
            result["errors"].append(f"dialog: {text[:300]}")
        unrun = page.evaluate(
            """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) '
                + '.jp-CodeCell .jp-InputPrompt')].filter(p => !/\\[\\d+\\]/.test(p.textContent))
                .length"""
        )
        if unrun:
            result["errors"].append(f"{unrun} code cell(s) did not run")
        for text in page.locator(
            f".jp-NotebookPanel:not(.lm-mod-hidden) {STDERR}"
        ).all_inner_texts():
            if ERROR_TEXT.search(text):
                result["errors"].append(text.strip()[-1500:])
            else:
                result["warnings"] += 1
        if result["seconds"] > budget:
            result["errors"].append(f"{result['seconds']:.0f} s: over the budget of {budget:.0f} s")
    finally:
        page.close(run_before_unload=False)
        shut_down_kernels(port, token)
    return result


def chapters_of(names: list[str]) -> list[str]:
    available = sorted(p.stem for p in (ROOT / "book").glob("*.md"))
    if not names:
        return available
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise SystemExit(f"unknown chapter(s) {unknown}; valid: {', '.join(available)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help="chapter names (default: every book/*.md)")
    parser.add_argument("--venv", type=Path, help="environment folder to build or reuse")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per chapter")
    parser.add_argument("--python", default=shutil.which("python3.11") or sys.executable)
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"{CHROMIUM} not found; install Debian's chromium package")
    from playwright.sync_api import sync_playwright

    chapters = chapters_of(args.chapters)
    with tempfile.TemporaryDirectory(prefix="binder-check-") as tmp:
        tmp = Path(tmp)
        venv = args.venv or tmp / "venv"
        build_environment(venv, args.python)
        env = run_post_build(venv, tmp / "home")
        root_dir, cache = tmp / "root", tmp / "cache"
        shutil.copytree(ROOT / "book", root_dir / "book")
        cache.mkdir()
        port, token = free_port(), os.urandom(12).hex()
        lab = start_lab(env, root_dir, cache, port, token)
        results = []
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
                for chapter in chapters:
                    if "{code-cell}" not in (ROOT / "book" / f"{chapter}.md").read_text():
                        log(f"{chapter}: no code cells, nothing to run")
                        continue
                    log(f"{chapter}: running every cell through JupyterLab ...")
                    results.append(run_chapter(browser, port, token, chapter, args.budget))
                    r = results[-1]
                    log(
                        f"{chapter}: {r['seconds']:.1f} s, {r['cells']} code cells, "
                        f"{len(r['errors'])} problem(s)"
                    )
                browser.close()
        finally:
            lab.terminate()
            try:
                lab.wait(timeout=30)
            except subprocess.TimeoutExpired:
                lab.kill()
    load = os.getloadavg()
    log(
        f"\nchapters run in JupyterLab on one core (budget {args.budget:.0f} s; load average "
        f"{load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f})"
    )
    log(f"{'chapter':<26} {'seconds':>8} {'cells':>6} {'warnings':>9}  result")
    for r in results:
        verdict = "ok" if not r["errors"] else "FAILED"
        row = f"{r['chapter']:<26} {r['seconds']:>8.1f} {r['cells']:>6d} {r['warnings']:>9d}"
        log(f"{row}  {verdict}")
    failed = [r for r in results if r["errors"]]
    for r in failed:
        log(f"\n{r['chapter']}:")
        for problem in r["errors"]:
            log("  " + problem.replace("\n", "\n  "))
    log(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
