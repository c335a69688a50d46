"""Experiments of the chapter *The linear VAE*: likelihood against latent size, the Gram matrices
of trained decoders, and the ELBO gap along a rotation of the maximiser.

One function per figure, each returning a dataclass of data (those classes, with their tables
and glued numbers, live in :mod:`lincollapse.experiments.linear_vae_results`; plotting in
:mod:`lincollapse.plotting.linear`). Every configuration is a frozen dataclass whose defaults are
the ``book`` preset; ``fast`` shrinks data and training to seconds for CI; ``paper`` uses the
paper's optimiser (Adam, lr 1e-3, full batch).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import numpy as np

from lincollapse import linear_vae, linear_vae_training, ppca
from lincollapse.experiments import FAST_MNIST, figure, linear_baselines, mnist_with_spectrum
from lincollapse.experiments.linear_vae_results import (
    ElboGapResult,
    GramResult,
    GramRun,
    LikelihoodCurve,
)
from lincollapse.presets import ExperimentConfig
from lincollapse.reader import read_or_compute
from lincollapse.results_cache import ResultsCache, data_digest, source_fingerprint

# --------------------------------------------------------------------------------------------
# Linear VAE: likelihood against latent size
# --------------------------------------------------------------------------------------------


#: The modules whose code computes :func:`_ascend`'s runs: a change to any of them makes the
#: runs in the results cache stale.
ASCENT_MODULES = (
    "lincollapse.gaussian",
    "lincollapse.linear_vae",
    "lincollapse.linear_vae_training",
    "lincollapse.ppca",
    "lincollapse.profiled_elbo",
    "lincollapse.training",
)


@functools.lru_cache(maxsize=16)
def _ascend(n: int, seed: int, q: int, options: tuple[tuple[str, Any], ...]):
    """:func:`linear_vae_training.ascend_elbo` on the chapter's data, cached: in memory (the
    Gram figure's run is one of the likelihood figure's: same data, q and options) and in the
    results cache as soon as it ends, so a chapter interrupted part-way trains only the latent
    sizes it had not finished."""
    images, _ = mnist_with_spectrum(n, seed)
    key = {"experiment": "linear_vae_ascent", "data": data_digest(images), "q": q, **dict(options)}
    cache = ResultsCache(fingerprint=source_fingerprint(ASCENT_MODULES))
    trained = []

    def compute() -> dict[str, np.ndarray]:
        trained.append(linear_vae_training.ascend_elbo(images, q, **dict(options)))
        return trained[0].arrays()

    arrays, _, hit = cache.get_or_compute(key, compute)
    return linear_vae_training.AscentTraining.from_arrays(arrays) if hit else trained[0]


@dataclasses.dataclass(frozen=True)
class _AscentOptions:
    """The fields of the two configurations trained with
    :func:`linear_vae_training.ascend_elbo`: the data (``n`` images, ``seed``), the training
    options, and the preset of the shipped joint-training runs to attach (``baselines``)."""

    n: int = 1000
    seed: int = 0
    encoder: str = "optimal"
    optimiser: str = "lbfgs"
    steps: int = 3000
    lr: float = 1e-3
    tolerance: float | None = 3e-4
    record_every: int = 25
    block: int = 30
    train_seed: int = 0
    baselines: str | None = "book"

    def ascent_options(self) -> tuple[tuple[str, Any], ...]:
        return (
            ("encoder", self.encoder),
            ("optimiser", self.optimiser),
            ("steps", self.steps),
            ("lr", self.lr),
            ("tolerance", self.tolerance),
            ("record_every", self.record_every),
            ("seed", self.train_seed),
            ("block", self.block),
        )


_ADAM_PAPER = {
    "encoder": "learned",
    "optimiser": "adam",
    "steps": 12_000,
    "lr": 1e-3,
    "tolerance": None,
    "record_every": 100,
}


@dataclasses.dataclass(frozen=True)
class LikelihoodVsLatentSizeConfig(ExperimentConfig, _AscentOptions):
    """Train one linear VAE per latent size from a random start; compare with exact pPCA.

    ``book``: :func:`lincollapse.linear_vae_training.ascend_elbo` — L-BFGS on ELBO*(W, σ²), the
    encoder in closed form, no eigendecomposition or rotation — for q ∈ {0, 50, …, 300} on 1000
    images, until a window of ``record_every`` steps gains less than ``tolerance`` nats per image
    (at most ``steps``). ``paper``: Adam, lr 1e-3, 12,000 full-batch steps per q, every parameter
    learned (the official notebook's settings). ``fast``: 300 images, q ∈ {0, 20, 40}.
    ``baselines``: the preset of the shipped joint-training runs to attach
    (:mod:`lincollapse.experiments.linear_baselines`), when they match the data and latent sizes;
    ``None`` for none.
    """

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {
            **FAST_MNIST,
            "latent_sizes": (0, 20, 40),
            "steps": 300,
            "reference_q": 20,
            "block": 10,
            "baselines": None,
        },
        "paper": _ADAM_PAPER,
        "reader": {},  # the book's runs, read from results/reader/ (lincollapse.reader)
    }
    # Measured on the book's 2-core CPU (see lincollapse list).
    COSTS: ClassVar[dict[str, str]] = {
        "fast": "≈ 2 s",
        "book": "≈ 2.5 min of CPU time (L-BFGS on ELBO*, one thread)",
        "paper": "≈ 30 min of CPU time (projected from the shipped Adam runs)",
        "reader": "< 1 s (the book's runs, shipped in results/reader/)",
    }
    latent_sizes: tuple[int, ...] = (0, 50, 100, 150, 200, 250, 300)
    reference_q: int = 50


def _method(encoder: str, optimiser: str) -> str:
    if encoder == "optimal":
        return "profiled_lbfgs" if optimiser == "lbfgs" else "profiled_adam"
    return "joint_lbfgs" if optimiser == "lbfgs" else "adam"


def _baselines(preset: str, n: int, seed: int, latent_sizes) -> tuple[dict, str]:
    """The shipped runs of ``preset`` if they were made on these data for these latent sizes."""
    config = linear_baselines.LinearBaselinesConfig.for_preset(preset)
    if (config.n, config.seed) != (n, seed) or not set(latent_sizes) <= set(config.latent_sizes):
        return {}, "the shipped runs are for other data or latent sizes"
    runs, provenance = linear_baselines.load_baselines(config)
    if runs is None:
        return {}, provenance
    index = [list(config.latent_sizes).index(q) for q in latent_sizes]
    return {m: _select(r, index) for m, r in runs.items()}, provenance


def _select(runs: linear_baselines.BaselineRuns, index: list[int]) -> linear_baselines.BaselineRuns:
    fields = ("latent_sizes", *linear_baselines.SUMMARY_FIELDS)
    return dataclasses.replace(runs, **{f: getattr(runs, f)[index] for f in fields})


@dataclasses.dataclass(frozen=True)
class TrainedLatentSizes:
    """What :func:`likelihood_vs_latent_size` trains: per latent size, the final ELBO and the
    cost and Gram ratio of :func:`linear_vae_training.ascend_elbo` (the rest is closed form)."""

    elbo: np.ndarray
    seconds: np.ndarray
    cpu_seconds: np.ndarray
    steps: np.ndarray
    evaluations: np.ndarray
    gram_ratio: np.ndarray


def _train_latent_sizes(config: LikelihoodVsLatentSizeConfig) -> TrainedLatentSizes:
    runs = [_ascend(config.n, config.seed, q, config.ascent_options()) for q in config.latent_sizes]
    return TrainedLatentSizes(
        *(
            np.asarray([getattr(run, name) for run in runs])
            for name in ("elbo", "seconds", "cpu_seconds", "steps", "evaluations", "gram_ratio")
        )
    )


@figure(
    "likelihood-vs-latent-size",
    chapter="linear_vae",
    plot="lincollapse.plotting.linear:plot_likelihood_vs_latent_size",
    config=LikelihoodVsLatentSizeConfig,
    paper_figure="log-likelihood vs latent size (as in the public course-report reproduction)",
)
def likelihood_vs_latent_size(
    config: LikelihoodVsLatentSizeConfig | None = None,
) -> LikelihoodCurve:
    """ELBO trained from a random start against the exact pPCA optimum and fixed-σ² pPCA."""
    config = config or LikelihoodVsLatentSizeConfig.for_preset()
    _, spectrum = mnist_with_spectrum(config.n, config.seed)
    fixed_sigma2 = ppca.sigma2_mle(spectrum, config.reference_q)
    trained = read_or_compute(config, _train_latent_sizes, TrainedLatentSizes)
    optimum, fixed, active = (
        np.asarray(c)
        for c in zip(
            *[
                (
                    ppca.max_log_likelihood(spectrum, q),
                    ppca.average_log_likelihood(
                        spectrum,
                        ppca.fixed_sigma2_maximiser(spectrum, q, fixed_sigma2),
                        fixed_sigma2,
                    ),
                    q - ppca.collapsed_column_count(spectrum, q, fixed_sigma2),
                )
                for q in config.latent_sizes
            ],
            strict=True,
        )
    )
    elbo, seconds, cpu, steps = trained.elbo, trained.seconds, trained.cpu_seconds, trained.steps
    evaluations, ratio = trained.evaluations, trained.gram_ratio
    baselines, provenance = (
        _baselines(config.baselines, config.n, config.seed, config.latent_sizes)
        if config.baselines
        else ({}, "not requested")
    )
    return LikelihoodCurve(
        latent_sizes=np.asarray(config.latent_sizes),
        ppca_optimum=optimum,
        elbo=elbo,
        fixed_sigma2_loglik=fixed,
        fixed_sigma2=fixed_sigma2,
        reference_q=config.reference_q,
        active_columns=active,
        seconds=seconds,
        cpu_seconds=cpu,
        steps=steps,
        evaluations=evaluations,
        gram_ratio=ratio,
        method=_method(config.encoder, config.optimiser),
        baselines=baselines,
        baseline_provenance=provenance,
    )


# --------------------------------------------------------------------------------------------
# Linear VAE: Gram matrices
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GramMatricesConfig(ExperimentConfig, _AscentOptions):
    """Gram matrix WᵀW (leading ``block``) of a linear VAE trained from a random start.

    The training is the likelihood figure's at q = ``q`` (same options: the run is shared).
    """

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {**FAST_MNIST, "q": 20, "block": 10, "steps": 300, "baselines": None},
        "paper": _ADAM_PAPER,
        "reader": {},  # the book's run, read from results/reader/ (lincollapse.reader)
    }
    # Measured on the book's 2-core CPU (see lincollapse list).
    COSTS: ClassVar[dict[str, str]] = {
        "fast": "≈ 1 s",
        "book": "≈ 20 s of CPU time (none when the likelihood figure ran first)",
        "reader": "< 1 s (the book's run, shipped in results/reader/)",
        "paper": "≈ 6 min of CPU time (projected)",
    }
    q: int = 200
    rotation_seed: int = 1


@dataclasses.dataclass(frozen=True)
class TrainedGramRun:
    """What :func:`gram_matrices` trains: the decoder W, its leading Gram block, the trace."""

    W: np.ndarray
    gram: np.ndarray
    trace: dict[str, np.ndarray]


def _train_gram_run(config: GramMatricesConfig) -> TrainedGramRun:
    trained = _ascend(config.n, config.seed, config.q, config.ascent_options())
    trace = {f: np.asarray(getattr(trained.trace, f)) for f in linear_baselines.TRACE_FIELDS}
    return TrainedGramRun(trained.model.W.detach().numpy(), trained.gram(config.block), trace)


@figure(
    "gram-matrices",
    chapter="linear_vae",
    plot="lincollapse.plotting.linear:plot_gram_matrices",
    config=GramMatricesConfig,
)
def gram_matrices(config: GramMatricesConfig | None = None) -> GramResult:
    """WᵀW of linear VAEs trained from a random start beside pPCA maximisers (any rotation)."""
    config = config or GramMatricesConfig.for_preset()
    _, spectrum = mnist_with_spectrum(config.n, config.seed)
    trained = read_or_compute(config, _train_gram_run, TrainedGramRun, "run")
    method = _method(config.encoder, config.optimiser)
    matched, cos2 = linear_baselines.column_alignment(trained.W, spectrum)
    runs = {
        method: GramRun(
            linear_baselines.LABELS.get(method, method),
            trained.gram,
            dict(trained.trace),
            matched,
            cos2,
        )
    }
    provenance = "not requested"
    if config.baselines:
        shipped, provenance = _baselines(config.baselines, config.n, config.seed, [config.q])
        base_config = linear_baselines.LinearBaselinesConfig.for_preset(config.baselines)
        if shipped and (base_config.gram_q, base_config.block) != (config.q, config.block):
            shipped, provenance = {}, "the shipped runs are for another q or block"
        for name, base in shipped.items():
            runs[name] = GramRun(
                base.label, base.gram, base.traces[config.q], base.matched, base.cos2
            )
    fit = ppca.fit(spectrum, config.q)
    rng = np.random.default_rng(config.rotation_seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(config.q, config.q)))
    b = config.block
    mle = linear_vae.leading_gram(fit.W, b)
    rotated = ((fit.W @ rotation).T @ (fit.W @ rotation))[:b, :b]  # in its own column order
    return GramResult(
        runs=runs,
        ppca_rotated=rotated,
        ppca_mle=mle,
        off_diagonal_ratio={
            "vae": runs[method].ratio,
            "ppca_rotated": linear_vae.off_diagonal_ratio(rotated),
            "ppca_mle": linear_vae.off_diagonal_ratio(mle),
        },
        optimum=float(fit.log_likelihood),
        sigma2_mle=float(fit.sigma2),
        eigenvalues=spectrum.eigenvalues,
        method=method,
        baseline_provenance=provenance,
        q=config.q,
        block=b,
    )


# --------------------------------------------------------------------------------------------
# Linear VAE: the ELBO gap along a rotation of the maximiser
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ElboGapConfig(ExperimentConfig):
    """Rotate latents 1 and 2 of W_MLE (q latents) by θ ∈ [0, π]."""

    OVERRIDES: ClassVar[dict[str, dict[str, Any]]] = {"fast": {**FAST_MNIST, "n_angles": 25}}
    # Measured on the book's 2-core CPU (see lincollapse list).
    COSTS: ClassVar[dict[str, str]] = {"fast": "< 1 s", "book": "≈ 5 s", "paper": "≈ 5 s (as book)"}
    n: int = 1000
    seed: int = 0
    q: int = 10
    n_angles: int = 181


@figure(
    "elbo-gap",
    chapter="linear_vae",
    plot="lincollapse.plotting.linear:plot_elbo_gap",
    config=ElboGapConfig,
)
def elbo_gap_along_rotation(config: ElboGapConfig | None = None) -> ElboGapResult:
    """ELBO with the optimal encoder vs log-likelihood along rotations of the pPCA maximiser."""
    config = config or ElboGapConfig.for_preset()
    _, spectrum = mnist_with_spectrum(config.n, config.seed)
    fit = ppca.fit(spectrum, config.q)
    theta = np.linspace(0.0, np.pi, config.n_angles)
    loglik, elbo, formula = [], [], []
    for angle in theta:
        rotation = np.eye(config.q)
        c, s = np.cos(angle), np.sin(angle)
        rotation[:2, :2] = [[c, -s], [s, c]]
        W = fit.W @ rotation
        V, D = linear_vae.optimal_encoder(W, fit.sigma2)
        loglik.append(ppca.average_log_likelihood(spectrum, W, fit.sigma2))
        elbo.append(linear_vae.elbo_terms(spectrum, W, V, D, fit.sigma2).elbo)
        formula.append(linear_vae.elbo_gap(W, fit.sigma2))
    return ElboGapResult(
        theta=theta,
        log_likelihood=np.asarray(loglik),
        elbo=np.asarray(elbo),
        gap_formula=np.asarray(formula),
        optimum=fit.log_likelihood,
        q=config.q,
    )
