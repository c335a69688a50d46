"""What the two chapters that train a linear decoder share: their images and arithmetic, the
training of one curve, and the table of ELBO-gap curves against the optimum ℓ*(q).

Chapters ``stochastic_elbo`` (:mod:`lincollapse.experiments.stochastic_elbo`) and
``linear_decoder_encoders`` (:mod:`lincollapse.experiments.linear_decoder_encoders`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from lincollapse.data import covariance_eigenvalues, load_mnist
from lincollapse.linear_decoder_vae import make_vae
from lincollapse.linear_decoder_vae_training import EncoderTraining, first_step_within, train_vae
from lincollapse.results_cache import ResultsCache, data_digest, source_fingerprint
from lincollapse.training_state import load_module_arrays, module_arrays

TOLERANCES = (1.0, 0.1)  # nats per image: "within 1 nat" and "within 0.1 nat" of ℓ*(q)


def torch_dtype(name: str) -> torch.dtype:
    """The training arithmetic named by a config's ``dtype``: ``"float32"`` or ``"float64"``."""
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {name!r}")
    return getattr(torch, name)


def training_images(n: int, seed: int) -> torch.Tensor:
    """``n`` MNIST images (subset ``seed``) as a float64 tensor."""
    return torch.as_tensor(load_mnist(n, seed=seed).images, dtype=torch.float64)


def training_data(config) -> tuple[torch.Tensor, np.ndarray]:
    """The images of a chapter's ``config`` (``n`` images of subset ``data_seed``, float64) and
    the eigenvalues of their covariance."""
    x = training_images(config.n, config.data_seed)
    return x, covariance_eigenvalues(x)


#: The modules whose code computes one run of :func:`train_curve`: a change to any of them makes
#: the runs in the results cache stale.
RUN_MODULES = (
    "lincollapse.gaussian",
    "lincollapse.linear_decoder_vae",
    "lincollapse.linear_decoder_vae_training",
    "lincollapse.linear_vae",
    "lincollapse.ppca",
    "lincollapse.training",
)
_MODEL, _SNAPSHOT = "model:", "checkpoint:"


def run_cache() -> ResultsCache:
    """The results cache of :func:`train_curve`'s runs, fingerprinted by :data:`RUN_MODULES`."""
    return ResultsCache(fingerprint=source_fingerprint(RUN_MODULES))


def train_curve(
    config,
    x: torch.Tensor,
    eigenvalues: np.ndarray,
    seed: int,
    *,
    on_checkpoint: Callable[[int, torch.nn.Module], None] | None = None,
    cache: ResultsCache | None = None,
    **options,
) -> EncoderTraining:
    """:func:`~lincollapse.linear_decoder_vae_training.train_vae` on ``x`` with the ``q``,
    ``steps``, ``lr``, ``sigma2_init``, ``record_every`` and ``dtype`` of ``config`` (either
    chapter's), from initialisation ``seed``; ``options`` are the chapter's own arguments
    (``kind``, ``hidden``, ``estimator``, ``checkpoints``).

    Each run is kept in the results cache (``cache``, default :func:`run_cache`) as soon as it
    ends, with its trained parameters and the parameters at its ``checkpoints``: a chapter
    interrupted part-way trains only the runs it had not finished when it is run again. A run
    read from the cache calls ``on_checkpoint(step, model)`` with the saved parameters, as the
    training did.
    """
    fields = ("q", "steps", "lr", "sigma2_init", "record_every", "dtype")
    key = {
        "experiment": "linear_decoder_run",
        "data": data_digest(x),
        "seed": int(seed),
        **{name: getattr(config, name) for name in fields},
        **{
            name: list(value) if isinstance(value, (tuple, list)) else value
            for name, value in sorted(options.items())
        },
    }
    cache = cache or run_cache()
    snapshots: dict[str, np.ndarray] = {}

    def keep(step: int, model: torch.nn.Module) -> None:
        snapshots.update(module_arrays(model, f"{_SNAPSHOT}{step}:"))
        if on_checkpoint is not None:
            on_checkpoint(step, model)

    trained: list[EncoderTraining] = []

    def compute() -> dict[str, np.ndarray]:
        run = train_vae(
            x,
            config.q,
            steps=config.steps,
            lr=config.lr,
            seed=seed,
            sigma2_init=config.sigma2_init,
            record_every=config.record_every,
            dtype=torch_dtype(config.dtype),
            eigenvalues=eigenvalues,
            on_checkpoint=keep,
            **options,
        )
        trained.append(run)
        return {
            "steps": run.steps,
            "elbo": run.elbo,
            "objective": run.objective,
            "optimum": np.float64(run.optimum),
            "seconds": np.float64(run.seconds),
            **module_arrays(run.model, _MODEL),
            **snapshots,
        }

    arrays, _, hit = cache.get_or_compute(key, compute)
    if not hit:
        return trained[0]
    kind = options.get("kind", "linear")
    model = make_vae(kind, x, config.q, seed=seed, hidden=options.get("hidden"))
    if on_checkpoint is not None:
        steps = sorted({int(name.split(":")[1]) for name in arrays if name.startswith(_SNAPSHOT)})
        with torch.no_grad():
            for step in steps:
                on_checkpoint(step, load_module_arrays(model, arrays, f"{_SNAPSHOT}{step}:"))
    return EncoderTraining(
        model=load_module_arrays(model, arrays, _MODEL),
        steps=arrays["steps"],
        elbo=arrays["elbo"],
        objective=arrays["objective"],
        optimum=float(arrays["optimum"]),
        kind=kind,
        estimator=options.get("estimator", "analytic"),
        seconds=float(arrays["seconds"]),
    )


def format_step(step: int | None) -> str:
    return "not reached" if step is None else f"{step:,}"


class GapCurves:
    """ELBO curves against the optimum, for a result with ``steps`` (k,), ``elbo`` (name ->
    (R, k) per seed) and ``optimum`` ℓ*(q); ``name`` is an estimator or an encoder kind."""

    steps: np.ndarray
    elbo: dict[str, np.ndarray]
    optimum: float

    def gaps(self, name: str) -> np.ndarray:
        """ℓ*(q) − ELBO, shape (R, k)."""
        return self.optimum - self.elbo[name]

    def final_gaps(self, name: str) -> np.ndarray:
        """Final gap of each seed, shape (R,)."""
        return self.gaps(name)[:, -1]

    def steps_to(self, name: str, tolerance: float) -> list[int | None]:
        """Per seed, the first recorded step within ``tolerance`` nats of ℓ*(q) (None: never)."""
        return [first_step_within(self.steps, gap, tolerance) for gap in self.gaps(name)]


def curves_table(result, names: Sequence[str], labels: dict[str, str]) -> str:
    """Final gap (mean ± sd over seeds) and each seed's steps to every tolerance, one row per
    curve ``names`` of ``result`` (which has ``final_gaps(name)`` and ``steps_to(name, t)``)."""
    head = f"{'':<26} {'final gap (nats)':>20} " + " ".join(
        f"{'steps to ' + format(t, 'g') + ' nat':>24}" for t in TOLERANCES
    )
    lines = [head]
    for name in names:
        gaps = result.final_gaps(name)
        spread = gaps.std(ddof=1) if gaps.size > 1 else 0.0
        cells = [
            ", ".join(format_step(s) for s in result.steps_to(name, tolerance))
            for tolerance in TOLERANCES
        ]
        lines.append(
            f"{labels[name]:<26} {gaps.mean():>11.4f} ± {spread:<6.4f} "
            + " ".join(f"{c:>24}" for c in cells)
        )
    return "\n".join(lines)
