"""Compare every figure's fast-preset arrays between two revisions, bitwise.

    python tools/compare_figures.py REV_A REV_B [FIGURE ...]

Each revision is checked out into a temporary worktree and computes the figures (all, or the
ones named) with the ``fast`` preset, one thread, and an empty results cache, so every number
is computed by that revision's code. The arrays of each result (as ``python -m lincollapse run``
stores them) are then compared bit for bit. Exit status 0 when every figure matches, 1 when
any differs (the differing arrays are listed), 2 on a usage error. A refactoring commit should
pass; a commit that changes behaviour on purpose lands on its own and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the checked-out revision: computes the figures, writes one .npz each.
CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import torch
torch.set_num_threads(1)
import matplotlib
matplotlib.use("Agg")
from lincollapse.experiments import load_all
from lincollapse.cli import flatten
out = Path(sys.argv[1]); names = sys.argv[2:]
figures = load_all()
times = {}
for name in names or sorted(figures):
    spec = figures[name]
    start = time.perf_counter()
    config = spec.config.for_preset("fast") if spec.config is not None else None
    result = spec.compute(config) if config is not None else spec.compute()
    arrays, _ = flatten(result)
    np.savez(out / f"{name}.npz", **arrays)
    times[name] = round(time.perf_counter() - start, 2)
    print(f"  {name}: {times[name]} s", flush=True)
(out / "times.json").write_text(json.dumps(times))
"""


def compute(revision: str, workdir: Path, names: list[str]) -> Path:
    tree, out, cache = workdir / f"tree-{revision}", workdir / f"out-{revision}", workdir / "c"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), revision],
        check=True,
    )
    out.mkdir()
    cache = workdir / f"cache-{revision}"
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "LINCOLLAPSE_PRESET": "fast",
        "LINCOLLAPSE_CACHE_DIR": str(cache),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "LINCOLLAPSE_QUIET": "1",
    }
    print(f"{revision}: computing figures", flush=True)
    try:
        subprocess.run(
            [sys.executable, "-c", CHILD, str(out), *names], cwd=tree, env=env, check=True
        )
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
        )
    return out


def _is_timing(key: str) -> bool:
    """Wall times recorded in a result: they differ between any two runs."""
    return key.split(".")[-1].endswith("seconds")


def differences(a: Path, b: Path) -> dict[str, list[str]]:
    """Per figure present in both, the arrays that differ (timings excluded)."""
    found = {}
    for path in sorted(a.glob("*.npz")):
        other = b / path.name
        if not other.is_file():
            continue
        with np.load(path) as x, np.load(other) as y:
            bad = sorted(set(x.files) ^ set(y.files))
            for key in sorted(k for k in set(x.files) & set(y.files) if not _is_timing(k)):
                u, v = x[key], y[key]
                same = (
                    u.shape == v.shape
                    and u.dtype == v.dtype
                    and (np.array_equal(u, v, equal_nan=u.dtype.kind in "fc"))
                )
                if not same:
                    bad.append(key)
        if bad:
            found[path.stem] = bad
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    first, second, *names = argv
    with tempfile.TemporaryDirectory(prefix="compare-figures-") as tmp:
        workdir = Path(tmp)
        outs = [compute(revision, workdir, names) for revision in (first, second)]
        found = differences(*outs)
        times = [json.loads((o / "times.json").read_text()) for o in outs]
    added, removed = sorted(set(times[1]) - set(times[0])), sorted(set(times[0]) - set(times[1]))
    for label, names_ in (("only in " + second, added), ("only in " + first, removed)):
        if names_:
            print(f"{label}: {', '.join(names_)}")
    total = len(set(times[0]) & set(times[1]))
    if not found:
        print(f"all {total} figures in both are bitwise identical between {first} and {second}")
        return 0
    for name, keys in found.items():
        print(f"DIFFERENT {name}: {', '.join(keys)}")
    print(f"{len(found)} of {total} figures differ")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
