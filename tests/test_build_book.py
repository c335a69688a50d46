"""The book build's messages: per-cell timeout, chapter titles, failing cells, summaries.

``tests/test_harness.py`` runs real builds; these check the pieces on their own, in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from lincollapse.experiments import CHAPTER_SECONDS
from tools.build_book import (
    CELL_TIMEOUT_VAR,
    build_summary,
    cell_timeout,
    chapter_title,
    describe_failure,
    failure_message,
    locate_cell,
    write_build_config,
)

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "deep_vae.md"


@pytest.mark.parametrize(("preset", "seconds"), [("fast", 900), ("book", -1), ("paper", -1)])
def test_no_per_cell_timeout_for_the_book_and_paper_presets(preset, seconds, monkeypatch):
    monkeypatch.delenv(CELL_TIMEOUT_VAR, raising=False)
    assert cell_timeout(preset, 900) == seconds


@pytest.mark.parametrize(("value", "seconds"), [("none", -1), ("3600", 3600), ("0", -1)])
def test_the_timeout_can_be_set(value, seconds, monkeypatch):
    monkeypatch.setenv(CELL_TIMEOUT_VAR, value)
    assert cell_timeout("book", 900) == seconds


def test_a_bad_timeout_names_the_variable(monkeypatch):
    monkeypatch.setenv(CELL_TIMEOUT_VAR, "soon")
    with pytest.raises(SystemExit, match=CELL_TIMEOUT_VAR):
        cell_timeout("book", 900)


def test_the_build_configuration_carries_the_timeout(tmp_path, monkeypatch):
    import shutil

    import yaml

    monkeypatch.delenv(CELL_TIMEOUT_VAR, raising=False)
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    book = yaml.safe_load(write_build_config(tmp_path, "book").read_text())
    fast = yaml.safe_load(write_build_config(tmp_path, "fast").read_text())
    assert book["execute"]["timeout"] == -1 and fast["execute"]["timeout"] == 900
    assert book["sphinx"]["config"]["lincollapse_status_file"].endswith(".build-status.json")


def test_every_chapter_has_a_title_and_a_measured_cost():
    for path in sorted((ROOT / "book").glob("*.md")):
        if path.stem == "intro":
            continue
        title = chapter_title(path.read_text(encoding="utf-8"), "?")
        assert title != "?" and not title.startswith("The preset")
        assert CHAPTER_SECONDS["book"].get(path.stem), f"no measured cost for {path.stem}"
    assert chapter_title(CHAPTER.read_text(encoding="utf-8"), "?").startswith("Deep Gaussian VAEs")


def _code_cells():
    return [c for c in jupytext.read(CHAPTER).cells if c.cell_type == "code"]


@pytest.mark.parametrize("number", [1, 6, 13])
def test_a_timed_out_cell_is_located(number):
    cell = _code_cells()[number - 1]
    error = CellTimeoutError.error_from_timeout_and_cell("Cell execution timed out", 900, cell)
    found = locate_cell(CHAPTER, str(error))
    lines = CHAPTER.read_text(encoding="utf-8").splitlines()
    assert found["number"] == number
    assert lines[found["line"] - 1].strip() == cell.source.strip().splitlines()[0].strip()


def test_a_failed_cell_is_located_and_the_message_names_chapter_cell_cause_and_fix():
    cell = _code_cells()[5]
    error = CellExecutionError(
        f"An error occurred while executing the following cell:\n------------------\n"
        f"{cell.source}\n------------------\n\nValueError: bad",
        "ValueError",
        "bad input",
    )
    wrapped = RuntimeError(str(CHAPTER))
    wrapped.__cause__ = error
    failure = describe_failure(
        wrapped, docname="book/deep_vae", title="Deep VAEs", source=str(CHAPTER)
    )
    assert failure["kind"] == "CellExecutionError" and failure["cell"]["number"] == 6
    status = {"failure": failure, "chapters": [{"docname": "book/ppca", "executed": True}]}
    message = failure_message(status, {"hit": 3, "saved": 2})
    assert "chapter “Deep VAEs”" in message and "code cell 6" in message
    assert "cause: ValueError: bad input" in message
    assert "rerun `make book`" in message and "the 1 chapter(s) that finished" in message
    assert "the 2 training run(s) finished in it are in the results cache" in message


def test_a_timeout_message_says_how_to_lift_the_timeout():
    cell = _code_cells()[0]
    error = CellTimeoutError.error_from_timeout_and_cell("Cell execution timed out", 900, cell)
    failure = describe_failure(
        error, docname="book/deep_vae", title="Deep VAEs", source=str(CHAPTER), timeout=900
    )
    message = failure_message({"failure": failure, "chapters": []})
    assert "CellTimeoutError" in message and "(900 s)" in message
    assert f"{CELL_TIMEOUT_VAR}=none" in message and "LINCOLLAPSE_PRESET=fast" in message


def test_a_dead_kernel_is_not_blamed_on_memory_alone():
    """A kernel killed by an interrupt (the user's Ctrl-C, a job killed halfway) dies as one
    killed for memory does: the message names both and says to rerun, not only to free memory."""
    from nbclient.exceptions import DeadKernelError

    failure = describe_failure(
        DeadKernelError("Kernel died"), docname="book/deep_vae", title="Deep VAEs", source=None
    )
    message = failure_message({"failure": failure, "chapters": [{"executed": True}]})
    assert "interrupt" in message and "out of memory" in message
    assert "fix:   rerun `make book`" in message


def test_the_summary_counts_chapters_and_cache_traffic():
    status = {"chapters": [{"executed": True}, {"executed": False}, {"executed": False}]}
    line = build_summary(status, {"hit": 22, "saved": 0}, 75.0)
    assert "1 min 15 s" in line and "1 executed, 2 from the execution cache" in line
    assert "22 entries read, 0 computed and saved" in line and "resumed" not in line
    line = build_summary(status, {"hit": 3, "saved": 2, "resumed": 1}, 75.0)
    assert "2 computed and saved, 1 training(s) resumed from the state an interrupt left" in line


def test_a_rerun_counts_the_training_it_resumes(tmp_path, monkeypatch):
    """load_or_train logs "resumed" when an interrupted training of the same runs left a state."""
    import json

    from lincollapse import deep_runs
    from lincollapse.experiments.deep import DeepVAEConfig
    from lincollapse.results_cache import LOG_ENV_VAR, ResultsCache

    log = tmp_path / "log.jsonl"
    monkeypatch.setenv(LOG_ENV_VAR, str(log))
    config = DeepVAEConfig.for_preset("fast")
    cache = ResultsCache(tmp_path / "cache")
    runs = [(config.sigma2_fixed[0], False)]
    x, data_id = deep_runs.data_for(config)
    keys = [deep_runs.run_key(config, *runs[0], config.grid_schedule(), data_id)]
    partial = cache.partial_path({"runs": keys})
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"left by an interrupt")  # unreadable: ignored with a warning
    with pytest.warns(UserWarning, match="partial training state"):
        deep_runs.load_or_train(config, runs, cache=cache, device="cpu", progress=False)
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events == ["resumed", "saved"] and not partial.exists()


def test_build_seconds_counts_shared_work_once():
    """The build's estimate is the sum of the chapters' costs with shared runs counted once."""
    from lincollapse.experiments import SHARED_SECONDS, build_seconds

    book = CHAPTER_SECONDS["book"]
    (group, shared), *_ = SHARED_SECONDS["book"].items()
    assert build_seconds(sorted(group), "book") == sum(book[c] for c in group) - shared
    one = sorted(group)[0]
    assert build_seconds([one], "book") == book[one]
    assert build_seconds(list(book), "book") == sum(book.values()) - sum(
        s * (len(g) - 1) for g, s in SHARED_SECONDS["book"].items()
    )
    assert build_seconds(["no_such_chapter"], "book") == 0.0


def test_progress_names_each_chapter_its_measured_cost_and_the_elapsed_time(
    tmp_path, capsys, monkeypatch
):
    """The lines the build prints per chapter, from the Sphinx events, without a build."""
    import json
    import types

    import tools.build_book as build_book
    from tools.build_book import minutes

    status = tmp_path / "status.json"
    config = types.SimpleNamespace(lincollapse_preset="book", lincollapse_status_file=str(status))
    app = types.SimpleNamespace(config=config, env=None)
    now = [1000.0]
    monkeypatch.setattr(build_book.time, "time", lambda: now[0])
    build_book._progress_start(app)
    build_book._progress_plan(app, None, ["book/deep_vae", "book/intro"])
    now[0] = 1090.0  # 90 s into the build
    build_book._chapter_start(app, "book/deep_vae", [CHAPTER.read_text(encoding="utf-8")])
    now[0] = 1250.0  # the chapter took 160 s
    build_book._chapter_done(app, None)
    out = capsys.readouterr().out
    expected = minutes(CHAPTER_SECONDS["book"]["deep_vae"])
    assert f"2 chapter(s) to read (preset book); measured cost ≈ {expected}" in out
    assert "[1/2] Deep Gaussian VAEs" in out and "(book/deep_vae): reading" in out
    assert f"measured cost ≈ {expected} on 2 cores; build elapsed 1 min 30 s" in out
    assert out.splitlines()[-1].endswith("read in 2 min 40 s")
    record = json.loads(status.read_text())
    assert record["chapters"][0]["docname"] == "book/deep_vae"
    assert record["chapters"][0]["expected"] == CHAPTER_SECONDS["book"]["deep_vae"]


# ------------------------------------------------------------------ the parallel pass


def test_the_parallel_pass_keeps_shared_chapters_on_one_kernel_and_starts_the_longest_first():
    from tools.parallel_execution import plan_jobs

    chapters = [ROOT / "book" / f"{stem}.md" for stem in ("notation", "deep_vae", "checks")]
    chapters.append(ROOT / "book" / "beta_annealing.md")
    jobs = plan_jobs(chapters, "book", shared=[frozenset({"checks", "deep_vae"})])
    stems = [[path.stem for path in job.chapters] for job in jobs]
    # the shared pair is one job, in file-name order (the first trains what they share)
    assert ["checks", "deep_vae"] in stems and len(stems) == 3
    seconds = [job.seconds for job in jobs]
    assert seconds == sorted(seconds, reverse=True)
    book = CHAPTER_SECONDS["book"]
    pair = next(job for job in jobs if len(job.chapters) == 2)
    assert pair.seconds < book["checks"] + book["deep_vae"]  # what they share counted once
    assert stems[-1] == ["notation"]


def test_the_parallel_pass_reads_the_table_of_contents_in_order():
    from tools.parallel_execution import toc_chapters

    chapters = toc_chapters(ROOT)
    assert chapters[0] == ROOT / "book" / "intro.md"
    assert chapters[-1] == ROOT / "book" / "checks.md"
    assert len(chapters) == len(set(chapters)) == len(list((ROOT / "book").glob("*.md")))


@pytest.mark.parametrize(("value", "cores", "kernels"), [("", 2, 2), ("", 1, 1), ("3", 2, 3)])
def test_kernels_of_the_parallel_pass(value, cores, kernels, monkeypatch):
    import tools.parallel_execution as parallel

    monkeypatch.setattr(parallel, "available_cores", lambda: cores)
    assert parallel.kernel_count(environ={parallel.KERNELS_VAR: value}) == kernels


@pytest.mark.parametrize("value", ["two", "0", "-1"])
def test_a_bad_kernel_count_names_the_variable(value):
    from tools.parallel_execution import KERNELS_VAR, kernel_count

    with pytest.raises(SystemExit, match=KERNELS_VAR):
        kernel_count(environ={KERNELS_VAR: value})


def test_each_kernel_of_the_parallel_pass_gets_its_share_of_the_cores(monkeypatch):
    import tools.parallel_execution as parallel

    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    assert parallel.threads_per_kernel(2, environ={}) == 1
    assert parallel.threads_per_kernel(1, environ={}) == 2
    assert parallel.threads_per_kernel(2, environ={"OMP_NUM_THREADS": "2"}) == 2  # the user's


def test_the_parallel_pass_reads_a_chapter_as_myst_nb_does():
    """Same code cells and kernel: the execution cache matches it when Sphinx reads it."""
    from jupyter_cache import get_cache
    from myst_nb.core.config import NbParserConfig
    from myst_nb.core.read import create_nb_reader
    from myst_parser.config.main import MdParserConfig

    from tools.parallel_execution import read_notebook

    text = CHAPTER.read_text(encoding="utf-8")
    reader = create_nb_reader(str(CHAPTER), MdParserConfig(), NbParserConfig(), text)
    ours, theirs = read_notebook(CHAPTER), reader.read(text)
    cache = get_cache(str(Path(__import__("tempfile").mkdtemp()) / "cache"))
    assert cache.create_hashed_notebook(ours)[1] == cache.create_hashed_notebook(theirs)[1]
    assert read_notebook(ROOT / "README.md") is None  # plain Markdown is no notebook


def test_the_expected_time_of_the_pass_is_its_busiest_kernel():
    from tools.parallel_execution import Job, expected_seconds

    jobs = [Job([], seconds) for seconds in (5.0, 4.0, 3.0, 3.0)]
    # dealt to the first free kernel: 5 | 4, then 4 + 3 | 5 + 3
    assert expected_seconds(jobs, 2) == 8.0
    assert expected_seconds(jobs, 1) == 15.0
    assert expected_seconds(jobs, 4) == 5.0
