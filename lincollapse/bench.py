"""Benchmarks: ``python -m lincollapse.bench <subcommand> [--preset book]``.

Subcommands
-----------
``linear``
    Trains the linear VAE for every latent size of the figure *likelihood vs latent size*
    (:class:`lincollapse.experiments.linear.LikelihoodVsLatentSizeConfig` for the preset) with
    the figure's trainer (``ascend_elbo``: no eigendecomposition, no rotation) and with the
    rotation-aided fast path, and prints, per q and trainer: steps, ELBO evaluations, CPU and
    wall seconds, achieved GFLOP/s (from an analytic count of one ELBO-and-gradient
    evaluation), the gap to ℓ*(q) and the off-diagonal ratio of the leading Gram block; then the
    totals, and the GFLOP/s of a raw float64 matmul of similar size on this machine.
``training``
    Times both experiments of the part *Training the linear VAE* at the preset and prints
    seconds, steps and the final gap to ℓ*(q) of every curve.
``deep``
    Times batched Adam steps of the deep VAE's σ² grid for every preset (``--preset`` is
    ignored: the table compares them): seconds per step, achieved GFLOP/s against a raw
    ``torch.bmm`` of the first layer's shape, projected grid and long-run times.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from lincollapse.presets import PRESETS, current_preset


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
    (:func:`~lincollapse.linear_vae.ascend_elbo` with the preset's options: no
    eigendecomposition, no rotation) and the rotation fast path (:data:`FAST_PATH`). Columns:
    optimiser steps, ELBO evaluations, CPU and wall seconds, GFLOP/s (analytic count / CPU
    time), the gap ℓ*(q) − ELBO, and the off-diagonal ratio of the leading Gram block of W.
    CPU time is what one free core would take with one thread; wall time depends on the load.
    """
    from lincollapse import linear_vae, ppca
    from lincollapse.data import load_mnist
    from lincollapse.experiments.linear import LikelihoodVsLatentSizeConfig

    config = LikelihoodVsLatentSizeConfig.for_preset(preset)
    data = load_mnist(config.n, seed=config.seed)
    spectrum = ppca.data_spectrum(data.images)  # for ℓ*(q) and the fast path only
    variances = data.images.var(axis=0)  # the pixels ascend_elbo trains (non-constant ones)
    active = int(
        np.count_nonzero(variances > variances.size * np.finfo(float).eps * variances.max())
    )
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
    linear_vae.ascend_elbo(data.images, 0, steps=1, progress=False)  # warm-up: torch, scipy
    for q in config.latent_sizes:
        best = ppca.max_log_likelihood(spectrum, q)
        trained = linear_vae.ascend_elbo(
            data.images, q, progress=False, **dict(config.ascent_options())
        )
        flops = linear_flops_per_evaluation(active, q, trained.optimiser, trained.encoder,
                                            basis="pixels")  # fmt: skip
        rows = [("ascend_elbo", trained, trained.cpu_seconds, flops, trained.gram_ratio)]
        cpu_start = time.process_time()
        fast = linear_vae.train_linear_vae(
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


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m lincollapse.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("subcommand", choices=sorted(SUBCOMMANDS))
    parser.add_argument(
        "--preset", choices=PRESETS, default=None, help="default: $LINCOLLAPSE_PRESET or book"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    SUBCOMMANDS[args.subcommand](args.preset or current_preset())
    return 0


def bench_training(preset: str, out: Callable[[str], None] = print) -> float:
    """Time both experiments of the part *Training the linear VAE*; return the total seconds."""
    from lincollapse.experiments.training_linear import benchmark

    start = time.perf_counter()
    out(benchmark(preset))
    return time.perf_counter() - start


SUBCOMMANDS["training"] = bench_training


def bench_deep(preset: str, out: Callable[[str], None] = print) -> float:
    """Time the deep VAE's batched step for every preset (``preset`` unused); return seconds."""
    from lincollapse.experiments.deep import deep_benchmark

    start = time.perf_counter()
    out(f"deep VAE benchmark (batched σ² grid, full batch, CPU), load average {_load()}")
    out(deep_benchmark())
    return time.perf_counter() - start


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


SUBCOMMANDS["deep"] = bench_deep


if __name__ == "__main__":
    sys.exit(main())
