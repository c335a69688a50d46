"""Benchmarks: ``python -m lincollapse bench <subcommand> [--preset book]``.

Subcommands
-----------
``linear``
    Trains the linear VAE for every latent size of the figure *likelihood vs latent size*
    (:class:`lincollapse.experiments.linear_vae.LikelihoodVsLatentSizeConfig` for the preset) with
    the figure's trainer (``ascend_elbo``: no eigendecomposition, no rotation) and with the
    rotation-aided fast path, and prints, per q and trainer: steps, ELBO evaluations, CPU and
    wall seconds, achieved GFLOP/s (from an analytic count of one ELBO-and-gradient
    evaluation), the gap to ℓ*(q) and the off-diagonal ratio of the leading Gram block; then the
    totals, and the GFLOP/s of a raw float64 matmul of similar size on this machine.
``training``
    Times both experiments of the part *Training the linear VAE* at the preset and prints
    seconds, steps and the final gap to ℓ*(q) of every curve.
``deep``
    Times Adam steps of the deep VAE's σ² grid for every preset (``--preset`` is ignored: the
    table compares them) in both layouts side by side — a loop over ordinary modules and one
    batched model — with seconds per step, achieved GFLOP/s against a raw ``torch.bmm`` of the
    first layer's shape, the layout training picks here, projected grid and long-run times.
``threads``
    Computes figures (``--figure``, repeatable; default ``ppca-collapsed-vs-sigma2`` and
    ``likelihood-vs-latent-size``) at the preset ``--repeat`` times with numpy's BLAS on every
    core (the default) and as many times on one thread (the policy of
    :mod:`lincollapse.threads`), interleaved in one fresh process with an empty results cache,
    and prints their compute times and the load average.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from lincollapse.deep_runs import data_for
from lincollapse.deep_vae import build_runs, choose_layout
from lincollapse.experiments.deep import DeepVAEConfig
from lincollapse.presets import preset_banner


def linear_flops_per_evaluation(
    d: int, q: int, optimiser: str, encoder: str, basis: str = "eigen"
) -> float:
    """Estimated floating-point operations of one ELBO-and-gradient evaluation.

    ``encoder="optimal"`` in the eigenbasis (the rotation fast path: ELBO* with S diagonal and
    its hand-written gradient): one (q × d)·(d × 2q) product forward and one (d × 2q)·(2q × q)
    product for the gradient (4 d q² each), a Cholesky factor and inverse and two q × q
    products (≈ 6 q³ together): ≈ 8 d q² + 6 q³. ``basis="pixels"`` (:func:`ascend_elbo`, d the
    number of non-constant pixels) adds the product S W: 2 d² q. ``encoder="learned"``:
    forward V S (2 q d² in the pixel basis, d q in the eigenbasis), V S Vᵀ and WᵀW (2 d q²
    each), backward about twice the forward.
    """
    if encoder == "optimal":
        return 8.0 * d * q * q + 6.0 * q**3 + (2.0 * d * d * q if basis == "pixels" else 0.0)
    pixels = optimiser == "adam" or basis == "pixels"
    products = 4.0 * d * q * q + (2.0 * q * d * d if pixels else 2.0 * d * q)
    return 3.0 * products


def reference_gflops(d: int, q: int, repeats: int = 20) -> float:
    """GFLOP/s of a float64 (q × d) @ (d × q) matmul, the dominant product of the ELBO."""
    q = max(q, 1)
    a = torch.randn(q, d, dtype=torch.float64)
    b = torch.randn(d, q, dtype=torch.float64)
    a @ b  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        a @ b
    seconds = max(time.process_time() - start, 1e-9) / repeats
    return 2.0 * d * q * q / seconds / 1e9


# The rotation-aided fast path (train_linear_vae, encoder="optimal") at the settings the book
# used before the figures moved to ascend_elbo: never the evidence, benchmarked for comparison.
FAST_PATH = {"optimiser": "lbfgs", "encoder": "optimal", "steps": 800, "tolerance": 1e-6}


def bench_linear(preset: str, out: Callable[[str], None] = print) -> float:
    """Benchmark the linear VAE's trainers for ``preset``; print the table; return CPU seconds.

    Per latent size of the figure *likelihood vs latent size*: the chapter's trainer
    (:func:`~lincollapse.linear_vae_training.ascend_elbo` with the preset's options: no
    eigendecomposition, no rotation) and the rotation fast path (:data:`FAST_PATH`). Columns:
    optimiser steps, ELBO evaluations, CPU and wall seconds, GFLOP/s (analytic count / CPU
    time), the gap ℓ*(q) − ELBO, and the off-diagonal ratio of the leading Gram block of W.
    CPU time is what one free core would take with one thread; wall time depends on the load.
    """
    from lincollapse import linear_vae, linear_vae_training, ppca
    from lincollapse.data import load_mnist, numerical_rank
    from lincollapse.experiments.linear_vae import LikelihoodVsLatentSizeConfig

    config = LikelihoodVsLatentSizeConfig.for_preset(preset)
    data = load_mnist(config.n, seed=config.seed)
    spectrum = ppca.data_spectrum(data.images)  # for ℓ*(q) and the fast path only
    active, _ = numerical_rank(data.images.var(axis=0))  # the pixels ascend_elbo trains
    out(f"linear VAE benchmark, preset {preset}: {data.description}")
    out(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s), "
        f"load average {_load()}"
    )
    out(
        "ascend_elbo: L-BFGS on ELBO*(W, σ²), encoder in closed form, pixel basis, random "
        "start — no eigendecomposition, no rotation (the figures' trainer)"
    )
    out(
        "fast path:   train_linear_vae(encoder='optimal'), eigenbasis of S, W rotated to "
        "make WᵀW diagonal every 20 steps (never the evidence)"
    )
    out(
        f"{'q':>4} {'trainer':>12} {'steps':>6} {'evals':>6} {'CPU s':>8} {'wall s':>8} "
        f"{'GFLOP/s':>8} {'gap':>10} {'Gram ratio':>10}"
    )
    totals = {"ascend_elbo": [0.0, 0.0, 0.0], "fast path": [0.0, 0.0, 0.0]}
    linear_vae_training.ascend_elbo(
        data.images, 0, steps=1, progress=False
    )  # warm-up: torch, scipy
    for q in config.latent_sizes:
        best = ppca.max_log_likelihood(spectrum, q)
        trained = linear_vae_training.ascend_elbo(
            data.images, q, progress=False, **dict(config.ascent_options())
        )
        flops = linear_flops_per_evaluation(
            active, q, trained.optimiser, trained.encoder, basis="pixels"
        )
        rows = [("ascend_elbo", trained, trained.cpu_seconds, flops, trained.gram_ratio)]
        cpu_start = time.process_time()
        fast = linear_vae_training.train_linear_vae(
            spectrum, q, seed=config.train_seed, progress=False, **FAST_PATH
        )
        fast_flops = linear_flops_per_evaluation(spectrum.d, q, fast.optimiser, fast.encoder)
        ratio = linear_vae.off_diagonal_ratio(linear_vae.leading_gram(fast.model.W, config.block))
        rows.append(("fast path", fast, time.process_time() - cpu_start, fast_flops, ratio))
        for name, run, cpu, flops, ratio in rows:
            gap = best - run.elbo
            rate = flops * run.evaluations / max(cpu, 1e-9) / 1e9
            out(
                f"{q:>4d} {name:>12} {run.steps:>6d} {run.evaluations:>6d} {cpu:>8.2f} "
                f"{run.seconds:>8.2f} {rate:>8.2f} {gap:>10.2e} {ratio:>10.3f}"
            )
            total = totals[name]
            total[0] += cpu
            total[1] += run.seconds
            total[2] = max(total[2], gap)
    for name, (cpu, wall, worst) in totals.items():
        out(
            f"{name}: total {cpu:.1f} s CPU ({cpu / 60:.2f} min), {wall:.1f} s wall; "
            f"largest gap {worst:.2e} nats/image"
        )
    q_ref = max(config.latent_sizes)
    out(
        f"reference: float64 matmul ({q_ref}×{active}) @ ({active}×{q_ref}) on this machine: "
        f"{reference_gflops(active, q_ref):.2f} GFLOP/s of CPU time"
    )
    return totals["ascend_elbo"][0]


SUBCOMMANDS: dict[str, Callable[[str], float]] = {"linear": bench_linear}


def bench_training(preset: str, out: Callable[[str], None] = print) -> float:
    """Time both experiments of the part *Training the linear VAE*; return the total seconds."""
    start = time.perf_counter()
    out(training_benchmark(preset))
    return time.perf_counter() - start


SUBCOMMANDS["training"] = bench_training


def training_benchmark(preset: str | None = None) -> str:
    """Run both experiments of the part *Training the linear VAE* at ``preset`` and return a
    timing-and-fidelity table."""
    from lincollapse.experiments.linear_decoder_encoders import (
        EncoderComparisonConfig,
        encoder_comparison,
    )
    from lincollapse.experiments.stochastic_elbo import StochasticELBOConfig, stochastic_vs_analytic

    lines = [
        preset_banner(preset),
        f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f} at start",
    ]
    start = time.perf_counter()
    stochastic = stochastic_vs_analytic(StochasticELBOConfig.for_preset(preset))
    middle = time.perf_counter()
    encoders = encoder_comparison(EncoderComparisonConfig.for_preset(preset))
    end = time.perf_counter()
    lines += [
        f"stochastic_vs_analytic: {middle - start:.1f} s "
        f"(training {sum(stochastic.seconds.values()):.1f} s), optimum {stochastic.optimum:.4f}",
        stochastic.table(),
        stochastic.gradient.table(),
        f"encoder_comparison: {end - middle:.1f} s "
        f"(training {sum(encoders.seconds.values()):.1f} s), optimum {encoders.optimum:.4f}",
        encoders.table(),
        f"total {end - start:.1f} s, load average {os.getloadavg()[0]:.2f} at end",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------ deep VAE


@dataclasses.dataclass(frozen=True)
class BenchmarkRow:
    """Timing of one preset's training step in both layouts (see ``choose_layout``).

    Attributes
    ----------
    preset : str
    runs : int
        Runs trained together in the measurement (all grid runs of the preset).
    threads : int
        torch intra-op threads.
    seconds : dict of str to float
        Per layout (``"loop"``, ``"batched"``): wall time of one Adam step of all ``runs``
        (median of the timed steps).
    gflops : dict of str to float
        Per layout: achieved GFLOP/s, analytic GEMM flops of forward + backward (3 × forward).
    matmul_gflops : float
        A raw float32 ``torch.bmm`` of the first layer's shape, same threads, same machine.
    chosen : str
        The layout training uses here (``layout="auto"``).
    grid_seconds : float
        Projected training time of the grid figures in the chosen layout.
    convergence_seconds : float
        Projected time of the convergence study's long runs when they are not the grid runs
        (``convergence_steps > steps``), per-run cost of the chosen layout.
    """

    preset: str
    runs: int
    threads: int
    seconds: dict[str, float]
    gflops: dict[str, float]
    matmul_gflops: float
    chosen: str
    grid_seconds: float
    convergence_seconds: float


def raw_matmul_gflops(runs: int, n: int, fan_in: int, fan_out: int, repeats: int = 5) -> float:
    """GFLOP/s of ``torch.bmm`` on (runs, n, fan_in) × (runs, fan_in, fan_out), float32."""
    a, b = torch.randn(runs, n, fan_in), torch.randn(runs, fan_in, fan_out)
    torch.bmm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.bmm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * runs * n * fan_in * fan_out / float(np.median(times)) / 1e9


BENCHMARK_STEPS = {"fast": 20, "book": 10, "paper": 3}


def _seconds_per_step(config: DeepVAEConfig, layout: str, steps: int) -> float:
    """Median wall time of one Adam step of all grid runs of ``config`` in ``layout`` (CPU)."""
    x = torch.tensor(data_for(config)[0], dtype=torch.float32)
    runs = config.runs()
    model = build_runs(
        config.arch,
        [s for s, _ in runs],
        [v for _, v in runs],
        config.seed,
        layout=layout,
        device="cpu",
    )
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], config.lr)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        optimiser.zero_grad()
        (-model.elbo(x).sum()).backward()
        optimiser.step()
        if step:  # the first step warms up
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def benchmark(
    presets: Sequence[str] = ("fast", "book", "paper"),
    steps: int | None = None,
    threads: int | None = None,
) -> list[BenchmarkRow]:
    """Time Adam steps of each preset's grid runs in both layouts (CPU, current data).

    ``steps`` timed steps per layout (default :data:`BENCHMARK_STEPS` of the preset), after one
    warm-up step; the two layouts alternate so that a change of machine load hits both.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    rows = []
    for preset in presets:
        config = DeepVAEConfig.for_preset(preset)
        count = steps or BENCHMARK_STEPS.get(preset, 10)
        seconds = {
            layout: _seconds_per_step(config, layout, count) for layout in ("loop", "batched")
        }
        flops = config.arch.step_flops(config.n) * len(config.runs())
        chosen = choose_layout("auto", "cpu")
        per_step = seconds[chosen]
        long_runs = [
            s for s in config.convergence_sigma2 if config.convergence_steps > config.steps
        ]
        fan_in, fan_out = config.arch.encoder_shapes[0]
        rows.append(
            BenchmarkRow(
                preset=preset,
                runs=len(config.runs()),
                threads=torch.get_num_threads(),
                seconds=seconds,
                gflops={k: flops / v / 1e9 for k, v in seconds.items()},
                matmul_gflops=raw_matmul_gflops(len(config.runs()), config.n, fan_in, fan_out),
                chosen=chosen,
                grid_seconds=per_step * config.steps,
                convergence_seconds=per_step
                / len(config.runs())
                * config.convergence_steps
                * len(long_runs),
            )
        )
    return rows


def format_benchmark(rows: Sequence[BenchmarkRow]) -> str:
    """The benchmark as a plain-text table: both layouts side by side."""
    lines = [
        f"threads: {torch.get_num_threads()}; load average {_load()} on {os.cpu_count()} cores "
        "(the layout `auto` picks depends on it); s/step = one Adam step of all runs",
        f"{'preset':<7} {'runs':>4} {'loop s/step':>11} {'batched':>8} {'loop/bat':>8} "
        f"{'GFLOP/s loop':>12} {'batched':>8} {'bmm':>6} {'chosen':>7} {'grid':>7} {'long':>7}",
    ]
    for row in rows:
        loop, batched = row.seconds["loop"], row.seconds["batched"]
        lines.append(
            f"{row.preset:<7} {row.runs:>4} {loop:>11.3f} {batched:>8.3f} {loop / batched:>8.2f} "
            f"{row.gflops['loop']:>12.1f} {row.gflops['batched']:>8.1f} "
            f"{row.matmul_gflops:>6.0f} {row.chosen:>7} {_duration(row.grid_seconds):>7} "
            f"{_duration(row.convergence_seconds):>7}"
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def deep_benchmark(
    steps: int | None = None, presets: Sequence[str] = ("fast", "book", "paper")
) -> str:
    """Run :func:`benchmark` and return the table (what ``lincollapse bench deep`` prints)."""
    return format_benchmark(benchmark(presets, steps))


def bench_deep(preset: str, out: Callable[[str], None] = print) -> float:
    """Time the deep VAE's step in both layouts for every preset (``preset`` unused)."""

    start = time.perf_counter()
    out(f"deep VAE benchmark (σ² grid, full batch, CPU), load average {_load()}")
    out(deep_benchmark())
    return time.perf_counter() - start


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


SUBCOMMANDS["deep"] = bench_deep


THREAD_FIGURES = ("ppca-collapsed-vs-sigma2", "likelihood-vs-latent-size")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_TIMER = """
import json, sys, time
from threadpoolctl import threadpool_limits
from lincollapse.experiments import load_all
spec = load_all()[sys.argv[1]]
config = spec.config.for_preset(sys.argv[2]) if spec.config else None

def seconds():
    start = time.perf_counter()
    spec.compute(config) if config is not None else spec.compute()
    return time.perf_counter() - start

def policy():  # what OPENBLAS_NUM_THREADS=1 does, set at run time
    return threadpool_limits(limits=1, user_api="blas")

seconds()  # warm-up: imports, data, first allocations
times = {"default": [], "policy": []}
for _ in range(int(sys.argv[3])):
    times["default"].append(seconds())
    with policy():
        times["policy"].append(seconds())
print(json.dumps(times))
"""


def bench_threads(
    preset: str,
    out: Callable[[str], None] = print,
    *,
    figures: Sequence[str] = THREAD_FIGURES,
    repeat: int = 3,
) -> float:
    """Figures' compute times with and without the thread policy; return the total seconds.

    One fresh process per figure, started without any thread variable (every pool takes every
    core: the default), computes the figure once to warm up, then ``repeat`` times by default
    and ``repeat`` times with BLAS limited to one thread, interleaved, so that a change of load
    on a busy machine hits both alike. torch keeps every core in both, as the policy of the
    command line and the book build does.
    """
    from lincollapse.threads import POLICY_ENV_VAR, available_cores, policy_environment

    start = time.perf_counter()
    out(
        f"thread policy benchmark, preset {preset}, {available_cores()} cores, load average "
        f"{_load()} at the start"
    )
    out("policy: " + " ".join(f"{k}={v}" for k, v in policy_environment(environ={}).items()))
    out("default: none of these set (every pool takes every core)")
    env = {key: value for key, value in os.environ.items() if key not in _THREAD_VARIABLES}
    env |= {POLICY_ENV_VAR: "off", "LINCOLLAPSE_QUIET": "1"}
    with tempfile.TemporaryDirectory() as scratch:
        env["LINCOLLAPSE_CACHE_DIR"] = scratch  # empty: every run computes
        for figure in figures:
            command = [sys.executable, "-c", _TIMER, figure, preset, str(repeat)]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"timing {figure} failed:\n{done.stderr[-2000:]}")
            times = json.loads(done.stdout.strip().splitlines()[-1])
            for variant, values in times.items():
                runs = ", ".join(f"{v:.2f}" for v in values)
                out(f"{figure:<28} {variant:<8} median {statistics.median(values):7.2f} s ({runs})")
            ratio = statistics.median(times["default"]) / statistics.median(times["policy"])
            out(f"{figure:<28} default / policy = {ratio:.2f}; load average {_load()}")
    return time.perf_counter() - start


SUBCOMMANDS["threads"] = bench_threads
