"""The trained linear VAEs behind the chapter *Diagnosing posterior collapse in your own VAE*.

The training and held-out images (:func:`split_images`), the noise each loss convention assumes
(:func:`effective_noise`), and the linear VAEs the chapter's steps examine
(:func:`train_run`: :func:`lincollapse.linear_vae_training.ascend_elbo` with a learned encoder,
and its gap to the best value of its objective). The ``reader`` preset reads them from
``results/reader/`` (:func:`run_for`, :func:`reader_store`; each entry keyed by
:func:`run_key` and holding its behaviour probe); :func:`ship_runs` writes them
(``python -m lincollapse.reader ship diagnosis``). The steps themselves are in
:mod:`lincollapse.experiments.diagnosis`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lincollapse import linear_vae, linear_vae_training, ppca
from lincollapse.beta_elbo import loss_effective_sigma2
from lincollapse.data import load_mnist
from lincollapse.presets import READER
from lincollapse.reader import SHIP_COMMAND, ShippedResults
from lincollapse.training_state import load_module_arrays, module_arrays

if TYPE_CHECKING:
    from lincollapse.experiments.diagnosis import DiagnosisConfig

__all__ = [
    "TrainedRun",
    "effective_noise",
    "encode",
    "reader_runs",
    "reader_store",
    "run_arrays",
    "run_for",
    "run_from_arrays",
    "run_key",
    "ship_runs",
    "split_images",
    "train_run",
]


@functools.lru_cache(maxsize=4)
def split_images(
    n: int, n_heldout: int, seed: int
) -> tuple[np.ndarray, np.ndarray, ppca.DataSpectrum]:
    """Training images (n, 784), held-out images (n_heldout, 784), the training spectrum."""
    images = load_mnist(n + n_heldout, seed=seed).images
    order = np.random.default_rng(seed).permutation(n + n_heldout)
    train, heldout = images[np.sort(order[:n])], images[np.sort(order[n:])]
    return train, heldout, ppca.data_spectrum(train)


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A trained linear VAE and its distance to the best value of its objective."""

    model: linear_vae.LinearVAE
    gap: float  # best value − ELBO, nats per image (≥ 0 up to round-off)
    steps: int


@functools.lru_cache(maxsize=16)
def train_run(
    n: int,
    n_heldout: int,
    seed: int,
    latent: int,
    sigma2: float | None,
    steps: int,
    train_seed: int,
    tolerance: float | None,
) -> TrainedRun:
    """A linear VAE with a learned encoder on the training split; ``sigma2=None`` learns σ²."""
    x, _, spectrum = split_images(n, n_heldout, seed)
    trained = linear_vae_training.ascend_elbo(
        x,
        latent,
        encoder="learned",
        optimiser="lbfgs",
        steps=steps,
        seed=train_seed,
        tolerance=tolerance,
        learn_sigma2=sigma2 is None,
        sigma2_init=1.0 if sigma2 is None else sigma2,
    )
    if sigma2 is None:  # reference values: ℓ*(q), or the fixed-σ² maximum
        best = ppca.max_log_likelihood(spectrum, latent)
    else:
        W = ppca.fixed_sigma2_maximiser(spectrum, latent, sigma2)
        best = ppca.average_log_likelihood(spectrum, W, sigma2)
    return TrainedRun(model=trained.model, gap=best - trained.elbo, steps=trained.steps)


def run_for(config: DiagnosisConfig, sigma2: float | None, **changes) -> TrainedRun:
    """The model of ``config`` at ``sigma2`` (``None``: learned) with the training ``changes``
    (``steps``, ``train_seed``, ``tolerance``): read from ``results/reader/`` for the ``reader``
    preset when shipped and current, trained (:func:`train_run`) otherwise."""
    settings = dict(steps=config.steps, train_seed=0, tolerance=config.tolerance) | changes
    arguments = (config.n, config.n_heldout, config.seed, config.latent, sigma2)
    if config.preset == READER:
        shipped = _shipped(*arguments, **settings)
        if shipped is not None:
            return shipped
    return train_run(*arguments, **settings)


# --------------------------------------------------------------------------------------------
# The trained models shipped for the reader preset
# --------------------------------------------------------------------------------------------


def run_key(
    n: int,
    n_heldout: int,
    seed: int,
    latent: int,
    sigma2: float | None,
    steps: int,
    train_seed: int,
    tolerance: float | None,
) -> dict[str, Any]:
    """Everything that determines one trained model (:func:`train_run`): its shipped entry's key."""
    return {
        "experiment": "diagnosis_run",
        "n": n,
        "n_heldout": n_heldout,
        "seed": seed,
        "latent": latent,
        "sigma2": sigma2,
        "steps": steps,
        "train_seed": train_seed,
        "tolerance": tolerance,
    }


def reader_runs(config: DiagnosisConfig) -> list[dict[str, Any]]:
    """The :func:`run_key` of every model the chapter's steps train with ``config``."""
    fixed = [effective_noise(config, m, k) for m, k in config.conventions]
    base = dict(steps=config.steps, train_seed=0, tolerance=config.tolerance)
    runs = [(sigma2, base) for sigma2 in [*fixed, None]]
    runs += [(fixed[1], base | {"train_seed": s}) for s in config.seeds]
    runs.append((fixed[1], base | {"steps": config.early_steps, "tolerance": None}))
    keys = [
        run_key(config.n, config.n_heldout, config.seed, config.latent, sigma2, **settings)
        for sigma2, settings in runs
    ]
    return [key for i, key in enumerate(keys) if key not in keys[:i]]


def run_arrays(run: TrainedRun) -> dict[str, np.ndarray]:
    """A trained model as arrays: its parameters and buffer, the gap and the steps."""
    return {**module_arrays(run.model), "gap": np.float64(run.gap), "steps": np.int64(run.steps)}


def run_from_arrays(arrays: dict[str, np.ndarray], key: dict[str, Any]) -> TrainedRun:
    """Inverse of :func:`run_arrays` for the model of ``key``."""
    d, q = arrays["W"].shape
    model = linear_vae.LinearVAE(d, q, mean=arrays["mean"], learn_sigma2=key["sigma2"] is None)
    return TrainedRun(
        model=load_module_arrays(model, arrays),
        gap=float(arrays["gap"]),
        steps=int(arrays["steps"]),
    )


def _probe(key: dict[str, Any]) -> dict[str, np.ndarray]:
    """Behaviour probe of the model of ``key``: its first steps, replayed (float64 already)."""
    from lincollapse.references import PROBE_STEPS

    settings = {k: v for k, v in key.items() if k != "experiment"}
    return run_arrays(train_run(**(settings | {"steps": PROBE_STEPS})))


def reader_store(directory=None) -> ShippedResults:
    """The chapter's trained models in ``results/reader/``, each with its behaviour probe."""
    return ShippedResults("diagnosis", _probe, directory)


@functools.lru_cache(maxsize=16)
def _shipped(*arguments, **settings) -> TrainedRun | None:
    """The shipped model of :func:`train_run`'s ``arguments``, or ``None`` (missing or stale)."""
    key = run_key(*arguments, **settings)
    loaded = reader_store().load(key)
    if loaded is None:
        print(f"not shipped or stale, trained now: {key} ({SHIP_COMMAND} diagnosis)")
        return None
    return run_from_arrays(loaded[0], key)


def ship_runs(config: DiagnosisConfig) -> list:
    """Train the models of ``config`` (the ``book`` preset's: :func:`reader_runs`) and write them
    to ``results/reader/`` (≈ 1 min of one CPU core)."""
    import time

    store = reader_store()
    store.check_writable()
    paths = []
    for key in reader_runs(config):
        settings = {k: v for k, v in key.items() if k != "experiment"}
        start = time.perf_counter()
        run = train_run(**settings)
        info = {"seconds": round(time.perf_counter() - start, 1), "command": SHIP_COMMAND}
        paths.append(store.save(key, run_arrays(run), info))
    return paths


def encode(model: linear_vae.LinearVAE, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means and variances of ``model``'s encoder for the images ``x``, as numpy arrays."""
    with torch.no_grad():
        means, variances = model.encode(x)
    return means.numpy(), variances.numpy()


def effective_noise(config: DiagnosisConfig, mse: str, kl: str) -> float:
    """σ²_eff of ``mse_loss(reduction=mse) + KL (kl)`` for the images' d."""
    d = split_images(config.n, config.n_heldout, config.seed)[0].shape[1]
    return loss_effective_sigma2(
        d,
        mse_reduction=mse,
        kl_reduction=kl,
        batch_size=config.batch_size,
        latent=config.latent,
    )
