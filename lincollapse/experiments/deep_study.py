"""The runs of the deep chapter's study: converged runs over the σ² grid and its ablations.

Question: on which settings does a deep Gaussian VAE's collapsed fraction fall with σ² as the
paper says, how close does it come to the linear count max(0, q − #{λ_j > σ²})/q, and which
setting decides the difference?

Every run is one deep Gaussian VAE (:class:`lincollapse.deep_vae.GaussianVAE`) with the book's
widths (784-256-128 / 128-256-784, q = 200), Adam at a constant 1e-3, full batch, trained in
chunks of :data:`CHUNK` steps **until the plateau rule holds** (:func:`plateau`) or
:data:`MAX_STEPS` are done. A run is described by a :class:`RunSpec`: σ², fixed or learned
(initialised at σ²), the pixel scale (``"unit"``: [0, 1]; ``"logit"``: :func:`logit_pixels`),
the number of training images and the seed. Every record (each :data:`RECORD_EVERY` steps)
holds the ELBO and the collapse statistics on the training images *and* on
:data:`N_TEST` held-out images the model never sees (memorisation shows as a gap between them).

Runs are resumable: each chunk ends with a checkpoint (weights, Adam state, noise generators,
records) written atomically, and a finished run is stored as a results-cache entry; several
processes may work through the queue at once (a lock file per run). A finished group of runs is
shipped as ``results/deep_study_<group>.{npz,json}`` with its behaviour probe
(:mod:`lincollapse.experiments.deep_study_shipping`); the chapter's figures of the study are in
:mod:`lincollapse.experiments.deep_study_figures`::

    python -m lincollapse.experiments.deep_study train [--group G] [--threads 1]
    python -m lincollapse.experiments.deep_study status
    python -m lincollapse.experiments.deep_study ship [--group G]
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lincollapse.collapse import (
    collapse_thresholds,
    collapsed_fraction_from_thresholds,
    gaussian_kl_per_dimension,
    linear_collapse_prediction,
)
from lincollapse.data import covariance_eigenvalues, load_mnist, logit_pixels
from lincollapse.deep_vae import Architecture, GaussianVAE
from lincollapse.gaussian import kl_to_prior
from lincollapse.linear_vae import optimal_encoder
from lincollapse.ppca import data_spectrum, fixed_sigma2_maximiser
from lincollapse.references import PROBE_STEPS, machine_description
from lincollapse.results_cache import ResultsCache, default_cache_dir
from lincollapse.training import maximise
from lincollapse.training_state import save_state

ARCH = Architecture(784, 200, (256, 128), (128, 256))
LR = 1e-3
DELTA = 0.01
RECORD_EVERY = 100
CHUNK = 1000
MAX_STEPS = 20_000
# Every run whose noise is small against its data's largest eigenvalue, σ²/λ₁ ≤ CONTINUE_BELOW
# (its initial σ² when learned), is continued from its last state (weights, Adam moments, noise
# streams) to EXTENDED_MAX_STEPS, whether or not it met the rule: the "extended" group. There a
# run can sit at zero collapse for thousands of steps before collapse starts.
EXTENDED_MAX_STEPS = 50_000
# Added once the continuations to EXTENDED_MAX_STEPS were in: each of them that did not meet the
# rule there (the rule applied to its last WINDOW steps, unchanged) is continued again from its
# final state to FURTHER_MAX_STEPS, the "further" group, and reported there whatever it shows.
FURTHER_MAX_STEPS = 100_000
CONTINUE_BELOW = 1e-3
# The largest σ² of the study with σ²/λ₁ ≤ CONTINUE_BELOW, per pixel scale (λ₁ = 5.28 for [0, 1]
# pixels, 716 for logit pixels; a test recomputes it from the data)
CONTINUE_AT_OR_BELOW = {"unit": 0.003, "logit": 0.1}
CONTINUATION = "from the capped run's final state, always to max_steps"
# Plateau rule: converged at step t when, over the window [t − WINDOW, t], the collapsed
# fraction at each ε in PLATEAU_EPSILONS moved (max − min) by at most PLATEAU_TOLERANCE
# (2 of the 200 latents), checked at every chunk end from MIN_STEPS on.
WINDOW = 4000
MIN_STEPS = 6000
PLATEAU_TOLERANCE = 0.01
PLATEAU_EPSILONS = (0.01, 0.1)
EPSILONS = (0.01, 0.03, 0.1, 0.3, 1.0)
N_TEST = 1000
BOOK_N = 1000
PIXELS = ("unit", "logit")
GRID = (30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0001)
ABLATION_SIGMA2 = (1.0, 0.1, 0.01, 0.001)
# Logit pixels have ≈ 130× larger eigenvalues: their linear count is 0 at σ² ≤ 1, so the
# pixel-scale ablation adds σ² where it is not (count 0.625 at 10, 0.135 at 3).
LOGIT_SIGMA2 = (10.0, 3.0, 1.0, 0.1, 0.01)
STORE_VERSION = "deep-study-1"


def stages() -> tuple[int, int, int]:
    """The step caps a run may have: capped, continued, continued further."""
    return (MAX_STEPS, EXTENDED_MAX_STEPS, FURTHER_MAX_STEPS)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of the study.

    Attributes
    ----------
    sigma2 : float
        Observation noise (its initial value when learned).
    learned : bool
        Learn σ² (as log σ²) with the weights.
    pixels : {"unit", "logit"}
        Pixels in [0, 1], or dequantised and logit-transformed (:func:`logit_pixels`).
    n_train : int
        Training images: the book's 1000 (``load_mnist(1000, seed=0)``) plus more from the
        embedded 5,000-image subset, never the held-out ones.
    seed : int
        Initial weights and noise streams.
    """

    sigma2: float
    learned: bool = False
    pixels: str = "unit"
    n_train: int = BOOK_N
    seed: int = 0
    max_steps: int = MAX_STEPS

    def __post_init__(self) -> None:
        if not self.sigma2 > 0:
            raise ValueError(f"sigma2 must be positive, got {self.sigma2}")
        if self.pixels not in PIXELS:
            raise ValueError(f"pixels must be one of {PIXELS}, got {self.pixels!r}")
        if self.n_train < BOOK_N:
            raise ValueError(f"n_train must be at least {BOOK_N}, got {self.n_train}")
        if self.max_steps not in stages():
            raise ValueError(f"max_steps must be one of {stages()}, got {self.max_steps}")

    @property
    def base(self) -> RunSpec:
        """The run this one continues: the same settings capped at :data:`MAX_STEPS`."""
        return dataclasses.replace(self, max_steps=MAX_STEPS)

    @property
    def previous(self) -> RunSpec:
        """The run whose final state this continuation starts from: the stage before it in
        :func:`stages` (the capped run for a continuation to :data:`EXTENDED_MAX_STEPS`)."""
        if not self.extended:
            raise ValueError(f"{self.label} is not a continuation")
        return self.earlier[-1]

    @property
    def earlier(self) -> list[RunSpec]:
        """Every stage this run passes through, the capped run first (empty for a capped run)."""
        steps = stages()
        return [
            dataclasses.replace(self, max_steps=m) for m in steps[: steps.index(self.max_steps)]
        ]

    @property
    def extended(self) -> bool:
        return self.max_steps != MAX_STEPS

    @property
    def label(self) -> str:
        parts = [f"σ²={self.sigma2:g}", "learned" if self.learned else "fixed"]
        if self.pixels != "unit":
            parts.append(f"{self.pixels} pixels")
        if self.n_train != BOOK_N:
            parts.append(f"n={self.n_train}")
        suffix = f" to {self.max_steps:,} steps" if self.extended else ""
        return " ".join(parts) + f" seed {self.seed}" + suffix

    def key(self) -> dict[str, Any]:
        """Everything that determines the run (its store key)."""
        return (
            {
                "experiment": STORE_VERSION,
                **dataclasses.asdict(self),
                "sigma2": float(self.sigma2),
                "data": study_data(self.pixels, self.n_train)[2],
                "widths": [list(ARCH.encoder_hidden), list(ARCH.decoder_hidden)],
                "latent": ARCH.latent,
                "lr": LR,
                "delta": DELTA,
                "record_every": RECORD_EVERY,
                "max_steps": self.max_steps,
                "plateau": [WINDOW, MIN_STEPS, PLATEAU_TOLERANCE, list(PLATEAU_EPSILONS)],
                "n_test": N_TEST,
            }
            | ({"continuation": CONTINUATION} if self.extended else {})
            | (
                # the keys of the continuations to EXTENDED_MAX_STEPS stay as they were shipped
                {"continues": self.previous.max_steps}
                if self.max_steps > EXTENDED_MAX_STEPS
                else {}
            )
        )


def _specs(sigma2s: Sequence[float], seeds: Sequence[int] = (0,), **fields) -> list[RunSpec]:
    return [RunSpec(s, seed=seed, **fields) for seed in seeds for s in sigma2s]


TWO_SEEDS = (0, 1)
OTHER_GRID = tuple(s for s in GRID if s not in ABLATION_SIGMA2)
# The groups, in the order the queue trains them (most informative first); each is shipped as
# one reference. The baseline and learned groups' seed-0 runs are also grid points.
GROUPS: dict[str, list[RunSpec]] = {
    "baseline": _specs(ABLATION_SIGMA2, TWO_SEEDS),
    "logit": _specs(LOGIT_SIGMA2, TWO_SEEDS, pixels="logit"),
    "learned": _specs(ABLATION_SIGMA2, TWO_SEEDS, learned=True),
    "grid_fixed": _specs(OTHER_GRID),
    "grid_learned": _specs(OTHER_GRID, learned=True),
    "data_size": _specs(ABLATION_SIGMA2, TWO_SEEDS, n_train=4000),
}
# The continuations: seed 0 before seed 1, the 1000-image runs before the data-size ones (4×
# the cost per step), and within those in the order of the groups.
GROUPS["extended"] = sorted(
    (
        dataclasses.replace(spec, max_steps=EXTENDED_MAX_STEPS)
        for name in ("baseline", "logit", "learned", "grid_fixed", "grid_learned", "data_size")
        for spec in GROUPS[name]
        if spec.sigma2 <= CONTINUE_AT_OR_BELOW[spec.pixels]
    ),
    key=lambda spec: (spec.n_train, spec.seed),
)
# The continuations that did not meet the plateau rule at EXTENDED_MAX_STEPS (σ², pixel scale;
# fixed σ², 1000 images, both seeds), continued to FURTHER_MAX_STEPS; a test checks this list
# against the shipped continuations.
FURTHER = ((0.001, "unit"), (0.1, "logit"), (0.01, "logit"))
GROUPS["further"] = [
    dataclasses.replace(spec, max_steps=FURTHER_MAX_STEPS)
    for spec in GROUPS["extended"]
    if (spec.sigma2, spec.pixels) in FURTHER and not spec.learned and spec.n_train == BOOK_N
]
# the groups of continuations (each run continues a run of another group)
CONTINUATIONS = ("extended", "further")


# --------------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=8)
def study_data(pixels: str, n_train: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Training images (n_train, 784), held-out images (N_TEST, 784), and their identifier.

    The training images start from the book's 1000 (``load_mnist(1000, seed=0)``, in its order);
    more come from the rest of the embedded 5,000-image subset, and the :data:`N_TEST` held-out
    images are drawn from the images the book never uses (seed 1), so every training size is
    tested on the same held-out images. With ``pixels="logit"`` both go through
    :func:`logit_pixels` (dequantisation noise seeded per image set).
    """
    book = load_mnist(BOOK_N, seed=0).images
    pool = load_mnist(5000, seed=None).images
    book_index = np.sort(np.random.default_rng(0).choice(pool.shape[0], BOOK_N, replace=False))
    if not np.array_equal(pool[book_index], book):
        raise RuntimeError(
            "the study's held-out split is defined on the embedded 5,000-image MNIST subset; "
            "unset LINCOLLAPSE_DATA_DIR to use it"
        )
    rest = np.setdiff1d(np.arange(pool.shape[0]), book_index)
    rest = np.random.default_rng(1).permutation(rest)
    if n_train - BOOK_N > rest.size - N_TEST:
        raise ValueError(f"n_train can be at most {BOOK_N + rest.size - N_TEST}, got {n_train}")
    test = pool[np.sort(rest[:N_TEST])]
    train = np.concatenate([book, pool[np.sort(rest[N_TEST : N_TEST + n_train - BOOK_N])]])
    if pixels == "logit":
        train, test = logit_pixels(train, seed=0), logit_pixels(test, seed=1)
    digest = hashlib.sha256(train.tobytes() + test.tobytes()).hexdigest()[:16]
    for array in (train, test):
        array.setflags(write=False)
    return train, test, f"{pixels}:{n_train}+{N_TEST}:{digest}"


@functools.lru_cache(maxsize=8)
def linear_count_eigenvalues(pixels: str, n_train: int) -> np.ndarray:
    """Eigenvalues of the training images' covariance (the input of the linear count)."""
    return covariance_eigenvalues(study_data(pixels, n_train)[0])


def linear_count(
    spec_or_sigma2: RunSpec | float, pixels: str = "unit", n_train: int = BOOK_N
) -> float:
    """Linear-theory collapsed fraction max(0, q − #{λ_j > σ²})/q on the run's training data."""
    if isinstance(spec_or_sigma2, RunSpec):
        spec = spec_or_sigma2
        sigma2, pixels, n_train = spec.sigma2, spec.pixels, spec.n_train
    else:
        sigma2 = spec_or_sigma2
    eigenvalues = linear_count_eigenvalues(pixels, n_train)
    return float(linear_collapse_prediction(eigenvalues, sigma2, ARCH.latent))


@functools.lru_cache(maxsize=8)
def _training_spectrum(pixels: str, n_train: int):
    return data_spectrum(np.asarray(study_data(pixels, n_train)[0], dtype=np.float64))


@functools.lru_cache(maxsize=128)
def linear_optimum_thresholds(
    sigma2: float, pixels: str = "unit", n_train: int = BOOK_N
) -> np.ndarray:
    """Per latent, the (ε, δ) threshold of the *linear* VAE's global optimum on the run's images.

    The model the linear count describes, measured by the metric the deep runs are measured by:
    the fixed-σ² maximiser W* (:func:`lincollapse.ppca.fixed_sigma2_maximiser`), its optimal
    encoder (:func:`lincollapse.linear_vae.optimal_encoder`), the per-image KL of every latent on
    the training images and the δ = :data:`DELTA` order statistic
    (:func:`lincollapse.collapse.collapse_thresholds`). Its collapsed fraction at ε → 0 is the
    linear count; at larger ε it also counts the latents whose eigenvalue is just above σ².

    Returns
    -------
    ndarray of shape (q,), float64
    """
    spectrum = _training_spectrum(pixels, n_train)
    W = fixed_sigma2_maximiser(spectrum, ARCH.latent, sigma2)
    V, D = optimal_encoder(W, sigma2)
    train = np.asarray(study_data(pixels, n_train)[0], dtype=np.float64)
    kl = gaussian_kl_per_dimension((train - spectrum.mean) @ V.T, D)
    return collapse_thresholds(kl, DELTA)


# ----------------------------------------------------------------------------- the rule


def plateau(steps: np.ndarray, fraction: np.ndarray) -> tuple[bool, float]:
    """The plateau rule on records ``steps`` (k,) and collapsed fractions ``fraction`` (k, e).

    Returns (converged, movement): movement is the largest max − min over the last
    :data:`WINDOW` steps of any column; converged when the run has at least :data:`MIN_STEPS`
    steps and movement ≤ :data:`PLATEAU_TOLERANCE`.
    """
    steps = np.asarray(steps)
    if steps.size == 0:
        return False, float("nan")
    fraction = np.asarray(fraction, dtype=np.float64).reshape(steps.size, -1)
    tail = fraction[steps >= steps[-1] - WINDOW]
    # fractions are multiples of 1/q: round away the float noise of their differences
    movement = round(float((tail.max(axis=0) - tail.min(axis=0)).max()), 9)
    return bool(steps[-1] >= MIN_STEPS and movement <= PLATEAU_TOLERANCE), movement


# ------------------------------------------------------------------------------ training


class _Recorder:
    """Collects the records of one run (training and held-out statistics)."""

    NAMES = ("steps", "elbo", "sigma2", "thresholds", "kl_mean", "elbo_test", "thresholds_test")

    def __init__(self, arrays: dict[str, np.ndarray] | None = None) -> None:
        self.rows: dict[str, list] = {name: [] for name in self.NAMES}
        for name, values in (arrays or {}).items():
            self.rows[name] = list(values)

    def add(self, model: GaussianVAE, step: int, train: torch.Tensor, test: torch.Tensor) -> None:
        with torch.no_grad():
            self.rows["steps"].append(step)
            self.rows["sigma2"].append(model.sigma2)
            self.rows["elbo_test"].append(float(model.elbo(test)))
            for x, suffix in ((train, ""), (test, "_test")):
                mean, variance = model.posterior(x)
                kl = kl_to_prior(mean, variance)
                self.rows["thresholds" + suffix].append(collapse_thresholds(kl, DELTA))
                if not suffix:
                    self.rows["kl_mean"].append(kl.mean(0).double().cpu().numpy())

    def arrays(self) -> dict[str, np.ndarray]:
        out = {name: np.asarray(values, dtype=np.float64) for name, values in self.rows.items()}
        out["steps"] = out["steps"].astype(np.int64)
        return out

    def fraction(self, epsilons: Sequence[float] = PLATEAU_EPSILONS) -> np.ndarray:
        """Collapsed fraction (k, e) on the training images at each record so far."""
        if not self.rows["thresholds"]:
            return np.zeros((0, len(epsilons)))
        thresholds = np.asarray(self.rows["thresholds"], dtype=np.float64)
        return collapsed_fraction_from_thresholds(thresholds, epsilons)


def train_run(
    spec: RunSpec,
    *,
    max_steps: int = MAX_STEPS,
    stop_at_plateau: bool = True,
    dtype: torch.dtype = torch.float32,
    checkpoint: Path | None = None,
    progress: bool | None = None,
    record_every: int = RECORD_EVERY,
    on_chunk: Callable[..., None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train one run in chunks of :data:`CHUNK` steps until :func:`plateau` holds (or max_steps).

    With ``checkpoint`` (a file path) the run resumes from it when it exists and saves it after
    every chunk (atomically). ``on_chunk(records, info, save)``, when given, is called at every
    chunk end (before the checkpoint is written) with the records so far, the ``info`` a run
    ending there would return, and ``save(path)``, which writes the state there as a checkpoint.
    Returns the recorded arrays (training: ``elbo``, ``sigma2``, ``thresholds``, ``kl_mean``;
    held-out: ``elbo_test``, ``thresholds_test``; per record) and ``info`` (steps done,
    converged, movement, seconds). The training ELBO is recorded by
    :func:`lincollapse.training.maximise` (evaluation noise), the rest by the recorder.
    """
    train_np, test_np, _ = study_data(spec.pixels, spec.n_train)
    train = torch.tensor(train_np, dtype=dtype)
    test = torch.tensor(test_np, dtype=dtype)
    model = GaussianVAE(ARCH, spec.sigma2, spec.learned, spec.seed, dtype=dtype, device="cpu")
    state: dict = {}
    recorder = _Recorder()
    done, seconds = 0, 0.0
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        model._noise.set_state(saved["noise"])
        model._eval_noise.set_state(saved["eval_noise"])
        state, done, seconds = saved["adam"], saved["step"], saved["seconds"]
        recorder = _Recorder(saved["records"])
    converged, movement = plateau(np.asarray(recorder.rows["steps"]), recorder.fraction())
    while done < max_steps and not (stop_at_plateau and converged):
        end = min(done + CHUNK, max_steps)
        history = maximise(
            lambda: model.elbo(train),
            model.parameters(),
            steps=end,
            lr=LR,
            record_every=record_every,
            name=spec.label,
            progress=progress,
            start_step=done,
            optimiser_state=state,
            on_record=lambda step: recorder.add(model, step, train, test),
        )
        recorder.rows["elbo"].extend(np.asarray(history.values, dtype=np.float64).tolist())
        done, seconds = end, seconds + history.seconds
        converged, movement = plateau(np.asarray(recorder.rows["steps"]), recorder.fraction())
        if on_chunk is not None:
            info = {"steps": done, "converged": converged, "movement": movement, "seconds": seconds}
            on_chunk(
                recorder.arrays(),
                info,
                functools.partial(
                    _save_checkpoint,
                    model=model,
                    state=state,
                    step=done,
                    seconds=seconds,
                    recorder=recorder,
                ),
            )
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, state, done, seconds, recorder)
    info = {"steps": done, "converged": converged, "movement": movement, "seconds": seconds}
    return recorder.arrays(), info


def _save_checkpoint(path: Path, model, state, step, seconds, recorder: _Recorder) -> None:
    payload = {
        "model": model.state_dict(),
        "adam": state,
        "step": step,
        "seconds": seconds,
        "noise": model._noise.get_state(),
        "eval_noise": model._eval_noise.get_state(),
        "records": recorder.arrays(),
    }
    save_state(path, payload)


def run_probe(spec: RunSpec) -> dict[str, np.ndarray]:
    """Behaviour probe of one run: its first :data:`PROBE_STEPS` steps in float64 (CPU)."""
    arrays, _ = train_run(
        spec,
        max_steps=PROBE_STEPS,
        stop_at_plateau=False,
        dtype=torch.float64,
        progress=False,
        record_every=1,
    )
    return {k: v for k, v in arrays.items() if k != "steps"}


# -------------------------------------------------------------------------------- store


def store_dir() -> Path:
    """Where finished runs and checkpoints live: ``<results cache>/deep_study``."""
    return default_cache_dir() / "deep_study"


def store() -> ResultsCache:
    """Finished runs, keyed by :meth:`RunSpec.key`; validity is checked by behaviour probes."""
    return ResultsCache(store_dir(), fingerprint=STORE_VERSION)


def _checkpoint_path(spec: RunSpec) -> Path:
    return store_dir() / "checkpoints" / f"{store().path(spec.key()).stem}.pt"


def _model_path(spec: RunSpec) -> Path:
    """The final checkpoint of a finished run (weights, Adam state, records)."""
    return store_dir() / "models" / f"{store().path(spec.key()).stem}.pt"


def load_model(spec: RunSpec) -> GaussianVAE | None:
    """The trained model of a finished run from the local store, or ``None``."""
    path = _model_path(spec)
    if not path.is_file():
        return None
    model = GaussianVAE(ARCH, spec.sigma2, spec.learned, spec.seed, device="cpu")
    model.load_state_dict(torch.load(path, weights_only=False)["model"])
    return model


def _try_lock(spec: RunSpec) -> Path | None:
    lock = _checkpoint_path(spec).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(lock.read_text() or 0)
            os.kill(pid, 0)
            return None  # another live process trains it
        except (ValueError, ProcessLookupError, PermissionError, OSError):
            lock.unlink(missing_ok=True)  # stale lock of a dead process
            return _try_lock(spec)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(str(os.getpid()))
    return lock


def _start_from_base(spec: RunSpec) -> bool:
    """Give a continuation the final state of the latest earlier stage finished here as its
    checkpoint (a copy; that run keeps its own). False when none is finished here."""
    checkpoint = _checkpoint_path(spec)
    if checkpoint.is_file():
        return True
    for earlier in reversed(spec.earlier):
        base_model = _model_path(earlier)
        if finished(earlier) is not None and base_model.is_file():
            break
    else:
        return False
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    partial = checkpoint.with_suffix(".partial")
    shutil.copyfile(base_model, partial)
    os.replace(partial, checkpoint)
    return True


def capped_stop(steps: np.ndarray, thresholds: np.ndarray) -> int | None:
    """The step at which the capped run (:data:`MAX_STEPS`, stopping at the plateau rule) ends,
    read from a run's records ``steps`` (k,) and ``thresholds`` (k, q): the first chunk end from
    which :func:`plateau` holds on the records up to it, else :data:`MAX_STEPS`; ``None`` when
    the records end before either."""
    fraction = collapsed_fraction_from_thresholds(thresholds, PLATEAU_EPSILONS)
    for end in range(CHUNK, min(int(steps[-1]), MAX_STEPS) + 1, CHUNK):
        if plateau(steps[steps <= end], fraction[steps <= end])[0]:
            return end
    return MAX_STEPS if steps[-1] >= MAX_STEPS else None


def stage_stop(spec: RunSpec, steps: np.ndarray, thresholds: np.ndarray) -> int | None:
    """The step at which the run ``spec`` ends, read from the records of a longer run with its
    settings: :func:`capped_stop` for a capped run, its :attr:`~RunSpec.max_steps` for a
    continuation (which always runs to its cap); ``None`` when the records end before."""
    if not spec.extended:
        return capped_stop(steps, thresholds)
    return spec.max_steps if steps[-1] >= spec.max_steps else None


def _base_recorder(
    spec: RunSpec, missing: dict[RunSpec, str], probe: dict[str, np.ndarray], log=print
):
    """An ``on_chunk`` for a continuation replayed from step 0 that passes through earlier
    stages (``missing``: each with the group it belongs to) neither finished here nor shipped:
    at the chunk end where such a run would have stopped (:func:`stage_stop`), store it (its
    records, wall time and final state) as if trained alone. Training is deterministic on one
    kind of CPU, so it is that run itself, and its own training would cost the steps again."""

    def on_chunk(records: dict[str, np.ndarray], info: dict, save: Callable) -> None:
        for earlier, group in missing.items():
            if finished(earlier) is not None:
                continue
            if stage_stop(earlier, records["steps"], records["thresholds"]) != info["steps"]:
                continue
            model = _model_path(earlier)
            model.parent.mkdir(parents=True, exist_ok=True)
            save(model)
            stored = info | {"threads": torch.get_num_threads(), "group": group}
            stored |= {"machine": machine_description(), "recorded_within": spec.label}
            store().save(
                earlier.key(), records | {f"probe_{k}": v for k, v in probe.items()}, stored
            )
            log(
                f"[{time.strftime('%H:%M:%S')}] {group}: {earlier.label}: {info['steps']} steps, "
                f"converged={info['converged']}: recorded within {spec.label}"
            )

    return on_chunk


def base_group(spec: RunSpec) -> str | None:
    """The group that holds the run ``spec`` (a continuation's earlier stage; ``None``: none)."""
    return next((g for g, specs in GROUPS.items() if spec in specs), None)


def finished(spec: RunSpec) -> tuple[dict[str, np.ndarray], dict] | None:
    """The stored result of a finished run, or ``None``."""
    return store().load(spec.key())


# The order the queue trains runs in: the first seed of the baseline and of each ablation
# before second seeds, ablations before the rest of the grid; the data-size runs (4× the cost
# per step) late.
PRIORITY = (
    ("baseline", 0),
    ("logit", 0),
    ("baseline", 1),
    ("learned", 0),
    ("logit", 1),
    ("learned", 1),
    ("data_size", 0),
    ("grid_fixed", 0),
    ("grid_learned", 0),
    ("extended", 0),
    ("extended", 1),
    ("further", 0),
    ("further", 1),
    ("data_size", 1),
)


def queue(groups: Sequence[str]) -> list[tuple[str, RunSpec]]:
    """The runs of ``groups`` in :data:`PRIORITY` order (a group's seeds in turn)."""
    order = [(g, seed) for g, seed in PRIORITY if g in groups]
    runs = [(g, spec) for g, seed in order for spec in GROUPS[g] if spec.seed == seed]
    # continuations of the cheap (1000-image) runs before those of the data-size runs
    return sorted(runs, key=lambda run: run[0] in CONTINUATIONS and run[1].n_train != BOOK_N)


def train_queue(groups: Sequence[str], progress: bool | None = None, log=print) -> None:
    """Train every unfinished run of ``groups`` in :func:`queue` order; safe to run in several
    processes at once (a lock file per run). A run shipped in ``results/`` whose group the code
    now replays (its behaviour probe) is not trained again; a stale group's runs are."""
    from lincollapse.experiments.deep_study_shipping import shipped_runs

    shipped = {}
    for group in dict.fromkeys(groups):
        shipped[group] = shipped_runs(group, check=True)
        if shipped[group]:
            log(f"{group}: {len(shipped[group])} run(s) shipped and current: not trained again")
        elif shipped_runs(group):
            log(
                f"{group}: the shipped runs are stale (the code now behaves differently): retrained"
            )
    for group, spec in queue(groups):
        if finished(spec) is not None or spec in shipped[group]:
            continue
        lock = _try_lock(spec)
        if lock is None:
            continue
        try:
            if finished(spec) is not None:
                continue
            if spec.extended and not _start_from_base(spec):
                # training is deterministic on one kind of CPU, so there a replay from step 0
                # passes through the capped run's final state (on another kind, float32 round-off
                # makes it a second draw); the shipped group checks its records against the run's
                # own (:func:`~lincollapse.experiments.deep_study_shipping.with_extensions`)
                log(f"{group}: {spec.label}: no earlier stage's final state is here; from step 0")
            probe = run_probe(spec)
            on_chunk = None
            if spec.extended:
                missing = {}
                for earlier in spec.earlier:
                    home = base_group(earlier)
                    if finished(earlier) is None and home is not None:
                        if earlier not in shipped_runs(home, check=True):
                            missing[earlier] = home
                if missing:
                    on_chunk = _base_recorder(spec, missing, probe, log)
            start = time.perf_counter()
            # a continuation always runs to its cap, and the rule is applied to its records
            # afterwards: at small σ² a run can sit at zero collapse for thousands of steps
            # before collapse starts (which the rule would call a plateau), and the jitter of
            # the fraction at ε = 0.01 between records can exceed the rule's tolerance alone
            arrays, info = train_run(
                spec,
                max_steps=spec.max_steps,
                stop_at_plateau=not spec.extended,
                checkpoint=_checkpoint_path(spec),
                progress=progress,
                on_chunk=on_chunk,
            )
            info |= {"wall_seconds_this_process": time.perf_counter() - start}
            info |= {"threads": torch.get_num_threads(), "group": group}
            info |= {"machine": machine_description()}
            arrays |= {f"probe_{k}": v for k, v in probe.items()}
            store().save(spec.key(), arrays, info)
            # keep the trained model (latent traversals are drawn from it)
            final = _model_path(spec)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(_checkpoint_path(spec), final)
            log(
                f"[{time.strftime('%H:%M:%S')}] {group}: {spec.label}: {info['steps']} steps, "
                f"converged={info['converged']} (moved {info['movement']:.3f}), "
                f"{info['seconds']:.0f} s",
            )
        finally:
            lock.unlink(missing_ok=True)


# ------------------------------------------------------------------------------- status


def status(log=print) -> None:
    """Print, per run, finished here / in progress (with its checkpoint step) / shipped in
    ``results/`` (from another machine) / waiting."""
    from lincollapse.experiments.deep_study_shipping import shipped_runs

    for group, specs in GROUPS.items():
        shipped = shipped_runs(group)
        for spec in specs:
            found = finished(spec)
            if found is not None:
                arrays, meta = found
                info = meta.get("info", {})
                # the rule as it is now, on the run's records (as shipping evaluates it), not the
                # flag stored when the run ended
                converged, movement = plateau(
                    arrays["steps"],
                    collapsed_fraction_from_thresholds(arrays["thresholds"], PLATEAU_EPSILONS),
                )
                state = (
                    f"finished: {info.get('steps')} steps, converged={converged} "
                    f"(moved {movement:.3f}), {info.get('seconds', 0):.0f} s"
                )
            elif _checkpoint_path(spec).is_file():
                saved = torch.load(_checkpoint_path(spec), weights_only=False)
                state = f"in progress: {saved['step']} steps ({saved['seconds']:.0f} s)"
            elif spec in shipped:
                run = shipped[spec]
                state = (
                    f"shipped: {run['steps']} steps, converged={run['converged']}, "
                    f"{run['seconds']:.0f} s"
                )
            else:
                state = "waiting"
            log(f"{group:<13} {spec.label:<40} {state}")


if __name__ == "__main__":  # the command in README and results/deep_study_*.json: lincollapse.cli
    from lincollapse.cli import main_for_module

    raise SystemExit(main_for_module(__spec__.name))
