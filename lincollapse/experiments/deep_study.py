"""The deep chapter's evidence: converged runs over the σ² grid, and ablations of the cause.

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
(:mod:`lincollapse.references`)::

    python -m lincollapse.experiments.deep_study train [--group G] [--threads 1]
    python -m lincollapse.experiments.deep_study status
    python -m lincollapse.experiments.deep_study ship [--group G]
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lincollapse.collapse import (
    collapse_thresholds,
    collapsed_fraction_from_thresholds,
    linear_collapse_prediction,
)
from lincollapse.data import covariance_eigenvalues, load_mnist, logit_pixels
from lincollapse.deep_vae import Architecture, GaussianVAE
from lincollapse.experiments import figure
from lincollapse.gaussian import kl_to_prior
from lincollapse.references import (
    PROBE_ATOL,
    PROBE_RTOL,
    PROBE_STEPS,
    RESULTS_DIR,
    Probe,
    load_shipped,
    reference_info,
    save_shipped,
    shipped_provenance,
)
from lincollapse.results_cache import (
    ReferenceResultError,
    ResultsCache,
    config_key,
    default_cache_dir,
)
from lincollapse.training import maximise

ARCH = Architecture(784, 200, (256, 128), (128, 256))
LR = 1e-3
DELTA = 0.01
RECORD_EVERY = 100
CHUNK = 1000
MAX_STEPS = 20_000
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

    def __post_init__(self) -> None:
        if not self.sigma2 > 0:
            raise ValueError(f"sigma2 must be positive, got {self.sigma2}")
        if self.pixels not in PIXELS:
            raise ValueError(f"pixels must be one of {PIXELS}, got {self.pixels!r}")
        if self.n_train < BOOK_N:
            raise ValueError(f"n_train must be at least {BOOK_N}, got {self.n_train}")

    @property
    def label(self) -> str:
        parts = [f"σ²={self.sigma2:g}", "learned" if self.learned else "fixed"]
        if self.pixels != "unit":
            parts.append(f"{self.pixels} pixels")
        if self.n_train != BOOK_N:
            parts.append(f"n={self.n_train}")
        return " ".join(parts) + f" seed {self.seed}"

    def key(self) -> dict[str, Any]:
        """Everything that determines the run (its store key)."""
        return {
            "experiment": STORE_VERSION,
            **dataclasses.asdict(self),
            "sigma2": float(self.sigma2),
            "data": study_data(self.pixels, self.n_train)[2],
            "widths": [list(ARCH.encoder_hidden), list(ARCH.decoder_hidden)],
            "latent": ARCH.latent,
            "lr": LR,
            "delta": DELTA,
            "record_every": RECORD_EVERY,
            "max_steps": MAX_STEPS,
            "plateau": [WINDOW, MIN_STEPS, PLATEAU_TOLERANCE, list(PLATEAU_EPSILONS)],
            "n_test": N_TEST,
        }


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
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train one run in chunks of :data:`CHUNK` steps until :func:`plateau` holds (or max_steps).

    With ``checkpoint`` (a file path) the run resumes from it when it exists and saves it after
    every chunk (atomically). Returns the recorded arrays (training: ``elbo``, ``sigma2``,
    ``thresholds``, ``kl_mean``; held-out: ``elbo_test``, ``thresholds_test``; per record) and
    ``info`` (steps done, converged, movement, seconds). The training ELBO is recorded by
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
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, state, done, seconds, recorder)
    info = {"steps": done, "converged": converged, "movement": movement, "seconds": seconds}
    return recorder.arrays(), info


def _save_checkpoint(path: Path, model, state, step, seconds, recorder: _Recorder) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "adam": state,
        "step": step,
        "seconds": seconds,
        "noise": model._noise.get_state(),
        "eval_noise": model._eval_noise.get_state(),
        "records": recorder.arrays(),
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


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
    ("data_size", 1),
)


def queue(groups: Sequence[str]) -> list[tuple[str, RunSpec]]:
    """The runs of ``groups`` in :data:`PRIORITY` order (a group's seeds in turn)."""
    order = [(g, seed) for g, seed in PRIORITY if g in groups]
    return [(g, spec) for g, seed in order for spec in GROUPS[g] if spec.seed == seed]


def train_queue(groups: Sequence[str], progress: bool | None = None, log=print) -> None:
    """Train every unfinished run of ``groups`` in :func:`queue` order; safe to run in several
    processes at once (a lock file per run)."""
    for group, spec in queue(groups):
        if finished(spec) is not None:
            continue
        lock = _try_lock(spec)
        if lock is None:
            continue
        try:
            if finished(spec) is not None:
                continue
            probe = run_probe(spec)
            start = time.perf_counter()
            arrays, info = train_run(spec, checkpoint=_checkpoint_path(spec), progress=progress)
            info |= {"wall_seconds_this_process": time.perf_counter() - start}
            info |= {"threads": torch.get_num_threads(), "group": group}
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


# ------------------------------------------------------------------------------ shipping


def reference_path(group: str) -> Path:
    """Stem of a group's shipped runs: ``results/deep_study_<group>``."""
    return RESULTS_DIR / f"deep_study_{group}"


def group_key(group: str, specs: Sequence[RunSpec] | None = None) -> dict[str, Any]:
    """The configuration of a shipped group: the keys of its runs (default: all of them)."""
    specs = GROUPS[group] if specs is None else specs
    return {
        "experiment": "deep_study_group",
        "group": group,
        "runs": [spec.key() for spec in specs],
    }


def _shipped_specs(group: str, meta: dict) -> list[RunSpec]:
    """The runs a shipped group holds, in its order; raises if any is not one of the group's."""
    known = {config_key(spec.key()): spec for spec in GROUPS[group]}
    config = meta.get("config", {})
    if config.get("experiment") != "deep_study_group" or config.get("group") != group:
        raise ReferenceResultError(f"reference for {group!r} holds another experiment")
    specs = [known.get(config_key(run)) for run in config.get("runs", [])]
    if not specs or None in specs:
        raise ReferenceResultError(
            f"reference for {group!r} holds runs of another configuration than the current one"
        )
    return specs


def group_probe(group: str, specs: Sequence[RunSpec] | None = None) -> Probe:
    """Behaviour probe of a group's runs (default: all): :func:`run_probe` of each, stacked."""
    specs = GROUPS[group] if specs is None else specs

    def probe() -> dict[str, np.ndarray]:
        probes = [run_probe(spec) for spec in specs]
        return {k: np.stack([p[k] for p in probes]) for k in probes[0]}

    return probe


CHECKPOINT_EVERY = 20  # records between the threshold snapshots kept in a shipped group


def _pad(rows: list[np.ndarray]) -> np.ndarray:
    longest = max(r.shape[0] for r in rows)
    out = np.full((len(rows), longest, *rows[0].shape[1:]), np.nan)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


def group_arrays(runs: list[tuple[RunSpec, dict[str, np.ndarray], dict]]) -> dict[str, np.ndarray]:
    """The arrays of a shipped group (runs padded with NaN after their last record).

    ``steps`` (k,); per run r: ``fraction``/``fraction_test`` (R, k, e) at :data:`EPSILONS`,
    ``elbo``/``elbo_test``/``sigma2_path`` (R, k), threshold snapshots every
    :data:`CHECKPOINT_EVERY` records and at each run's end (``snapshot_thresholds``,
    ``snapshot_thresholds_test`` (R, m, q), NaN-padded, at ``snapshot_steps`` (R, m)),
    ``kl_mean_final`` (R, q), and the run's settings and outcome (``sigma2``, ``learned``,
    ``pixels``, ``n_train``, ``seed``, ``steps_done``, ``converged``, ``movement``, ``seconds``).
    """
    fields: dict[str, list] = {
        k: []
        for k in (
            "fraction",
            "fraction_test",
            "elbo",
            "elbo_test",
            "sigma2_path",
            "snapshot_thresholds",
            "snapshot_thresholds_test",
            "snapshot_steps",
        )
    }
    for _, arrays, _ in runs:
        k = arrays["steps"].size
        snaps = sorted(set(range(0, k, CHECKPOINT_EVERY)) | {k - 1})
        fields["fraction"].append(
            collapsed_fraction_from_thresholds(arrays["thresholds"], EPSILONS)
        )
        fields["fraction_test"].append(
            collapsed_fraction_from_thresholds(arrays["thresholds_test"], EPSILONS)
        )
        fields["elbo"].append(arrays["elbo"])
        fields["elbo_test"].append(arrays["elbo_test"])
        fields["sigma2_path"].append(arrays["sigma2"])
        fields["snapshot_thresholds"].append(arrays["thresholds"][snaps])
        fields["snapshot_thresholds_test"].append(arrays["thresholds_test"][snaps])
        fields["snapshot_steps"].append(arrays["steps"][snaps].astype(np.float64))
    longest = max(arrays["steps"].size for _, arrays, _ in runs)
    out = {name: _pad(rows) for name, rows in fields.items()}
    out["steps"] = np.arange(longest, dtype=np.int64) * RECORD_EVERY
    out["kl_mean_final"] = np.stack([arrays["kl_mean"][-1] for _, arrays, _ in runs])
    out["sigma2"] = np.array([spec.sigma2 for spec, _, _ in runs])
    out["learned"] = np.array([spec.learned for spec, _, _ in runs])
    out["pixels"] = np.array([spec.pixels for spec, _, _ in runs])
    out["n_train"] = np.array([spec.n_train for spec, _, _ in runs])
    out["seed"] = np.array([spec.seed for spec, _, _ in runs])
    out["steps_done"] = np.array([arrays["steps"][-1] for _, arrays, _ in runs])
    out["seconds"] = np.array([info["seconds"] for _, _, info in runs])
    # the plateau rule evaluated on the records at each run's end
    rule = [
        plateau(a["steps"], collapsed_fraction_from_thresholds(a["thresholds"], PLATEAU_EPSILONS))
        for _, a, _ in runs
    ]
    out["converged"] = np.array([converged for converged, _ in rule])
    out["movement"] = np.array([movement for _, movement in rule])
    return out


def _check_behaviour(spec: RunSpec, arrays: dict[str, np.ndarray]) -> None:
    """Raise unless the code now reproduces the probe the run recorded when it started."""
    for name, value in run_probe(spec).items():
        if not np.allclose(value, arrays[f"probe_{name}"], rtol=PROBE_RTOL, atol=PROBE_ATOL):
            raise ReferenceResultError(
                f"{spec.label} was trained by code that behaves differently from the code now "
                f"({name!r} differs); retrain it"
            )


def ship_group(group: str, command: str) -> Path:
    """Write ``results/deep_study_<group>`` from the finished runs of ``group``.

    Ships the runs that are finished (a group may be shipped before all of its runs are; the
    chapter names the missing ones), and only when the code now reproduces each run's own probe
    (recorded when it started training), so nothing trained by other code is shipped.
    """
    runs = []
    for spec in GROUPS[group]:
        found = finished(spec)
        if found is None:
            continue
        arrays, meta = found
        _check_behaviour(spec, arrays)
        runs.append((spec, arrays, meta.get("info", {})))
    if not runs:
        raise ReferenceResultError(f"{group}: no run is finished; train them first")
    specs = [spec for spec, _, _ in runs]
    seconds = float(sum(info["seconds"] for _, _, info in runs))
    info = reference_info(
        command,
        "cpu",
        seconds,
        threads_per_run=sorted({i.get("threads") for _, _, i in runs}),
    )
    stem = reference_path(group)
    save_shipped(stem, group_key(group, specs), group_arrays(runs), group_probe(group, specs), info)
    return stem


@dataclasses.dataclass(frozen=True)
class StudyGroup:
    """A shipped (or locally finished) group of runs, as :func:`group_arrays`, and where from."""

    name: str
    arrays: dict[str, np.ndarray]
    provenance: str
    missing: tuple[str, ...] = ()

    def final_fraction(self, epsilon: float = 0.01, test: bool = False) -> np.ndarray:
        """Collapsed fraction at ``epsilon`` at each run's last record, (R,)."""
        e = EPSILONS.index(epsilon)
        name = "fraction_test" if test else "fraction"
        last = self.arrays["steps_done"] // RECORD_EVERY
        return self.arrays[name][np.arange(last.size), last, e]


def load_group(group: str) -> StudyGroup | None:
    """The group's runs: the shipped ones, or, when more of them are finished in the local
    store, those; ``None`` when none is available. ``missing`` names the runs not included."""
    stem = reference_path(group)
    shipped = None
    try:
        arrays, meta = load_shipped(stem, None)
        specs = _shipped_specs(group, meta)
        shipped = StudyGroup(group, arrays, shipped_provenance(stem, meta), _missing(group, specs))
    except ReferenceResultError:
        specs = []
    runs = [(spec, *found) for spec in GROUPS[group] if (found := finished(spec)) is not None]
    if len(runs) > len(specs):
        local = [(spec, arrays, meta.get("info", {})) for spec, arrays, meta in runs]
        return StudyGroup(
            group,
            group_arrays(local),
            "finished runs in the local results cache",
            _missing(group, [spec for spec, _, _ in local]),
        )
    return shipped


def _missing(group: str, present: Sequence[RunSpec]) -> tuple[str, ...]:
    return tuple(spec.label for spec in GROUPS[group] if spec not in present)


# ------------------------------------------------------------------------------ analysis

# Plateau values of the one public reproduction of the paper's deep-VAE figure (HKUST MATH5472
# course report: the paper's widths, Adam 5e-4, 20,000 steps, 1000 MNIST images in [0, 1]).
# Its "fixed" and "learned" scripts are identical files, so its learned numbers are indicative.
# "≤ 0.06" at σ² = 0.03 is kept as 0.06 (an upper bound).
REPRODUCTION = "HKUST MATH5472 course report (public reproduction of the paper's Fig. 5)"
REPRODUCTION_FIXED = {
    30.0: 0.98,
    10.0: 0.93,
    3.0: 0.89,
    1.0: 0.85,
    0.3: 0.74,
    0.1: 0.53,
    0.03: 0.06,
    0.01: 0.0,
    0.003: 0.0,
    0.001: 0.0,
    0.0001: 0.0,
}
REPRODUCTION_LEARNED = {1.0: 0.82, 0.01: 0.40, 0.001: 0.0, 0.0001: 0.0}
STUDY_EPSILON = 0.01
AGREEMENT = 0.05  # two collapsed fractions this close are called equal (10 of 200 latents)
STUDY_COST = "≈ 1 s (reads shipped runs; training them: ≈ 10–20 min per run on one core)"


def _find(groups: dict[str, StudyGroup], **fields) -> list[tuple[StudyGroup, int]]:
    """(group, index) of every run whose settings equal ``fields``."""
    hits = []
    for group in groups.values():
        a = group.arrays
        for r in range(a["sigma2"].size):
            values = {
                "sigma2": float(a["sigma2"][r]),
                "learned": bool(a["learned"][r]),
                "pixels": str(a["pixels"][r]),
                "n_train": int(a["n_train"][r]),
                "seed": int(a["seed"][r]),
            }
            if all(
                np.isclose(values[k], v) if k == "sigma2" else values[k] == v
                for k, v in fields.items()
            ):
                hits.append((group, r))
    return hits


@dataclasses.dataclass(frozen=True)
class SigmaStudy:
    """Converged collapsed fraction against σ² (fixed and learned), the linear count beside it.

    Attributes
    ----------
    sigma2 : ndarray (11,)
        The paper's grid.
    fixed, learned : ndarray (11,)
        Converged collapsed fraction at ε = :data:`STUDY_EPSILON` of the seed-0 runs
        (NaN where the run is not available yet).
    fixed_converged, learned_converged : ndarray (11,) of bool
        Whether the plateau rule held (False: stopped at :data:`MAX_STEPS`, still moving).
    fixed_steps, learned_steps : ndarray (11,)
        Steps each run took.
    learned_final_sigma2 : ndarray (11,)
    linear : ndarray (11,)
        Linear count at σ² (fixed) and at the learned runs' final σ² (``linear_learned``).
    linear_learned : ndarray (11,)
    reproduction_fixed, reproduction_learned : ndarray (11,)
        The public reproduction's reported plateaus (NaN where it reports none).
    sigma2_line, linear_line : ndarray
        The linear count on a fine grid.
    provenance : dict of str to str
        Per group, where its runs came from (or why they are missing).
    """

    sigma2: np.ndarray
    fixed: np.ndarray
    learned: np.ndarray
    fixed_converged: np.ndarray
    learned_converged: np.ndarray
    fixed_steps: np.ndarray
    learned_steps: np.ndarray
    learned_final_sigma2: np.ndarray
    linear: np.ndarray
    linear_learned: np.ndarray
    reproduction_fixed: np.ndarray
    reproduction_learned: np.ndarray
    sigma2_line: np.ndarray
    linear_line: np.ndarray
    provenance: dict[str, str]

    @property
    def complete(self) -> bool:
        return bool(np.isfinite(self.fixed).all() and np.isfinite(self.learned).all())

    def table(self) -> str:
        """Markdown table per σ²: linear count, ours fixed/learned, the reproduction's."""

        def cell(value, converged=True):
            if not np.isfinite(value):
                return "not run yet"
            return f"{value:.3f}" + ("" if converged else " (still moving)")

        rows = [
            "| σ² | linear count | ours, fixed | reproduction, fixed | ours, learned "
            "(final σ²) | reproduction, learned |",
            "|---|---|---|---|---|---|",
        ]
        for i, s in enumerate(self.sigma2):
            learned = cell(self.learned[i], self.learned_converged[i])
            if np.isfinite(self.learned[i]):
                learned += f" ({self.learned_final_sigma2[i]:.3g})"
            rows.append(
                f"| {s:g} | {self.linear[i]:.3f} | {cell(self.fixed[i], self.fixed_converged[i])}"
                f" | {cell(self.reproduction_fixed[i]).replace('not run yet', '—')} | {learned} | "
                f"{cell(self.reproduction_learned[i]).replace('not run yet', '—')} |"
            )
        return "\n".join(rows)

    def findings(self) -> dict[str, str]:
        """Sentences computed from the runs: direction, distance to the linear count, reproduction.

        Every key is present; without runs its sentence says so.
        """
        missing = "Not available yet: the converged fixed-σ² runs have not been shipped."
        out = {"direction": missing, "distance": "", "reproduction": "", "learned": ""}
        have = np.isfinite(self.fixed)
        if have.sum() >= 2:
            order = np.argsort(self.sigma2[have])[::-1]
            values = self.fixed[have][order]
            rises = np.diff(values) > 0.01  # a fall of σ² that *raises* collapse by > 2 latents
            out["direction"] = (
                "With σ² fixed, the converged collapsed fraction falls (or stays) as σ² falls at "
                f"every step of the grid we ran ({have.sum()} of {self.sigma2.size} values), "
                f"from {values[0]:.3f} at σ² = {self.sigma2[have][order][0]:g} to "
                f"{values[-1]:.3f} at σ² = {self.sigma2[have][order][-1]:g}: the paper's direction."
                if not rises.any()
                else "With σ² fixed, the converged collapsed fraction does not fall monotonically "
                f"with σ²: it rises at {rises.sum()} step(s) of the grid we ran."
            )
            gap = self.fixed[have] - self.linear[have]
            worst = int(np.argmax(np.abs(gap)))
            out["distance"] = (
                f"It stays {np.mean(np.abs(gap)):.3f} from the linear count on average and at most "
                f"{gap[worst]:+.3f} (at σ² = {self.sigma2[have][worst]:g}), always "
                + ("above it" if (gap >= -0.01).all() else "on both sides of it")
                + "."
            )
            rep = np.isfinite(self.reproduction_fixed) & have
            if rep.any():
                diff = self.fixed[rep] - self.reproduction_fixed[rep]
                worst = int(np.argmax(np.abs(diff)))
                out["reproduction"] = (
                    "Against the public reproduction our fixed-σ² runs collapse "
                    f"{np.mean(diff):+.3f} more on average over {rep.sum()} σ² (largest "
                    f"difference {diff[worst]:+.3f} at σ² = {self.sigma2[rep][worst]:g})."
                )
        done = np.isfinite(self.learned)
        if done.any():
            pairs = ", ".join(
                f"from {s:g} to {f:.3g}"
                for s, f in zip(self.sigma2[done], self.learned_final_sigma2[done], strict=True)
            )
            spread = np.nanmax(self.learned_final_sigma2) / np.nanmin(self.learned_final_sigma2)
            out["learned"] = (
                f"Learned σ² moved {pairs}; the final values span a factor {spread:.3g}, so "
                + (
                    "where it ends depends on where it starts."
                    if spread > 2
                    else "it ends near the same value whatever its start."
                )
            )
        else:
            out["learned"] = (
                "Not available yet: the converged learned-σ² runs have not been shipped."
            )
        return out

    def glue_values(self, prefix: str = "study") -> dict[str, Any]:
        """Every number and sentence the chapter glues, by name."""
        values: dict[str, Any] = {f"{prefix}_{k}": v for k, v in self.findings().items()}
        for i, s in enumerate(self.sigma2):
            tag = f"{s:g}".replace(".", "p").replace("-", "m")
            values[f"{prefix}_fixed_{tag}"] = float(self.fixed[i])
            values[f"{prefix}_linear_{tag}"] = float(self.linear[i])
        return values


def _group_or_reason(name: str) -> tuple[StudyGroup | None, str]:
    group = load_group(name)
    if group is None:
        return None, f"not available: none of its {len(GROUPS[name])} runs is finished"
    if group.missing:
        return group, f"{group.provenance}; not run yet: {', '.join(group.missing)}"
    return group, group.provenance


@figure(
    "deep-sigma2-converged",
    chapter="deep_vae",
    plot="lincollapse.plotting.deep:plot_sigma2_study",
    paper_figure="Fig. 5 (right)",
    costs={"fast": STUDY_COST, "book": STUDY_COST, "paper": STUDY_COST},
)
def sigma2_study() -> SigmaStudy:
    """Converged deep VAEs over the paper's σ² grid, fixed and learned, against the linear count."""
    groups, provenance = {}, {}
    for name in ("baseline", "grid_fixed", "learned", "grid_learned"):
        group, provenance[name] = _group_or_reason(name)
        if group is not None:
            groups[name] = group
    n = len(GRID)
    fixed, learned, final_sigma2 = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    fixed_ok, learned_ok = np.zeros(n, bool), np.zeros(n, bool)
    fixed_steps, learned_steps = np.full(n, np.nan), np.full(n, np.nan)
    for i, s in enumerate(GRID):
        kinds = ((False, fixed, fixed_ok, fixed_steps), (True, learned, learned_ok, learned_steps))
        for is_learned, frac, ok, steps in kinds:
            hits = _find(
                groups, sigma2=s, learned=is_learned, pixels="unit", n_train=BOOK_N, seed=0
            )
            if hits:
                group, r = hits[0]
                frac[i] = group.final_fraction(STUDY_EPSILON)[r]
                ok[i] = bool(group.arrays["converged"][r])
                steps[i] = group.arrays["steps_done"][r]
                if is_learned:
                    last = int(group.arrays["steps_done"][r] // RECORD_EVERY)
                    final_sigma2[i] = group.arrays["sigma2_path"][r, last]
    line = np.logspace(-5, 2, 300)

    def count(values) -> np.ndarray:
        return np.array([linear_count(v) if np.isfinite(v) else np.nan for v in values])

    return SigmaStudy(
        sigma2=np.array(GRID),
        fixed=fixed,
        learned=learned,
        fixed_converged=fixed_ok,
        learned_converged=learned_ok,
        fixed_steps=fixed_steps,
        learned_steps=learned_steps,
        learned_final_sigma2=final_sigma2,
        linear=count(GRID),
        linear_learned=count(final_sigma2),
        reproduction_fixed=np.array([REPRODUCTION_FIXED.get(s, np.nan) for s in GRID]),
        reproduction_learned=np.array([REPRODUCTION_LEARNED.get(s, np.nan) for s in GRID]),
        sigma2_line=line,
        linear_line=count(line),
        provenance=provenance,
    )


ABLATIONS = {
    "baseline": "[0, 1] pixels, 1000 images, σ² fixed",
    "logit": "logit pixels (dequantised, α = 1e-6)",
    "learned": "σ² learned, initialised at σ²",
    "data_size": "4000 training images",
}


def _sentence(text: str) -> str:
    """``text`` with its first letter upper-cased when it is a Latin one (σ² stays σ²)."""
    return text[:1].upper() + text[1:] if text[:1].isascii() else text


@dataclasses.dataclass(frozen=True)
class AblationTable:
    """Per setting and σ²: collapsed fraction (mean and range over seeds) against the linear count.

    Attributes
    ----------
    rows : list of dict
        One per (setting, σ²): ``setting``, ``sigma2``, ``seeds``, ``fraction`` (mean),
        ``spread`` (max − min over seeds), ``fraction_test`` (held-out images, mean),
        ``linear`` (count on that setting's data; at the final σ² for learned runs),
        ``relative`` (final σ² over that data's largest eigenvalue λ_1: a scale-free σ²),
        ``excess`` (fraction − linear), ``elbo_gap`` (training − held-out ELBO, nats/image),
        ``converged`` (all seeds met the plateau rule).
    provenance : dict of str to str
    """

    rows: list[dict[str, Any]]
    provenance: dict[str, str]

    def table(self) -> str:
        """Markdown table of :attr:`rows`."""
        lines = [
            "| setting | σ² | seeds | collapsed (spread) | held-out | linear count | "
            "excess over count | ELBO train − held-out |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            mark = "" if row["converged"] else " *"
            lines.append(
                f"| {ABLATIONS[row['setting']]} | {row['sigma2']:g} | {row['seeds']} | "
                f"{row['fraction']:.3f} ({row['spread']:.3f}){mark} | {row['fraction_test']:.3f} | "
                f"{row['linear']:.3f} | {row['excess']:+.3f} | {row['elbo_gap']:.1f} |"
            )
        missing = [
            f"{ABLATIONS[k]} ({v})"
            for k, v in self.provenance.items()
            if v.startswith("not available")
        ]
        if missing:
            lines.append("")
            lines.append("Not run yet: " + "; ".join(missing) + ".")
        return "\n".join(lines)

    def regimes(self) -> dict[str, dict[str, tuple[float, list[float]]]]:
        """Per setting, the mean excess over the linear count in its two regimes, with the σ²:
        ``"none"`` where the count predicts no collapse (σ² below that data's λ_q) and
        ``"partial"`` where it predicts some but not all. Comparing settings at the same *count*
        rather than the same σ² separates the pixel scale's shift of the σ² axis from a change
        in how far the deep model departs from the count."""
        out: dict[str, dict[str, tuple[float, list[float]]]] = {}
        for setting in ABLATIONS:
            rows = [r for r in self.rows if r["setting"] == setting]
            for regime, keep in (("none", lambda c: c == 0.0), ("partial", lambda c: 0 < c < 1)):
                chosen = [r for r in rows if keep(r["linear"])]
                if chosen:
                    out.setdefault(setting, {})[regime] = (
                        float(np.mean([r["excess"] for r in chosen])),
                        [r["sigma2"] for r in chosen],
                    )
        return out

    def matched_scale(self, setting: str = "logit", factor: float = 2.0) -> str:
        """Compare ``setting`` with the baseline at matched σ²/λ₁ (within ``factor``)."""
        base = [r for r in self.rows if r["setting"] == "baseline"]
        other = [r for r in self.rows if r["setting"] == setting]
        pairs = []
        for row in other:
            near = min(
                base, key=lambda b: abs(np.log(b["relative"] / row["relative"])), default=None
            )
            if near is not None and abs(np.log(near["relative"] / row["relative"])) <= np.log(
                factor
            ):
                pairs.append((near, row))
        if not pairs:
            return f"No run of {ABLATIONS[setting]} has a baseline run at a matching σ²/λ₁ yet."
        parts = [
            f"{b['excess']:+.3f} against {o['excess']:+.3f} at σ²/λ₁ ≈ {o['relative']:.1e}"
            for b, o in pairs
        ]
        close = sum(abs(b["excess"] - o["excess"]) <= AGREEMENT for b, o in pairs)
        return (
            "Measured against σ²/λ₁ (the noise relative to the data's largest eigenvalue), the "
            f"excess over the count of the baseline and of {ABLATIONS[setting]} agree within "
            f"{AGREEMENT:g} at {close} of {len(pairs)} matched σ²/λ₁ (baseline against "
            f"{setting}): " + "; ".join(parts) + "."
        )

    def decides(self) -> str:
        """The settings compared at matched linear count (:meth:`regimes`), computed from rows."""
        regimes = self.regimes()
        if "baseline" not in regimes:
            return "No ablation has been run yet."
        others = [s for s in regimes if s != "baseline"]
        if not others:
            return "Only the baseline has runs so far; no ablation can be compared yet."
        sentences = []
        for regime, words in (
            ("none", "predicts no collapse (σ² below the data's λ_q)"),
            ("partial", "predicts partial collapse"),
        ):
            have = [s for s in regimes if regime in regimes[s]]
            if len(have) < 2 or "baseline" not in have:
                continue
            parts = [
                f"{ABLATIONS[s]} {regimes[s][regime][0]:+.3f} (σ² = "
                + ", ".join(f"{v:g}" for v in regimes[s][regime][1])
                + ")"
                for s in have
            ]
            best = min(have, key=lambda s: abs(regimes[s][regime][0]))
            sentences.append(
                f"Where the linear count {words}, the mean excess over it is: "
                + "; ".join(parts)
                + f" — closest to the count: {ABLATIONS[best]}."
            )
        if not sentences:
            return "The ablations run so far share no regime of the linear count with the baseline."
        return " ".join(sentences)

    def excess(self, setting: str) -> dict[float, float]:
        return {r["sigma2"]: r["excess"] for r in self.rows if r["setting"] == setting}

    def findings(self) -> dict[str, str]:
        """Sentences computed from the rows; every key is present (saying so when not run)."""
        out = {k: f"{_sentence(ABLATIONS[k])}: not run yet." for k in ABLATIONS if k != "baseline"}
        out["memorisation"] = "Held-out statistics: not available yet."
        out["decides"] = self.decides()
        out["matched_scale"] = self.matched_scale("logit")
        base = self.excess("baseline")
        for setting in ("logit", "learned", "data_size"):
            other = self.excess(setting)
            shared = sorted(set(base) & set(other), reverse=True)
            if not other:
                continue
            if shared:
                change = np.array([other[s] - base[s] for s in shared])
                out[setting] = (
                    f"{_sentence(ABLATIONS[setting])}: at the same σ², the excess over the "
                    "linear count changes by "
                    + ", ".join(f"{c:+.3f}" for c in change)
                    + " at σ² = "
                    + ", ".join(f"{s:g}" for s in shared)
                    + " against the baseline."
                )
            else:
                out[setting] = (
                    f"{ABLATIONS[setting].capitalize()}: excess "
                    + ", ".join(
                        f"{v:+.3f} at σ² = {s:g}" for s, v in sorted(other.items(), reverse=True)
                    )
                    + "."
                )
        rows = [r for r in self.rows if r["setting"] == "baseline"]
        if rows:
            memo = max(rows, key=lambda r: abs(r["fraction_test"] - r["fraction"]))
            out["memorisation"] = (
                "On held-out images the collapsed fraction differs from the training images' by at "
                f"most {memo['fraction_test'] - memo['fraction']:+.3f} (σ² = {memo['sigma2']:g}), "
                f"while the ELBO is up to {max(r['elbo_gap'] for r in rows):.1f} nats per image "
                "higher on the training images."
            )
        return out


@figure(
    "deep-ablations",
    chapter="deep_vae",
    plot="lincollapse.plotting.deep:plot_ablations",
    costs={"fast": STUDY_COST, "book": STUDY_COST, "paper": STUDY_COST},
)
def ablations() -> AblationTable:
    """Which setting moves the deep VAE toward the linear count: pixel scale, learned σ², data."""
    rows, provenance = [], {}
    for setting in ABLATIONS:
        group, provenance[setting] = _group_or_reason(setting)
        if group is None:
            continue
        a = group.arrays
        last = (a["steps_done"] // RECORD_EVERY).astype(int)
        runs = np.arange(a["sigma2"].size)
        final = group.final_fraction(STUDY_EPSILON)
        final_test = group.final_fraction(STUDY_EPSILON, test=True)
        elbo_gap = a["elbo"][runs, last] - a["elbo_test"][runs, last]
        for s in dict.fromkeys(a["sigma2"].tolist()):
            idx = runs[np.isclose(a["sigma2"], s)]
            final_sigma2 = a["sigma2_path"][idx, last[idx]]
            counts = [
                linear_count(v, str(a["pixels"][i]), int(a["n_train"][i]))
                for v, i in zip(final_sigma2, idx, strict=True)
            ]
            rows.append(
                {
                    "setting": setting,
                    "sigma2": float(s),
                    "seeds": idx.size,
                    "fraction": float(final[idx].mean()),
                    "spread": float(final[idx].max() - final[idx].min()),
                    "fraction_test": float(final_test[idx].mean()),
                    "linear": float(np.mean(counts)),
                    "relative": float(np.mean(final_sigma2))
                    / float(
                        linear_count_eigenvalues(
                            str(a["pixels"][idx[0]]), int(a["n_train"][idx[0]])
                        )[0]
                    ),
                    "excess": float(final[idx].mean() - np.mean(counts)),
                    "elbo_gap": float(elbo_gap[idx].mean()),
                    "converged": bool(a["converged"][idx].all()),
                }
            )
    return AblationTable(rows, provenance)


# ----------------------------------------------------------------------------- traversal

# A converged run with active and collapsed latents: [0, 1] pixels, σ² = 0.1 fixed, seed 0.
TRAVERSAL_RUN = RunSpec(0.1)
TRAVERSAL_VALUES = tuple(np.linspace(-3.0, 3.0, 7))
TRAVERSAL_IMAGE = 0  # the training image whose code the traversal starts from


def traversal_path() -> Path:
    """Stem of the shipped decoder of :data:`TRAVERSAL_RUN`: ``results/deep_traversal``."""
    return RESULTS_DIR / "deep_traversal"


def traversal_arrays(model: GaussianVAE, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a traversal needs from a trained run: decoder weights (float16, to stay small), the
    encoder mean of the start image, and the mean KL per latent at the run's end."""
    out = {}
    for index, layer in enumerate(model.decoder):
        out[f"decoder_weight_{index}"] = layer.weight.detach().numpy().astype(np.float16)
        out[f"decoder_bias_{index}"] = layer.bias.detach().numpy().astype(np.float16)
    train = torch.tensor(study_data(TRAVERSAL_RUN.pixels, TRAVERSAL_RUN.n_train)[0])
    with torch.no_grad():
        mean, _ = model.encode(train[TRAVERSAL_IMAGE : TRAVERSAL_IMAGE + 1].float())
    out["start_code"] = mean[0].double().numpy()
    out["kl_mean"] = np.asarray(arrays["kl_mean"][-1], dtype=np.float64)
    return out


def ship_traversal(command: str) -> Path:
    """Ship the decoder of :data:`TRAVERSAL_RUN` (finished, trained by code that behaves as now)."""
    found = finished(TRAVERSAL_RUN)
    model = load_model(TRAVERSAL_RUN)
    if found is None or model is None:
        raise ReferenceResultError(f"{TRAVERSAL_RUN.label} is not finished here; train it first")
    _check_behaviour(TRAVERSAL_RUN, found[0])
    info = reference_info(
        command, "cpu", float(found[1]["info"]["seconds"]), run=TRAVERSAL_RUN.label
    )
    stem = traversal_path()
    key = {"experiment": "deep_traversal", "run": TRAVERSAL_RUN.key(), "image": TRAVERSAL_IMAGE}
    save_shipped(
        stem, key, traversal_arrays(model, found[0]), lambda: run_probe(TRAVERSAL_RUN), info
    )
    return stem


@dataclasses.dataclass(frozen=True)
class LatentTraversal:
    """Decoded images along single latents of a trained deep VAE.

    Attributes
    ----------
    images : ndarray (rows, len(values), 28, 28)
        Decoder means f(z) with z = the start image's code, latent ``latents[r]`` set to each value.
    latents : ndarray (rows,)
        The latents traversed: the two with the largest mean KL, then the one with the smallest.
    kl : ndarray (rows,)
        Their mean KL to the prior over the training images (nats).
    collapsed : ndarray (rows,) of bool
        Whether each is (ε = 0.01)-collapsed by its mean KL (< 0.01).
    values : ndarray
        The values the latent takes.
    change : ndarray (rows,)
        Largest pixel change along each row (decoded image minus the start's).
    run, provenance : str
    """

    images: np.ndarray
    latents: np.ndarray
    kl: np.ndarray
    collapsed: np.ndarray
    values: np.ndarray
    change: np.ndarray
    run: str
    provenance: str


@figure(
    "deep-latent-traversal",
    chapter="deep_vae",
    plot="lincollapse.plotting.deep:plot_latent_traversal",
    costs={"fast": STUDY_COST, "book": STUDY_COST, "paper": STUDY_COST},
)
def latent_traversal() -> LatentTraversal | None:
    """What a collapsed latent looks like: decoded images along active and collapsed latents."""
    stem = traversal_path()
    key = {"experiment": "deep_traversal", "run": TRAVERSAL_RUN.key(), "image": TRAVERSAL_IMAGE}
    try:
        arrays, meta = load_shipped(stem, key)
        provenance = shipped_provenance(stem, meta)
    except ReferenceResultError:
        found, model = finished(TRAVERSAL_RUN), load_model(TRAVERSAL_RUN)
        if found is None or model is None:
            return None  # neither shipped nor trained here: the chapter says so
        arrays, provenance = traversal_arrays(model, found[0]), "a run in the local results cache"
    prefix = "decoder_weight_"
    layers = sorted(int(k[len(prefix) :]) for k in arrays if k.startswith(prefix))
    decoder = [
        tuple(
            torch.tensor(arrays[f"decoder_{part}_{i}"].astype(np.float32))
            for part in ("weight", "bias")
        )
        for i in layers
    ]
    order = np.argsort(arrays["kl_mean"])
    latents = np.array([order[-1], order[-2], order[0]])
    values = np.array(TRAVERSAL_VALUES)
    codes = np.repeat(arrays["start_code"][None, None, :], latents.size, axis=0)
    codes = np.repeat(codes, values.size, axis=1)
    for r, latent in enumerate(latents):
        codes[r, :, latent] = values
    h = torch.tensor(codes, dtype=torch.float32)
    with torch.no_grad():
        for index, (weight, bias) in enumerate(decoder):
            h = torch.nn.functional.linear(h, weight, bias)
            if index < len(decoder) - 1:
                h = torch.relu(h)
    images = h.double().numpy()
    change = np.abs(images - images[:, values.size // 2 : values.size // 2 + 1]).max(axis=(1, 2))
    kl = arrays["kl_mean"][latents]
    return LatentTraversal(
        images=images.reshape(latents.size, values.size, 28, 28),
        latents=latents,
        kl=kl,
        collapsed=kl < STUDY_EPSILON,
        values=values,
        change=change,
        run=TRAVERSAL_RUN.label,
        provenance=provenance,
    )


# ------------------------------------------------------------------------------- status


def status(log=print) -> None:
    """Print, per run, finished / in progress (with its checkpoint step) / waiting."""
    for group, specs in GROUPS.items():
        for spec in specs:
            found = finished(spec)
            if found is not None:
                info = found[1].get("info", {})
                state = (
                    f"finished: {info.get('steps')} steps, converged={info.get('converged')}, "
                    f"{info.get('seconds', 0):.0f} s"
                )
            elif _checkpoint_path(spec).is_file():
                saved = torch.load(_checkpoint_path(spec), weights_only=False)
                state = f"in progress: {saved['step']} steps ({saved['seconds']:.0f} s)"
            else:
                state = "waiting"
            log(f"{group:<13} {spec.label:<40} {state}")


if __name__ == "__main__":  # the command in README and results/deep_study_*.json: lincollapse.cli
    from lincollapse.cli import main_for_module

    raise SystemExit(main_for_module(__spec__.name))
