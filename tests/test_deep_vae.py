"""Deep Gaussian VAE: model, batching, learned σ², divergence, collapse metric, experiments."""

from __future__ import annotations

import json
import math

import matplotlib
import numpy as np
import pytest
import torch

from lincollapse.collapse import collapse_thresholds, collapsed_fraction_from_thresholds
from lincollapse.deep_vae import (
    Architecture,
    BatchedGaussianVAE,
    GaussianVAE,
    UnknownDeviceError,
    build_runs,
    choose_layout,
    optimal_sigma2,
    resolve_device,
    train_batched,
)
from lincollapse.gaussian import kl_to_prior
from lincollapse.training import TrainingDivergedError, maximise

matplotlib.use("Agg")
TINY = Architecture(data_dim=20, latent=3, encoder_hidden=(16, 8), decoder_hidden=(8, 16))


@pytest.fixture
def data() -> torch.Tensor:
    return torch.rand(40, 20, generator=torch.Generator().manual_seed(5))


# ----------------------------------------------------------------------------- collapse metric


def _constructed_encoder(n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder outputs with known KLs (unit variance, KL = μ²/2) over 4 latents.

    latent 0: KL 0 everywhere; latent 1: KL 1 everywhere; latent 2: KL 0 except 5 on one image
    (1 % of 100, allowed by δ = 0.01); latent 3: KL 0 except 5 on two images (not allowed).
    """
    kl = torch.zeros(n, 4, dtype=torch.float64)
    kl[:, 1] = 1.0
    kl[0, 2] = 5.0
    kl[:2, 3] = 5.0
    return torch.sqrt(2 * kl), torch.ones_like(kl)


def test_collapsed_fraction_on_constructed_encoder():
    mean, variance = _constructed_encoder()
    thresholds = collapse_thresholds(kl_to_prior(mean, variance), delta=0.01)
    np.testing.assert_allclose(thresholds, [0.0, 1.0, 0.0, 5.0], atol=1e-12)
    fraction = collapsed_fraction_from_thresholds(thresholds, [0.0, 0.5, 2.0, 6.0])
    # KL < ε is strict: nothing is collapsed at ε = 0.
    np.testing.assert_allclose(fraction, [0.0, 0.5, 0.75, 1.0])
    # with δ = 0 the one-image outlier of latent 2 counts
    strict = collapse_thresholds(kl_to_prior(mean, variance), delta=0.0)
    np.testing.assert_allclose(strict, [0.0, 1.0, 5.0, 5.0], atol=1e-12)


# ----------------------------------------------------------------------------- model


def test_batched_model_equals_per_run_models(data):
    sigma2s, learned, seeds = [3.0, 0.1, 0.01], [False, True, False], [0, 1, 2]
    batched = BatchedGaussianVAE(TINY, sigma2s, learned, seeds, device="cpu")
    history = maximise(lambda: batched.elbo(data), batched.parameters(), steps=6, lr=1e-2)
    for r, (s, v, seed) in enumerate(zip(sigma2s, learned, seeds, strict=True)):
        single = GaussianVAE(TINY, s, v, seed, device="cpu")
        alone = maximise(lambda m=single: m.elbo(data), single.parameters(), steps=6, lr=1e-2)
        np.testing.assert_allclose(history.values[:, r], alone.values, rtol=1e-5, atol=1e-4)
        assert batched.sigma2[r] == pytest.approx(single.sigma2, rel=1e-6)
    assert batched.sigma2[0] == pytest.approx(3.0) and batched.sigma2[2] == pytest.approx(0.01)
    assert batched.sigma2[1] != pytest.approx(0.1)  # the learned one moved


@pytest.mark.parametrize("sample", [False, True])
def test_looped_and_batched_layouts_train_the_same_runs(data, sample):
    """Both layouts: same initial weights, noise and Adam updates (float64, to round-off)."""
    sigma2s, learned, seeds = [3.0, 0.1, 0.01], [False, True, False], [0, 1, 2]
    x = data.double()
    values = {}
    for layout in ("loop", "batched"):
        model = build_runs(
            TINY, sigma2s, learned, seeds, layout=layout, dtype=torch.float64, device="cpu"
        )
        history = maximise(
            lambda m=model: m.elbo(x, sample=sample), model.parameters(), steps=8, lr=1e-2
        )
        with torch.no_grad():
            mean, logvar = model.encode(x)
        values[layout] = (history.values, model.sigma2, mean.numpy(), logvar.numpy())
    for ours, theirs in zip(values["loop"], values["batched"], strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    assert values["loop"][1][1] != pytest.approx(0.1)  # the learned σ² moved in both


def test_layout_choice(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert choose_layout("auto", "cpu") == "batched"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert choose_layout("auto", "cpu", load=0.5) == "loop"  # idle: the loop
    assert choose_layout("auto", "cpu", load=6.0) == "batched"  # busy: batched
    monkeypatch.setattr("os.getloadavg", lambda: (1.0, 1.0, 1.0))
    assert choose_layout("auto", "cpu") == "loop"
    monkeypatch.setattr("os.getloadavg", lambda: (7.0, 1.0, 1.0))
    assert choose_layout("auto", "cpu") == "batched"
    assert choose_layout("batched", "cpu") == "batched"
    assert choose_layout("loop", "cpu", load=7.0) == "loop"
    with pytest.raises(ValueError, match="layout"):
        choose_layout("stacked", "cpu")


def test_train_batched_records_the_same_numbers_in_both_layouts(data):
    kwargs = dict(
        steps=20, lr=5e-3, device="cpu", progress=False, record_every=10, dtype=torch.float64
    )
    loop = train_batched(data.numpy(), TINY, [1.0, 0.1], [False, True], layout="loop", **kwargs)
    batched = train_batched(
        data.numpy(), TINY, [1.0, 0.1], [False, True], layout="batched", **kwargs
    )
    assert (loop.layout, batched.layout) == ("loop", "batched")
    for name in ("elbo", "sigma2", "thresholds", "kl_mean"):
        np.testing.assert_allclose(
            getattr(loop, name), getattr(batched, name), rtol=1e-9, atol=1e-12, err_msg=name
        )


def test_posterior_outputs_mean_and_variance(data):
    model = BatchedGaussianVAE(TINY, [1.0, 0.5], device="cpu")
    mean, variance = model.posterior(data)
    assert mean.shape == variance.shape == (2, 40, 3)
    assert bool((variance > 0).all())


def test_learned_sigma2_reaches_the_analytic_optimum(data):
    model = GaussianVAE(
        TINY, sigma2=1.0, learn_sigma2=True, seed=3, dtype=torch.float64, device="cpu"
    )
    x = data.double()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name == "log_sigma2")
    with torch.no_grad():
        reconstruction = model.decode(model.encode(x)[0])
    target = optimal_sigma2(x, reconstruction)
    assert not math.isclose(target, 1.0, rel_tol=0.1)
    maximise(lambda: model.elbo(x, sample=False), model.parameters(), steps=30, optimiser="lbfgs")
    assert model.sigma2 == pytest.approx(target, rel=1e-6)


def test_optimal_sigma2_formula():
    x = np.zeros((2, 4))
    x_hat = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]])
    assert optimal_sigma2(x, x_hat) == pytest.approx((4.0 + 4.0) / 2 / 4)


def test_injected_nan_stops_training_naming_the_run(data):
    model = BatchedGaussianVAE(TINY, [1.0, 0.1], device="cpu")
    with torch.no_grad():
        model.weights[0][1, 0, 0] = float("nan")
    names = ["sigma2=1 (fixed)", "sigma2=0.1 (fixed)"]
    with pytest.raises(TrainingDivergedError, match=r"sigma2=0\.1 \(fixed\)") as error:
        maximise(lambda: model.elbo(data), model.parameters(), steps=3, run_names=names)
    assert "sigma2=1 (fixed)" not in str(error.value)


def test_absurd_learning_rate_diverges_with_a_clear_error(data):
    with pytest.raises(TrainingDivergedError, match=r"sigma2=.* \((fixed|learned)\)"):
        train_batched(
            data.numpy(),
            TINY,
            [1.0, 1e-4],
            steps=200,
            lr=1e12,
            device="cpu",
            record_every=1,
            progress=False,
        )


def test_fast_training_improves_the_elbo(data):
    runs = train_batched(
        data.numpy(),
        TINY,
        [1.0, 0.1],
        [False, True],
        steps=60,
        lr=5e-3,
        record_every=20,
        device="cpu",
        progress=False,
    )
    assert runs.elbo.shape == (4, 2) and runs.thresholds.shape == (4, 2, 3)
    assert np.all(runs.elbo[-1] > runs.elbo[0] + 1.0)
    assert runs.sigma2[-1, 0] == pytest.approx(1.0)


def test_unknown_device_is_a_clear_error():
    with pytest.raises(UnknownDeviceError, match="valid devices are auto, cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(UnknownDeviceError):
        GaussianVAE(TINY, device="gpu0")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(UnknownDeviceError, match="CUDA is not available"):
            resolve_device("cuda")


def test_flop_count():
    # one layer 20→16 etc.: MACs = 20·16 + 16·8 + 8·6 + 3·8 + 8·16 + 16·20
    macs = 320 + 128 + 48 + 24 + 128 + 320
    assert TINY.forward_flops(10) == 2 * 10 * macs
    assert TINY.step_flops(10) == 3 * TINY.forward_flops(10)


# ----------------------------------------------------------------------------- experiments


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LINCOLLAPSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("LINCOLLAPSE_QUIET", "1")
    return tmp_path


def test_linear_prediction_counts_eigenvalues():
    from lincollapse.collapse import linear_collapse_prediction

    eigenvalues = np.array([5.0, 2.0, 0.5, 0.0])
    fraction = linear_collapse_prediction(eigenvalues, np.array([10.0, 1.0, 0.1, 1e-9]), latent=3)
    np.testing.assert_allclose(fraction, [1.0, 1 / 3, 0.0, 0.0])


def test_runs_are_cached_and_constant_lr_short_runs_are_prefixes_of_long_ones(cache_dir):
    from lincollapse.deep_runs import load_or_train
    from lincollapse.experiments.deep import DeepVAEConfig

    config = DeepVAEConfig.for_preset(
        "fast",
        n=60,
        latent=4,
        steps=40,
        lr_decay="none",
        convergence_steps=80,
        convergence_lr=2e-3,
        runs_per_batch=2,
    )
    runs = [(s, False) for s in config.convergence_sigma2]
    long, sources = load_or_train(config, runs, config.long_schedule(), device="cpu")
    assert all(s.startswith("trained now") for s in sources)
    again, sources = load_or_train(config, runs, config.long_schedule(), device="cpu")
    assert all(s.startswith("cache") for s in sources)
    np.testing.assert_array_equal(again.thresholds, long.thresholds)
    short, sources = load_or_train(config, runs[:1], device="cpu")
    assert sources[0].startswith("first 40 steps of the cached 80-step run")
    direct = DeepVAEConfig.for_preset(
        "fast", n=60, latent=4, steps=40, lr_decay="none", convergence_steps=40
    )
    fresh, sources = load_or_train(direct, runs[:1], device="cpu")
    assert sources[0].startswith("trained now")
    np.testing.assert_allclose(short.elbo, fresh.elbo, rtol=1e-4)
    np.testing.assert_allclose(short.thresholds, fresh.thresholds, rtol=1e-3, atol=1e-5)


def test_decayed_runs_are_not_read_as_prefixes(cache_dir):
    from lincollapse.deep_runs import MissingRunsError, load_or_train
    from lincollapse.experiments.deep import DeepVAEConfig

    config = DeepVAEConfig.for_preset(
        "fast",
        n=60,
        latent=4,
        steps=40,
        lr_decay="cosine",
        convergence_steps=80,
        convergence_lr=2e-3,
        convergence_lr_decay="cosine",
    )
    runs = [(1.0, False)]
    load_or_train(config, runs, config.long_schedule(), device="cpu")
    with pytest.raises(MissingRunsError, match="not cached"):
        load_or_train(config, runs, device="cpu", train_missing=False)
    short, sources = load_or_train(config, runs, device="cpu")
    assert sources[0].startswith("trained now")


def test_cosine_schedule_and_its_effect():
    from lincollapse.deep_vae import lr_multiplier

    assert lr_multiplier("none", 100) is None
    cosine = lr_multiplier("cosine", 101)
    assert cosine(1) == pytest.approx(1.0) and cosine(101) == pytest.approx(0.01)
    assert cosine(51) == pytest.approx(0.505)
    assert all(cosine(t) >= cosine(t + 1) for t in range(1, 101))
    with pytest.raises(ValueError, match="lr_decay"):
        lr_multiplier("step", 10)


def test_recording_does_not_change_training(data):
    kwargs = dict(steps=40, lr=5e-3, lr_decay="cosine", device="cpu", progress=False)
    every = train_batched(data.numpy(), TINY, [1.0, 0.1], record_every=1, **kwargs)
    rarely = train_batched(data.numpy(), TINY, [1.0, 0.1], record_every=20, **kwargs)
    np.testing.assert_array_equal(every.steps[::20], rarely.steps)
    # the encoder statistics are deterministic (the recorded single-sample ELBOs are not: the
    # evaluation noise stream advances at every record)
    np.testing.assert_allclose(every.thresholds[::20], rarely.thresholds, rtol=1e-5, atol=1e-7)
    constant = train_batched(
        data.numpy(),
        TINY,
        [1.0, 0.1],
        steps=40,
        lr=5e-3,
        device="cpu",
        record_every=20,
        progress=False,
    )
    assert not np.allclose(constant.elbo[-1], rarely.elbo[-1])  # the schedule is applied


def test_fast_figures_compute_and_plot(cache_dir, monkeypatch):
    from matplotlib.figure import Figure

    from lincollapse.experiments import load_all
    from lincollapse.experiments.deep import DeepVAEConfig

    monkeypatch.setattr(
        "lincollapse.deep_runs.RESULTS_DIR", cache_dir / "no-results"
    )  # no shipped runs

    figures = load_all()
    config = DeepVAEConfig.for_preset("fast", n=60, steps=20, convergence_steps=40)
    names = [
        "collapse-vs-eps-fixed",
        "collapse-vs-eps-learned",
        "collapse-vs-sigma2-summary",
        "convergence-study",
    ]
    for name in names:
        spec = figures[name]
        result = spec.compute(config, device="cpu")
        fig = spec.plot_function()(result)
        assert isinstance(fig, Figure)
        titles = fig.get_suptitle() + "".join(ax.get_title() for ax in fig.axes)
        assert "SMOKE TEST" in titles
        matplotlib.pyplot.close(fig)
    curves = figures["collapse-vs-eps-learned"].compute(config, device="cpu")
    assert curves.fraction.shape == (2, 201) and curves.learned
    assert np.all(np.diff(curves.fraction, axis=1) >= 0)  # monotone in ε
    assert curves.sources[0].startswith("cache")  # second time: read, not retrained
    study = figures["convergence-study"].compute(config, device="cpu")
    assert study.long_available and study.long_steps[-1] == 40
    assert study.gap.shape == (3,) and np.all(np.isfinite(study.gap))
    assert study.paper_fraction is None and "not cached" in study.paper_provenance
    assert np.all(np.isnan(study.paper_gap)) and not study.paper_agrees.any()


def _fake_long_runs(steps: np.ndarray, fraction_at_end: float) -> dict[str, np.ndarray]:
    """Arrays shaped like :func:`long_run_arrays` for σ² = (1, 0.1, 0.01), q = 200."""
    from lincollapse import deep_runs

    k, c, e = steps.size, 3, len(deep_runs.REFERENCE_EPSILONS)
    fraction = np.zeros((k, c, e))
    fraction[-1] = fraction_at_end
    return {
        "steps": steps.astype(np.int64),
        "elbo": np.zeros((k, c)),
        "fraction": fraction,
        "checkpoint_steps": steps[-1:].astype(np.int64),
        "checkpoint_thresholds": np.zeros((1, c, 200)),
        "kl_mean_final": np.zeros((c, 200)),
        "sigma2": np.array([1.0, 0.1, 0.01]),
    }


def test_paper_width_runs_full_first_then_shipped_prefix(cache_dir, monkeypatch):
    """The 20,000-step paper runs win; their shipped first 10,000 steps are used and labelled."""
    from lincollapse import deep_runs
    from lincollapse.experiments import deep, deep_convergence
    from lincollapse.results_cache import save_reference

    monkeypatch.setattr("lincollapse.deep_runs.RESULTS_DIR", cache_dir / "results")
    arrays, reason = deep_convergence.paper_long_runs()
    assert arrays is None and "20,000 steps" in reason and "10,000 steps" in reason

    stem = deep_runs.convergence_reference_path("paper")
    prefix = deep.DeepVAEConfig.for_preset(
        "paper", convergence_steps=deep_convergence.PAPER_WIDTH_CHECK_STEPS
    )
    save_reference(
        stem,
        deep_runs.convergence_key(prefix),
        _fake_long_runs(np.arange(0, 10_001, 250), 0.5),
        deep_runs.computing_fingerprint(),
        {"command": "test"},
    )
    arrays, reason = deep_convergence.paper_long_runs()
    assert arrays["steps"][-1] == 10_000
    assert reason.startswith("the first 10,000 of the paper preset's 20,000 steps")

    full = deep.DeepVAEConfig.for_preset("paper")
    save_reference(
        stem,
        deep_runs.convergence_key(full),
        _fake_long_runs(np.arange(0, 20_001, 250), 0.7),
        deep_runs.computing_fingerprint(),
        {"command": "test"},
    )
    arrays, reason = deep_convergence.paper_long_runs()
    assert arrays["steps"][-1] == 20_000 and "first" not in reason

    # A reference for another configuration is not used (staleness of the code is checked by
    # behaviour, in test_shipped_reference_is_current).
    other = deep.DeepVAEConfig.for_preset("paper", convergence_lr=1e-3)
    save_reference(
        stem,
        deep_runs.convergence_key(other),
        _fake_long_runs(np.arange(0, 20_001, 250), 0.7),
        "any",
        {"command": "test"},
    )
    arrays, reason = deep_convergence.paper_long_runs()
    assert arrays is None and "another configuration" in reason


def test_convergence_study_gaps_to_paper_width_runs(cache_dir, monkeypatch):
    """Preset minus paper-width end, and long minus paper-width at the same step."""
    from lincollapse import deep_runs
    from lincollapse.experiments import deep, deep_convergence
    from lincollapse.results_cache import save_reference

    monkeypatch.setattr("lincollapse.deep_runs.RESULTS_DIR", cache_dir / "results")
    config = deep.DeepVAEConfig.for_preset("fast", n=60, steps=20, convergence_steps=40)
    paper = deep.DeepVAEConfig.for_preset(
        "paper", convergence_steps=deep_convergence.PAPER_WIDTH_CHECK_STEPS
    )
    fake = _fake_long_runs(np.array([0, 20, 40]), 0.25)  # ends at the fast long run's last step
    save_reference(
        deep_runs.convergence_reference_path("paper"),
        deep_runs.convergence_key(paper),
        fake,
        deep_runs.computing_fingerprint(),
        {"command": "test"},
    )
    study = deep_convergence.convergence_study(config, device="cpu")
    assert study.paper_available and "first 10,000" in study.paper_provenance
    np.testing.assert_allclose(study.paper_gap, study.preset_fraction[-1] - 0.25)
    np.testing.assert_allclose(study.width_gap, study.long_fraction[-1] - 0.25)
    np.testing.assert_array_equal(study.paper_agrees, np.abs(study.paper_gap) <= 0.05)
    at_20 = study.long_fraction[list(study.long_steps).index(20)]
    np.testing.assert_array_equal(study.long_at_preset_end, at_20)  # the preset's last step
    # the report the appendix glues: tables, verdicts and per-σ² values, from the same numbers
    values = study.glue_values()
    assert values["gap_0p1"] == pytest.approx(study.gap[1])
    assert values["paper_at_preset_end_1"] == 0.0  # the fake runs are 0 before their end (40)
    assert values["paper_check_steps"] == "40" and values["preset_steps"] == "20"
    bad = ~study.paper_agrees
    assert ("does NOT agree" in study.width_verdict()) == bool(bad.any())
    assert ("does NOT agree" in study.verdict()) == bool((~study.agrees).any())
    assert study.table().count("\n") == 1 + len(study.sigma2)
    assert f"{study.gap[0]:+.3f}" in study.table()
    fig = __import__("lincollapse.plotting.deep", fromlist=["x"]).plot_convergence(study)
    assert "paper widths" in fig.axes[0].get_title()
    matplotlib.pyplot.close(fig)


def test_book_convergence_without_long_runs_says_so(cache_dir, monkeypatch):
    from lincollapse import deep_runs
    from lincollapse.experiments import deep

    monkeypatch.setattr("lincollapse.deep_runs.RESULTS_DIR", cache_dir / "no-results")
    config = deep.DeepVAEConfig.for_preset("fast", n=60, steps=20, convergence_steps=40)
    arrays, reason = deep_runs.long_runs(config, train_missing=False)
    assert arrays is None and "not found" in reason and "not cached" in reason


# ----------------------------------------------------------------------------- shipped reference


@pytest.mark.parametrize("preset", ["book", "paper"])
def test_shipped_reference_is_current(preset):
    """The committed long runs match their preset and the code now (else: regenerate them).

    Regenerate with ``python -m lincollapse.experiments.deep --convergence --preset book
    --write-reference --threads 1`` (≈ 40 min on one CPU core) and ``... --preset paper --steps
    10000 --write-reference`` (≈ 50 min on 2 cores; the paper-width runs, first half).
    """
    from lincollapse import deep_runs
    from lincollapse.experiments import deep, deep_convergence
    from lincollapse.references import load_shipped, verify_behaviour

    config = deep.DeepVAEConfig.for_preset(preset)
    stem = deep_runs.convergence_reference_path(preset)
    if preset == "paper":  # the full runs, or the shipped first 10,000 steps of them
        meta = json.loads(stem.with_suffix(".json").read_text())
        if meta["config"]["steps"] != config.convergence_steps:
            steps = deep_convergence.PAPER_WIDTH_CHECK_STEPS
            config = deep.DeepVAEConfig.for_preset(preset, convergence_steps=steps)
    arrays, meta = load_shipped(stem, deep_runs.convergence_key(config))
    verify_behaviour(stem, deep_runs.convergence_probe(config))  # staleness: the code's behaviour
    assert stem.with_suffix(".npz").stat().st_size + stem.with_suffix(".json").stat().st_size < 1e6
    k, c = arrays["steps"].size, len(config.convergence_sigma2)
    assert arrays["steps"][-1] == config.convergence_steps
    assert arrays["fraction"].shape == (k, c, len(deep_runs.REFERENCE_EPSILONS))
    assert arrays["checkpoint_thresholds"].shape[1:] == (c, config.latent)
    assert meta["info"]["command"].startswith("python -m lincollapse.experiments.deep")


def test_shipped_reference_goes_stale_when_the_numerics_change(monkeypatch):
    """A changed objective (here the KL scaled by 1.001) fails the behaviour check."""
    from lincollapse import deep_runs, deep_vae
    from lincollapse.experiments import deep
    from lincollapse.references import verify_behaviour
    from lincollapse.results_cache import ReferenceResultError

    config = deep.DeepVAEConfig.for_preset("book")
    stem = deep_runs.convergence_reference_path("book")
    original = deep_vae.kl_from_logvar
    monkeypatch.setattr(deep_vae, "kl_from_logvar", lambda m, v: 1.001 * original(m, v))
    with pytest.raises(ReferenceResultError, match="stale.*regenerate"):
        verify_behaviour(stem, deep_runs.convergence_probe(config))


@pytest.mark.parametrize("layout", ["loop", "batched"])
def test_interrupted_training_resumes_from_its_saved_state_to_the_same_numbers(
    data, layout, tmp_path, monkeypatch
):
    """Killed after its first chunk, a checkpointed training resumes there (it does not start
    again) and ends bit for bit where one uninterrupted training ends."""
    import lincollapse.training_state as training_state

    kwargs = dict(steps=60, lr=5e-3, device="cpu", progress=False, record_every=10, layout=layout)
    args = (data.numpy(), TINY, [1.0, 0.1], [False, True])
    whole = train_batched(*args, **kwargs)
    state = tmp_path / "partial" / "runs.pt"
    calls = []
    real = training_state.maximise

    def interrupted(*a, **k):
        calls.append(k["start_step"])
        if len(calls) == 2:  # the second chunk: as if Ctrl-C arrived during it
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(training_state, "maximise", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_batched(*args, checkpoint=state, checkpoint_every=25, **kwargs)
    assert state.is_file() and calls == [0, 30]  # chunks are whole record windows: 30 steps
    calls.clear()
    monkeypatch.setattr(
        training_state, "maximise", lambda *a, **k: calls.append(k["start_step"]) or real(*a, **k)
    )
    resumed = train_batched(*args, checkpoint=state, checkpoint_every=25, **kwargs)
    assert calls == [30] and not state.exists()  # resumed at step 30; the state is removed
    np.testing.assert_array_equal(resumed.steps, whole.steps)
    for name in ("elbo", "sigma2", "thresholds", "kl_mean"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name), err_msg=name)


def test_an_unreadable_partial_state_is_ignored_with_a_warning(data, tmp_path):
    state = tmp_path / "runs.pt"
    state.write_bytes(b"not a torch file")
    kwargs = dict(steps=20, lr=5e-3, device="cpu", progress=False, record_every=10)
    with pytest.warns(UserWarning, match="ignoring the partial training state"):
        runs = train_batched(data.numpy(), TINY, [1.0], checkpoint=state, **kwargs)
    plain = train_batched(data.numpy(), TINY, [1.0], layout=runs.layout, **kwargs)
    np.testing.assert_array_equal(runs.elbo, plain.elbo)
    assert not state.exists()
