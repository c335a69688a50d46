"""The linear chapters' figure functions (shrunken fast presets) and their plots."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

matplotlib.use("Agg")

from lincollapse import linear_vae_training, ppca  # noqa: E402
from lincollapse.experiments import linear_baselines, load_all, mnist_with_spectrum  # noqa: E402
from lincollapse.experiments import linear_vae as lv  # noqa: E402
from lincollapse.experiments import posterior_collapse as pc  # noqa: E402
from lincollapse.experiments import ppca as pp  # noqa: E402
from lincollapse.plotting import linear as plotting  # noqa: E402

LINEAR_FIGURES = {
    "ppca-landscape": "ppca",
    "ppca-collapsed-vs-sigma2": "ppca",
    "likelihood-vs-latent-size": "linear_vae",
    "gram-matrices": "linear_vae",
    "elbo-gap": "linear_vae",
    "collapse-metric": "posterior_collapse",
}


def _close(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_figures_are_registered_with_presets_and_plots():
    figures = load_all()
    for name, chapter in LINEAR_FIGURES.items():
        spec = figures[name]
        assert spec.chapter == chapter
        assert callable(spec.plot_function())
        for preset in ("fast", "book", "paper"):
            assert spec.config.for_preset(preset).preset == preset


def test_landscape_saddle_and_maximum():
    result = pp.ppca_landscape(pp.PPCALandscapeConfig.for_preset("fast"))
    saddle, maximum = result.exact
    middle = result.epsilon.size // 2
    assert result.kind == ("saddle", "local maximum")
    assert saddle[-1, middle] > 0 > saddle[middle, -1]  # up along u_2, down along u_3
    assert np.all(maximum <= 1e-12)
    # second-order agreement near the stationary point
    near = np.abs(result.epsilon) <= 0.1
    for exact, predicted in zip(result.exact, result.predicted, strict=True):
        scale = np.abs(predicted[np.ix_(near, near)]).max()
        assert np.abs(exact - predicted)[np.ix_(near, near)].max() < 0.05 * scale
    _close(plotting.plot_ppca_landscape(result))


def test_collapsed_columns_check_matches_the_count():
    config = pp.CollapsedColumnsConfig.for_preset(
        "fast", q=20, check_sigma2=(1.0, 0.3), check_steps=80, grid_size=9
    )
    result = pp.ppca_collapsed_columns(config)
    np.testing.assert_array_equal(result.check_trained, result.check_predicted)
    assert np.all(np.diff(result.collapsed) >= 0)
    assert result.collapsed[-1] == 20
    _close(plotting.plot_collapsed_columns(result))


def test_likelihood_curve():
    config = lv.LikelihoodVsLatentSizeConfig.for_preset(
        "fast", latent_sizes=(0, 10, 20), reference_q=10, steps=400
    )
    curve = lv.likelihood_vs_latent_size(config)
    assert curve.method == "profiled_lbfgs" and curve.baselines == {}
    assert np.all(np.abs(curve.gap) < 1e-2)
    assert np.all(curve.fixed_sigma2_loglik <= curve.ppca_optimum + 1e-9)
    assert curve.fixed_sigma2_loglik[1] == pytest.approx(curve.ppca_optimum[1])  # q = reference
    assert "total CPU time" in curve.table()
    _close(plotting.plot_likelihood_vs_latent_size(curve))


def test_gram_matrices_vae_is_diagonal_rotated_ppca_is_not():
    config = lv.GramMatricesConfig.for_preset("fast", q=10, block=6, steps=400)
    result = lv.gram_matrices(config)
    assert result.vae.shape == (6, 6)
    assert list(result.runs) == ["profiled_lbfgs"]
    # 400 steps on 300 images: far from rotated pPCA, not yet diagonal to 1e-2 (near-ties in
    # the spectrum; the synthetic test of ascend_elbo reaches 1e-5)
    assert result.off_diagonal_ratio["vae"] < 0.05
    assert result.off_diagonal_ratio["ppca_rotated"] > 0.1
    assert result.off_diagonal_ratio["ppca_mle"] < 1e-12
    trace = result.runs["profiled_lbfgs"].trace
    assert trace["gram_ratio"][-1] < 0.1 * trace["gram_ratio"][1]  # falls during training
    assert np.all(result.runs["profiled_lbfgs"].cos2 <= 1 + 1e-12)
    assert "gap" in result.summary()
    assert result.sigma2_steps("profiled_lbfgs") is not None
    _close(plotting.plot_gram_matrices(result))


def test_the_figures_training_never_decomposes(monkeypatch, no_decompositions, tmp_path):
    """Both figures' trainings run with every eigendecomposition and SVD made to raise.

    The evaluation around them (ℓ*(q), the pPCA maximisers, the alignment of columns) may
    decompose S; only the calls of :func:`linear_vae_training.ascend_elbo` are guarded.
    """
    calls = []
    original = linear_vae_training.ascend_elbo

    def guarded(data, q, **options):
        with no_decompositions():
            trained = original(data, q, **options)
        calls.append(q)
        return trained

    monkeypatch.setattr(linear_vae_training, "ascend_elbo", guarded)
    monkeypatch.setenv("LINCOLLAPSE_CACHE_DIR", str(tmp_path))  # every run trained here
    lv._ascend.cache_clear()
    try:
        curve = lv.likelihood_vs_latent_size(lv.LikelihoodVsLatentSizeConfig.for_preset("fast"))
        grams = lv.gram_matrices(lv.GramMatricesConfig.for_preset("fast"))
    finally:
        lv._ascend.cache_clear()
    assert sorted(calls) == sorted(curve.latent_sizes.tolist())  # the Gram run is shared
    assert grams.q in calls
    assert np.all(np.abs(curve.gap) < 0.05)


@pytest.fixture
def fast_baselines(tmp_path, monkeypatch):
    """The fast preset's shipped runs, written into a temporary results folder."""
    monkeypatch.setattr(linear_baselines, "RESULTS_DIR", tmp_path)
    config = linear_baselines.LinearBaselinesConfig.for_preset("fast")
    lines = []
    arrays = linear_baselines.train_baselines(config, write_reference=True, out=lines.append)
    return config, arrays, lines


def test_baselines_are_written_incrementally_and_validated(fast_baselines):
    config, arrays, lines = fast_baselines
    assert len(lines) == len(config.latent_sizes) * len(linear_baselines.METHODS)
    assert lines[0].strip().startswith("adam q= 20")  # the Gram figure's q first
    runs, provenance = linear_baselines.load_baselines(config)
    assert runs is not None, provenance
    assert "linear_vae_baselines_fast.npz" in provenance
    _, spectrum = mnist_with_spectrum(config.n, config.seed)
    best = np.array([ppca.max_log_likelihood(spectrum, q) for q in config.latent_sizes])
    for run in runs.values():
        np.testing.assert_array_equal(run.latent_sizes, config.latent_sizes)
        assert np.all(best - run.elbo >= -1e-9)  # below ℓ*(q): a lower bound
        assert run.gram.shape == (config.block, config.block)
        assert run.cos2.shape == (config.gram_q,)
        assert set(run.traces) == set(config.latent_sizes)
        trace = run.traces[config.gram_q]
        budget = run.steps[list(config.latent_sizes).index(config.gram_q)]
        assert trace["elbo"][list(trace["steps"]).index(budget)] == pytest.approx(
            run.elbo[list(config.latent_sizes).index(config.gram_q)], abs=1e-8
        )
        assert trace["elbo"][-1] > trace["elbo"][0] + 10.0  # above the random start
    # an incomplete reference (the job was stopped) is not used
    stem = linear_baselines.reference_path("fast")
    _, data_id = linear_baselines.mnist_data(config.n, config.seed)
    from lincollapse.references import save_shipped

    key = linear_baselines.reference_key(config, data_id)
    save_shipped(stem, key, arrays, lambda: {"x": np.zeros(1)}, {"complete": False, "done": []})
    runs, reason = linear_baselines.load_baselines(config)
    assert runs is None and "incomplete" in reason
    # nor one for another configuration
    runs, reason = linear_baselines.load_baselines(dataclasses.replace(config, adam_steps=7))
    assert runs is None and "another configuration" in reason


def test_figures_show_the_shipped_baselines(fast_baselines):
    config, _, _ = fast_baselines
    curve = lv.likelihood_vs_latent_size(
        lv.LikelihoodVsLatentSizeConfig.for_preset(
            "fast", latent_sizes=(0, 20), reference_q=20, baselines="fast"
        )
    )
    assert set(curve.baselines) == set(linear_baselines.METHODS)
    assert curve.baselines["adam"].elbo.shape == (2,)
    assert "adam" in curve.table()
    _close(plotting.plot_likelihood_vs_latent_size(curve))
    grams = lv.gram_matrices(
        lv.GramMatricesConfig.for_preset("fast", block=config.block, baselines="fast")
    )
    assert list(grams.runs) == ["profiled_lbfgs", *linear_baselines.METHODS]
    _close(plotting.plot_gram_matrices(grams))


def test_shipped_baselines_are_current():
    """The committed joint-training runs match the book preset and the training code now.

    Regenerate with ``python -m lincollapse.experiments.linear_baselines --write-reference
    --threads 1`` (see ``results/README.md``).
    """
    config = linear_baselines.LinearBaselinesConfig.for_preset("book")
    stem = linear_baselines.reference_path("book")
    if not stem.with_suffix(".npz").is_file():
        pytest.skip("the joint-training comparison runs are not shipped yet")
    runs, provenance = linear_baselines.load_baselines(config)
    assert runs is not None, provenance
    assert stem.with_suffix(".npz").stat().st_size + stem.with_suffix(".json").stat().st_size < 2e6
    assert provenance.startswith(
        "precomputed by `python -m lincollapse.experiments.linear_baselines"
    )
    for run in runs.values():
        assert np.all(np.isfinite(run.elbo))
        assert run.gram.shape == (config.block, config.block)
    assert np.all(runs["adam"].steps == config.adam_steps)
    assert runs["adam"].traces[config.gram_q]["steps"][-1] == config.adam_gram_steps
    # behaviour: the code now replays the runs' first steps as the code that made them did
    from lincollapse.references import verify_behaviour

    verify_behaviour(
        stem,
        lambda: linear_baselines.behaviour_probe(config),
        command="python -m lincollapse.experiments.linear_baselines --write-reference --threads 1",
    )


def test_baselines_probe_catches_a_change_of_numerics(fast_baselines, monkeypatch):
    """A probe recorded by the code now passes; a change of the start (σ² initialised 0.1 %
    higher) fails it — so a shipped reference goes stale when the training's numbers change."""
    from lincollapse.references import verify_behaviour
    from lincollapse.results_cache import ReferenceResultError

    config, _, _ = fast_baselines
    stem = linear_baselines.reference_path("fast")
    probe = lambda: linear_baselines.behaviour_probe(config)  # noqa: E731
    verify_behaviour(stem, probe)
    original = linear_vae_training.ascend_elbo

    def perturbed(*args, **kwargs):
        kwargs["sigma2_init"] = kwargs.get("sigma2_init", 1.0) * 1.001
        return original(*args, **kwargs)

    monkeypatch.setattr(linear_vae_training, "ascend_elbo", perturbed)
    with pytest.raises(ReferenceResultError, match="stale"):
        verify_behaviour(stem, probe)


def test_elbo_gap_along_rotation():
    result = lv.elbo_gap_along_rotation(lv.ElboGapConfig.for_preset("fast", n_angles=9, q=4))
    np.testing.assert_allclose(result.gap, result.gap_formula, atol=1e-9)
    np.testing.assert_allclose(result.log_likelihood, result.optimum, rtol=1e-12)
    at_quarter_turns = np.isclose(np.mod(result.theta, np.pi / 2), 0) | np.isclose(
        np.mod(result.theta, np.pi / 2), np.pi / 2
    )
    assert np.all(np.abs(result.gap[at_quarter_turns]) < 1e-9)
    assert np.all(result.gap[~at_quarter_turns] > 1e-6)
    _close(plotting.plot_elbo_gap(result))


def test_collapse_metric_matches_the_eigenvalue_count():
    config = pc.CollapseMetricConfig.for_preset(
        "fast", q=20, sigma2_values=(2.0, 1.0), steps=100, n_epsilons=21
    )
    result = pc.collapse_metric(config)
    assert result.fractions.shape == (2, 21)
    assert np.all(result.predicted > 0)
    index = np.searchsorted(result.epsilons, 0.1)
    np.testing.assert_allclose(result.fractions[:, index], result.predicted, atol=1.0 / 20 + 1e-9)
    _close(plotting.plot_collapse_metric(result))


def test_collapse_metric_reports_the_epsilon_it_reads():
    """The fast preset's 41-point grid over [0, 2] has no 0.01: a request for 0.01 reads 0.05,
    and that is the ε the chapter must print (it used to print 0.01)."""
    import dataclasses

    config = pc.CollapseMetricConfig.for_preset("fast")
    grid = np.linspace(0.0, config.epsilon_max, config.n_epsilons)
    fractions = np.arange(2 * grid.size, dtype=float).reshape(2, grid.size)
    result = pc.CollapseMetricResult(
        epsilons=grid,
        sigma2_values=np.array([0.1, 0.03]),
        fractions=fractions,
        predicted=np.zeros(2),
        mean_kl=np.zeros((2, config.q)),
        elbo_gap=np.zeros(2),
        q=config.q,
        delta=config.delta,
    )
    used, values = result.fraction_at(0.01)
    assert used == pytest.approx(0.05) and used == grid[grid >= 0.01][0]
    np.testing.assert_array_equal(values, fractions[:, 1])
    book = pc.CollapseMetricConfig.for_preset("book")
    book_grid = np.linspace(0.0, book.epsilon_max, book.n_epsilons)
    on_book_grid = dataclasses.replace(
        result, epsilons=book_grid, fractions=np.zeros((2, book_grid.size))
    )
    assert on_book_grid.fraction_at(0.01)[0] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="above the largest"):
        result.fraction_at(2.5)


def test_bench_linear_prints_both_trainers():
    from lincollapse import bench

    lines: list[str] = []
    total = bench.bench_linear("fast", out=lines.append)
    rows = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    trainers = [" ".join(row[1:-7]) for row in rows]
    config = lv.LikelihoodVsLatentSizeConfig.for_preset("fast")
    assert trainers == ["ascend_elbo", "fast path"] * len(config.latent_sizes)
    gaps = np.array([float(row[-2]) for row in rows])
    ratios = np.array([float(row[-1]) for row in rows])
    assert np.all(gaps < 0.1) and np.all(gaps > -1e-9)
    assert np.all((ratios >= 0) & (ratios < 0.2))
    assert any(line.startswith("ascend_elbo: total") for line in lines)
    assert "thread(s)" in lines[1]
    assert total > 0


def test_latent_size_runs_are_kept_as_they_end_and_read_back_equal(monkeypatch, tmp_path):
    """An interrupted likelihood figure trains only the latent sizes it had not finished, and a
    run read from the results cache is the trained one (model, trace and timings)."""
    monkeypatch.setenv("LINCOLLAPSE_CACHE_DIR", str(tmp_path))
    config = lv.LikelihoodVsLatentSizeConfig.for_preset("fast")
    sizes = list(config.latent_sizes)
    original, calls = linear_vae_training.ascend_elbo, []

    def interrupted_after_two(data, q, **options):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(q)
        return original(data, q, **options)

    monkeypatch.setattr(linear_vae_training, "ascend_elbo", interrupted_after_two)
    lv._ascend.cache_clear()
    try:
        with pytest.raises(KeyboardInterrupt):
            lv.likelihood_vs_latent_size(config)
        assert len(list(tmp_path.glob("*.npz"))) == 2
        calls.clear()
        monkeypatch.setattr(
            linear_vae_training,
            "ascend_elbo",
            lambda d, q, **o: calls.append(q) or original(d, q, **o),
        )
        lv._ascend.cache_clear()
        resumed = lv.likelihood_vs_latent_size(config)
        assert sorted(calls) == sorted(sizes[2:])
        lv._ascend.cache_clear()
        read = lv._ascend(config.n, config.seed, sizes[0], config.ascent_options())
        trained = original(
            mnist_with_spectrum(config.n, config.seed)[0], sizes[0], **dict(config.ascent_options())
        )
    finally:
        lv._ascend.cache_clear()
    assert np.array_equal(resumed.elbo[:2], np.asarray([read.elbo, resumed.elbo[1]]))
    for name, value in trained.model.state_dict().items():
        assert np.array_equal(read.model.state_dict()[name].numpy(), value.numpy()), name
    for field in dataclasses.fields(trained.trace):
        if "seconds" not in field.name:
            assert np.array_equal(
                getattr(read.trace, field.name), getattr(trained.trace, field.name)
            )
    assert (read.elbo, read.steps, read.evaluations) == (
        trained.elbo,
        trained.steps,
        trained.evaluations,
    )
    assert np.array_equal(read.gram(), trained.gram())
