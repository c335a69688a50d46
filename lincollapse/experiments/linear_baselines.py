"""Shipped comparison runs of the chapter *The linear VAE*: the paper's Adam and joint L-BFGS.

The chapter's figures *likelihood vs latent size* and *Gram matrices* are computed when the book is
built, with :func:`lincollapse.linear_vae_training.ascend_elbo` (L-BFGS on ELBO*(W, σ²), the encoder
in closed form). Beside them it shows two ways of training *all* of (W, V, D, σ²) jointly, too slow
to repeat at every build, so they are computed once and shipped in ``results/``:

``adam``
    Adam at the paper's settings: learning rate 1e-3, full batch, analytic ELBO, σ² learned from
    1 (as log σ²); 5,000 steps at every latent size, the official notebook's 12,000 at q = 200.
``joint_lbfgs``
    Full-batch L-BFGS (strong-Wolfe line search) on the same joint objective.

Both are :func:`~lincollapse.linear_vae_training.ascend_elbo` with ``encoder="learned"``: no
eigendecomposition, no rotation, from the same seeded random start. Every latent size of the
figure is trained (q = ``gram_q`` first); each run records the ELBO, the CPU time and the
off-diagonal ratio of the leading Gram block along the way, and the run at ``gram_q`` keeps the
Gram block and the alignment of its columns with the principal directions.

Regenerate (≈ 25 min of one CPU core; the file is rewritten after every run, marked incomplete
until the last)::

    python -m lincollapse.experiments.linear_baselines --write-reference --threads 1
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lincollapse import linear_vae_training, ppca, references
from lincollapse.presets import ExperimentConfig
from lincollapse.references import PROBE_STEPS, load_shipped, reference_info, save_shipped
from lincollapse.results_cache import ReferenceResultError

RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"
# method → (encoder, optimiser) of ascend_elbo, and its label in figures
METHODS = {"adam": ("learned", "adam"), "joint_lbfgs": ("learned", "lbfgs")}
LABELS = {
    "profiled_lbfgs": "L-BFGS on ELBO*(W, σ²) (encoder in closed form)",
    "adam": "Adam (lr 1e-3, every parameter: the paper's)",
    "joint_lbfgs": "L-BFGS on every parameter",
}
TRACE_FIELDS = ("steps", "cpu_seconds", "elbo", "gram_ratio", "sigma2")
SUMMARY_FIELDS = ("elbo", "steps", "evaluations", "seconds", "cpu_seconds", "gram_ratio")


@dataclasses.dataclass(frozen=True)
class LinearBaselinesConfig(ExperimentConfig):
    """The shipped joint-training runs; defaults are the ``book`` preset (also used by ``paper``).

    Attributes
    ----------
    n, seed : int
        MNIST images and the seed of their subset (the chapter's data).
    latent_sizes : tuple of int
        Those of the figure *likelihood vs latent size*.
    gram_q, block : int
        Latent size of the figure *Gram matrices* and the size of its leading block.
    adam_steps, adam_lr, adam_record_every : int, float, int
        Adam's steps at every latent size, learning rate and recording interval.
    adam_gram_steps : int
        Adam's steps at ``gram_q`` (the official notebook's 12,000). With a constant learning
        rate its first ``adam_steps`` steps are the run of the other latent sizes, so the
        likelihood figure reads that run at step ``adam_steps``.
    lbfgs_steps, lbfgs_record_every : int
    sigma2_init, init_scale, train_seed :
        The random start, shared with the chapter's own trainer.
    """

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {
            "n": 300,
            "latent_sizes": (0, 10, 20),
            "gram_q": 20,
            "block": 8,
            "adam_steps": 100,
            "adam_gram_steps": 140,
            "adam_record_every": 20,
            "lbfgs_steps": 60,
            "lbfgs_record_every": 10,
        },
    }
    n: int = 1000
    seed: int = 0
    latent_sizes: tuple[int, ...] = (0, 50, 100, 150, 200, 250, 300)
    gram_q: int = 200
    block: int = 30
    adam_steps: int = 5000
    adam_gram_steps: int = 12_000
    adam_lr: float = 1e-3
    adam_record_every: int = 100
    lbfgs_steps: int = 2500
    lbfgs_record_every: int = 25
    sigma2_init: float = 1.0
    init_scale: float = 1e-2
    train_seed: int = 0

    def training_options(self, method: str, q: int) -> dict[str, Any]:
        """Keyword arguments of :func:`~lincollapse.linear_vae_training.ascend_elbo` for
        ``method``."""
        encoder, optimiser = METHODS[method]
        adam = optimiser == "adam"
        adam_steps = self.adam_gram_steps if q == self.gram_q else self.adam_steps
        return {
            "encoder": encoder,
            "optimiser": optimiser,
            "steps": adam_steps if adam else self.lbfgs_steps,
            "lr": self.adam_lr,
            "record_every": self.adam_record_every if adam else self.lbfgs_record_every,
            "seed": self.train_seed,
            "sigma2_init": self.sigma2_init,
            "init_scale": self.init_scale,
            "block": self.block,
        }


def mnist_data(n: int, seed: int) -> tuple[np.ndarray, str]:
    """The images (n, 784), read-only, and an identifier (source and content hash) for keys."""
    from lincollapse.deep_runs import mnist_images  # cached, shared with the deep chapter

    return mnist_images(n, seed)


def reference_key(config: LinearBaselinesConfig, data_id: str) -> dict[str, Any]:
    """The configuration a shipped reference is validated against."""
    fields = {k: v for k, v in config.as_dict().items() if k != "preset"}
    return {"experiment": "linear_vae_baselines", "data": data_id, "dtype": "float64", **fields}


def reference_path(preset: str) -> Path:
    """Stem of the shipped runs: ``results/linear_vae_baselines_<preset>``."""
    return RESULTS_DIR / f"linear_vae_baselines_{preset}"


def behaviour_probe(config: LinearBaselinesConfig) -> dict[str, np.ndarray]:
    """The first :data:`~lincollapse.references.PROBE_STEPS` steps of every method at
    ``gram_q``, replayed (float64, CPU) from the runs' own start: the ELBO and σ² after each step
    and the final W's Frobenius norm. A shipped reference is current while the code reproduces
    them (:func:`lincollapse.references.verify_behaviour`)."""
    images, _ = mnist_data(config.n, config.seed)
    probe: dict[str, np.ndarray] = {}
    for method in METHODS:
        options = config.training_options(method, config.gram_q)
        options.update(steps=PROBE_STEPS, record_every=1, progress=False)
        run = linear_vae_training.ascend_elbo(images, config.gram_q, **options)
        probe[f"{method}_elbo"] = np.asarray(run.trace.elbo, dtype=np.float64)
        probe[f"{method}_sigma2"] = np.asarray(run.trace.sigma2, dtype=np.float64)
        probe[f"{method}_w_norm"] = np.asarray([torch.linalg.norm(run.model.W).item()])
    return probe


def column_alignment(W: np.ndarray, spectrum: ppca.DataSpectrum) -> tuple[np.ndarray, np.ndarray]:
    """How close each column of W is to a principal direction (an evaluation, after training).

    Columns are taken by decreasing norm. For column w_j, the eigenvector u_i of S with the
    largest cos²(w_j, u_i) is its match.

    Returns
    -------
    matched : ndarray of shape (q,), int
        Index i (0-based) of the matched eigenvector.
    cos2 : ndarray of shape (q,)
        cos²(w_j, u_i) ∈ [0, 1]; 1 when the column is a principal direction.
    """
    W = np.asarray(W, dtype=np.float64)
    W = W[:, np.argsort(-np.linalg.norm(W, axis=0), kind="stable")]
    norms = np.linalg.norm(W, axis=0)
    overlaps = (spectrum.eigenvectors.T @ W) ** 2 / np.where(norms > 0, norms, 1.0) ** 2
    matched = np.argmax(overlaps, axis=0)
    return matched, overlaps[matched, np.arange(W.shape[1])]


def relative_spacing(eigenvalues: np.ndarray, index: np.ndarray) -> np.ndarray:
    """min(|λ_i − λ_{i−1}|, |λ_i − λ_{i+1}|) / λ_i for each i of ``index``: near-ties are small."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    padded = np.concatenate([[np.inf], eigenvalues, [-np.inf]])
    i = np.asarray(index) + 1
    spacing = np.minimum(padded[i - 1] - padded[i], padded[i] - padded[i + 1])
    return spacing / eigenvalues[np.asarray(index)]


def train_baselines(
    config: LinearBaselinesConfig | None = None,
    *,
    write_reference: bool = False,
    command: str | None = None,
    progress: bool | None = None,
    out=print,
) -> dict[str, np.ndarray]:
    """Train every method at every latent size; optionally ship after each run.

    ``out`` receives one line per run.

    Runs go in the order: every method at ``gram_q``, then the other latent sizes ascending.
    Adam runs ``adam_gram_steps`` at ``gram_q``; its summary there is read at ``adam_steps``.
    With ``write_reference`` the arrays so far are written to ``results/`` after every run,
    with ``info["complete"]`` false until the last (see :func:`load_baselines`).
    """
    config = config or LinearBaselinesConfig.for_preset()
    images, data_id = mnist_data(config.n, config.seed)
    spectrum = ppca.data_spectrum(images)  # for the evaluation of alignment only
    sizes = list(config.latent_sizes)
    if config.gram_q not in sizes:
        raise ValueError(f"gram_q={config.gram_q} must be one of latent_sizes {sizes}")
    arrays: dict[str, np.ndarray] = {"latent_sizes": np.asarray(sizes, dtype=np.int64)}
    for method in METHODS:
        for field in SUMMARY_FIELDS:
            arrays[f"{method}_{field}"] = np.full(len(sizes), np.nan)
    order = [config.gram_q, *(q for q in sizes if q != config.gram_q)]
    done: list[str] = []
    probe = behaviour_probe(config) if write_reference else {}
    start = time.perf_counter()
    for q in order:
        for method in METHODS:
            run = linear_vae_training.ascend_elbo(
                images, q, progress=progress, **config.training_options(method, q)
            )
            j = sizes.index(q)
            summary = {
                "elbo": run.elbo,
                "steps": run.steps,
                "evaluations": run.evaluations,
                "seconds": run.seconds,
                "cpu_seconds": run.cpu_seconds,
                "gram_ratio": run.gram_ratio,
            }
            if METHODS[method][1] == "adam" and run.steps > config.adam_steps:
                # the longer run at gram_q: the other latent sizes' budget is its prefix
                k = int(np.searchsorted(run.trace.steps, config.adam_steps))
                if run.trace.steps[k] != config.adam_steps:
                    raise ValueError("adam_steps must be a multiple of adam_record_every")
                summary.update(
                    elbo=run.trace.elbo[k],
                    steps=config.adam_steps,
                    evaluations=np.nan,
                    seconds=run.trace.seconds[k],
                    cpu_seconds=run.trace.cpu_seconds[k],
                    gram_ratio=run.trace.gram_ratio[k],
                )
            for field in SUMMARY_FIELDS:
                arrays[f"{method}_{field}"][j] = summary[field]
            for field in TRACE_FIELDS:
                arrays[f"{method}_q{q}_{field}"] = getattr(run.trace, field)
            if q == config.gram_q:
                arrays[f"{method}_gram"] = run.gram()
                matched, cos2 = column_alignment(run.model.W.detach().numpy(), spectrum)
                arrays[f"{method}_matched"] = matched.astype(np.int64)
                arrays[f"{method}_cos2"] = cos2
            done.append(f"{method}:q={q}")
            best = ppca.max_log_likelihood(spectrum, q)
            out(
                f"{method:>12} q={q:>3}: {run.steps:>5} steps, {run.cpu_seconds:7.1f} s CPU "
                f"({run.seconds:7.1f} s wall), gap to l*(q) {best - run.elbo:.3e}, "
                f"Gram ratio {run.gram_ratio:.3f}"
            )
            if write_reference:
                info = reference_info(
                    command
                    or "python -m lincollapse.experiments.linear_baselines --write-reference",
                    "cpu",
                    time.perf_counter() - start,
                    cpu_seconds=training_cpu_seconds(arrays),
                    complete=len(done) == len(order) * len(METHODS),
                    done=list(done),
                )
                save_shipped(
                    reference_path(config.preset),
                    reference_key(config, data_id),
                    arrays,
                    lambda: probe,
                    info,
                )
    return arrays


@dataclasses.dataclass(frozen=True)
class BaselineRuns:
    """One method's shipped runs (see :data:`METHODS`).

    Attributes
    ----------
    method, label : str
    latent_sizes : ndarray of shape (k,)
    elbo, steps, evaluations, seconds, cpu_seconds, gram_ratio : ndarray of shape (k,)
        Final analytic ELBO (nats per image), optimiser steps, evaluations (NaN when read
        from a longer run's trace), wall and CPU time, and off-diagonal ratio of the leading
        Gram block, per latent size, after the same budget of steps at every latent size.
    traces : dict of int to dict of str to ndarray
        Per latent size, the records ``steps``, ``cpu_seconds``, ``elbo``, ``gram_ratio``,
        ``sigma2`` (Adam's at ``gram_q`` run on to ``adam_gram_steps``).
    gram : ndarray of shape (block, block)
        Leading Gram block at ``gram_q``.
    matched, cos2 : ndarray of shape (gram_q,)
        :func:`column_alignment` of W at ``gram_q``.
    """

    method: str
    label: str
    latent_sizes: np.ndarray
    elbo: np.ndarray
    steps: np.ndarray
    evaluations: np.ndarray
    seconds: np.ndarray
    cpu_seconds: np.ndarray
    gram_ratio: np.ndarray
    traces: dict[int, dict[str, np.ndarray]]
    gram: np.ndarray
    matched: np.ndarray
    cos2: np.ndarray


def baseline_runs(arrays: dict[str, np.ndarray], method: str) -> BaselineRuns:
    """The :class:`BaselineRuns` of ``method`` from the arrays of :func:`train_baselines`."""
    sizes = arrays["latent_sizes"]
    traces = {
        int(q): {f: arrays[f"{method}_q{q}_{f}"] for f in TRACE_FIELDS}
        for q in sizes
        if f"{method}_q{q}_steps" in arrays
    }
    return BaselineRuns(
        method=method,
        label=LABELS[method],
        latent_sizes=sizes,
        **{field: arrays[f"{method}_{field}"] for field in SUMMARY_FIELDS},
        traces=traces,
        gram=arrays[f"{method}_gram"],
        matched=arrays[f"{method}_matched"],
        cos2=arrays[f"{method}_cos2"],
    )


def training_cpu_seconds(arrays: dict[str, np.ndarray]) -> float:
    """CPU time of every run so far, from its first recorded evaluation to its last."""
    return float(
        sum(
            arrays[name][-1] - arrays[name][0]
            for name in arrays
            if re.fullmatch(r".+_q\d+_cpu_seconds", name)
        )
    )


def shipped_provenance(stem: Path, meta: dict, arrays: dict[str, np.ndarray]) -> str:
    """One line: what computed the shipped runs, when, where, and how long it took."""
    cpu = training_cpu_seconds(arrays) / 60
    return f"{references.shipped_provenance(stem, meta)}; {cpu:.0f} min of CPU for the training"


def load_baselines(
    config: LinearBaselinesConfig | None = None,
) -> tuple[dict[str, BaselineRuns] | None, str]:
    """The shipped runs of ``config`` (validated) and their provenance, or ``(None, reason)``.

    Validation (:func:`~lincollapse.references.load_shipped`): checksums, the configuration
    and data, and completeness. Staleness is checked by the tests, which replay the reference's
    behaviour probe (:func:`behaviour_probe`).
    """
    config = config or LinearBaselinesConfig.for_preset("book")
    _, data_id = mnist_data(config.n, config.seed)
    stem = reference_path(config.preset)
    try:
        arrays, meta = load_shipped(stem, reference_key(config, data_id))
    except ReferenceResultError as error:
        return None, str(error)
    if not meta.get("info", {}).get("complete", False):
        return None, f"reference {stem.name} is incomplete (done: {meta['info'].get('done')})"
    return {m: baseline_runs(arrays, m) for m in METHODS}, shipped_provenance(stem, meta, arrays)


if __name__ == "__main__":  # the command in results/linear_vae_baselines_*.json: lincollapse.cli
    from lincollapse.cli import main_for_module

    raise SystemExit(main_for_module(__spec__.name))
