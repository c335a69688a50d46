"""Tests of the training experiments: stochastic vs analytic ELBO; linear decoder, encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from lincollapse import data, linear_decoder_vae, linear_decoder_vae_training, ppca
from lincollapse.experiments import linear_decoder_encoders as lde
from lincollapse.experiments import load_all
from lincollapse.experiments import stochastic_elbo as se
from lincollapse.plotting import training_linear as plots

TINY = dict(n=100, q=3, steps=40, record_every=10, seeds=(0, 1, 2))


@pytest.fixture(scope="module")
def stochastic() -> se.StochasticELBOResult:
    config = se.StochasticELBOConfig.for_preset(
        "fast", gradient_checkpoints=(0, 20, 40), gradient_samples=40, **TINY
    )
    return se.stochastic_vs_analytic(config)


@pytest.fixture(scope="module")
def comparison() -> lde.EncoderComparisonResult:
    config = lde.EncoderComparisonConfig.for_preset(
        "fast", deep_linear_hidden=(8,), mlp_hidden=(8, 8), **TINY
    )
    return lde.encoder_comparison(config)


def _images(n: int) -> np.ndarray:
    from lincollapse.data import load_mnist

    return load_mnist(n, seed=0).images


# --- training improves the ELBO ---------------------------------------------------------------


@pytest.mark.parametrize("kind", linear_decoder_vae.ENCODER_KINDS)
@pytest.mark.parametrize("estimator", linear_decoder_vae.ESTIMATORS)
def test_fast_training_improves_the_elbo(kind, estimator):
    x = _images(100)
    run = linear_decoder_vae_training.train_vae(
        x, 3, kind=kind, estimator=estimator, steps=30, lr=5e-3, record_every=10, hidden=(8,)
    )
    assert run.elbo.shape == run.steps.shape == (4,)
    assert run.elbo[-1] > run.elbo[0] + 1.0
    assert np.all(run.gap > -1e-6)  # never above the pPCA optimum
    assert run.optimum == pytest.approx(ppca.fit(x, 3).log_likelihood, abs=1e-8)
    # The recorded ELBO is the analytic one of the returned (float64) model.
    assert run.model.elbo(torch.as_tensor(x)).item() == pytest.approx(run.elbo[-1], abs=1e-9)


def test_float32_training_records_float64_elbo():
    x = _images(100)
    run32 = linear_decoder_vae_training.train_vae(
        x, 3, steps=20, record_every=10, dtype=torch.float32
    )
    run64 = linear_decoder_vae_training.train_vae(x, 3, steps=20, record_every=10)
    assert run32.model.decoder.W.dtype == torch.float64
    assert run32.elbo[0] == run64.elbo[0]  # same initialisation, both evaluated in float64
    np.testing.assert_allclose(run32.elbo, run64.elbo, rtol=1e-3)


def test_checkpoints_are_called_at_recorded_steps():
    seen = []
    linear_decoder_vae_training.train_vae(
        _images(50),
        2,
        steps=20,
        record_every=5,
        checkpoints=(0, 10, 20),
        on_checkpoint=lambda step, model: seen.append((step, type(model).__name__)),
    )
    assert seen == [(0, "LinearDecoderVAE"), (10, "LinearDecoderVAE"), (20, "LinearDecoderVAE")]


# --- stochastic vs analytic -------------------------------------------------------------------


def test_stochastic_result_shapes_and_improvement(stochastic):
    for estimator in ("analytic", "sample"):
        curves = stochastic.elbo[estimator]
        assert curves.shape == (3, stochastic.steps.size)
        assert np.all(curves[:, -1] > curves[:, 0])
        assert len(stochastic.steps_to(estimator, 1.0)) == 3
    # Same initialisation for both estimators: identical first records.
    np.testing.assert_array_equal(
        stochastic.elbo["analytic"][:, 0], stochastic.elbo["sample"][:, 0]
    )


def test_gradient_variance_is_consistent_with_an_unbiased_estimator(stochastic):
    g = stochastic.gradient
    assert list(g.steps) == [0, 20, 40]
    assert np.all(g.noise_norm > 0) and np.all(g.analytic_norm > 0)
    # ‖mean of K draws − analytic‖ should be about √(tr Cov / K); allow 3× for chance.
    assert np.all(g.bias_norm < 3 * g.bias_expected)
    assert "noise/|grad|" in g.table()


def test_bad_gradient_checkpoint_is_rejected():
    config = se.StochasticELBOConfig.for_preset("fast", gradient_checkpoints=(7,), **TINY)
    with pytest.raises(ValueError, match="multiples of record_every"):
        se.stochastic_vs_analytic(config)
    with pytest.raises(ValueError, match="samples must be >= 2"):
        se.gradient_variance(torch.zeros(3, 4), None, {}, 0.0, 1)


def test_covariance_eigenvalues_match_numpy():
    x = np.random.default_rng(1).normal(size=(7, 10))
    expected = np.linalg.eigvalsh(np.cov(x.T, bias=True))[::-1]
    np.testing.assert_allclose(
        data.covariance_eigenvalues(x), np.clip(expected, 0, None), atol=1e-12
    )
    y = np.random.default_rng(2).normal(size=(30, 6))
    np.testing.assert_allclose(
        data.covariance_eigenvalues(y),
        np.linalg.eigvalsh(np.cov(y.T, bias=True))[::-1],
        atol=1e-12,
    )


def test_first_step_within():
    steps = np.array([0, 10, 20, 30])
    assert (
        linear_decoder_vae_training.first_step_within(steps, np.array([5.0, 0.5, 0.05, 0.2]), 0.1)
        == 20
    )
    assert (
        linear_decoder_vae_training.first_step_within(steps, np.array([5.0, 0.5, 0.5, 0.2]), 0.1)
        is None
    )


def test_tables_say_not_reached(stochastic):
    table = stochastic.table()
    assert "single-sample estimate" in table and "analytic reconstruction" in table
    if any(s is None for s in stochastic.steps_to("sample", 0.1)):
        assert "not reached" in table


# --- encoders ---------------------------------------------------------------------------------


def test_encoder_comparison_shapes(comparison):
    assert comparison.kinds == linear_decoder_vae.ENCODER_KINDS
    for kind in comparison.kinds:
        assert comparison.elbo[kind].shape == (3, comparison.steps.size)
        assert np.all(comparison.elbo[kind][:, -1] > comparison.elbo[kind][:, 0])
        gram = comparison.grams[kind]
        assert gram.shape == (3, 3)
        np.testing.assert_allclose(gram, gram.T)
        assert np.linalg.eigvalsh(gram).min() > -1e-12
        assert 0 <= comparison.off_diagonal(kind)
        assert comparison.sigma2[kind].shape == (3,)
    assert comparison.eigenvalues.shape == (3,)
    assert comparison.sigma2_mle > 0


# --- figures and registry ---------------------------------------------------------------------


def test_plots_return_labelled_figures(stochastic, comparison):
    import matplotlib.pyplot as plt

    for fig in (
        plots.plot_stochastic_vs_analytic(stochastic),
        plots.plot_encoder_comparison(comparison),
    ):
        assert isinstance(fig, Figure)
        assert "SMOKE-TEST" in fig._suptitle.get_text()
        plt.close(fig)


def test_figures_are_registered_with_costs():
    figures = load_all()
    for name, chapter in (
        ("stochastic-vs-analytic-elbo", "stochastic_elbo"),
        ("linear-decoder-encoders", "linear_decoder_encoders"),
    ):
        spec = figures[name]
        assert spec.chapter == chapter
        assert spec.plot_function() is not None
        assert all(spec.cost(p) for p in ("fast", "book", "paper"))


def test_presets_differ_as_documented():
    book, fast, paper = (
        lde.EncoderComparisonConfig.for_preset(p) for p in ("book", "fast", "paper")
    )
    assert (book.n, book.q, len(book.seeds)) == (1000, 20, 3)
    assert fast.steps < book.steps < paper.steps and paper.q == 200
    assert min(book.mlp_hidden) >= 2 * book.q  # can represent the optimal linear encoder
    assert min(paper.mlp_hidden) >= 2 * paper.q


def test_encoder_ranking_is_computed_from_the_final_gaps():
    """The chapter's ordering of encoders comes from the runs (it was typed before): a gap just
    under the 0.1-nat threshold on average, but over it for one seed, is not 'within'."""
    import dataclasses

    optimum = 10.0
    final = {"linear": [0.01, 0.02], "deep-linear": [0.05, 0.12], "mlp": [0.3, 0.25]}
    elbo = {k: optimum - np.column_stack([np.ones(2), v, v]) for k, v in final.items()}  # (R, k)
    result = lde.EncoderComparisonResult(
        steps=np.array([0, 10, 20]),
        elbo=elbo,
        optimum=optimum,
        grams={},
        decoders={},
        sigma2={},
        sigma2_mle=0.1,
        eigenvalues=np.ones(2),
        seconds={},
        config=lde.EncoderComparisonConfig.for_preset("fast"),
    )
    sentence = result.ranking(0.1)
    assert sentence.index("linear (0.015)") < sentence.index("deep linear (0.085)")
    assert sentence.index("deep linear (0.085)") < sentence.index("MLP (0.275)")
    assert "every seed: linear; not for every seed: deep linear, MLP." in sentence
    swapped = dataclasses.replace(result, elbo={**elbo, "mlp": elbo["linear"] - 1.0})
    assert swapped.ranking(0.1).index("deep linear") < swapped.ranking(0.1).index("MLP (1.015)")


# --- each run is kept as soon as it ends (issue 16: an interrupted chapter resumes) ------------


def _arrays_equal(a, b) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_runs_read_from_the_cache_equal_the_trained_ones(tmp_path, monkeypatch):
    """Both experiments again, from the runs the first computation saved: equal bit for bit,
    including the gradient statistics computed from the parameters saved at checkpoints."""
    monkeypatch.setenv("LINCOLLAPSE_CACHE_DIR", str(tmp_path))
    small = dict(TINY, seeds=(0, 1), steps=20)
    config = se.StochasticELBOConfig.for_preset(
        "fast", gradient_checkpoints=(0, 10, 20), gradient_samples=20, **small
    )
    first, again = se.stochastic_vs_analytic(config), se.stochastic_vs_analytic(config)
    assert len(list(tmp_path.glob("*.npz"))) == 4  # 2 seeds x 2 estimators
    for name in ("analytic", "sample"):
        assert np.array_equal(first.elbo[name], again.elbo[name])
    assert first.seconds == again.seconds
    assert _arrays_equal(vars(first.gradient), vars(again.gradient))

    enc = lde.EncoderComparisonConfig.for_preset(
        "fast", deep_linear_hidden=(8,), mlp_hidden=(8, 8), **small
    )
    first, again = lde.encoder_comparison(enc), lde.encoder_comparison(enc)
    for kind in enc.kinds:
        assert np.array_equal(first.elbo[kind], again.elbo[kind])
        assert np.array_equal(first.grams[kind], again.grams[kind])
        assert np.array_equal(first.decoders[kind], again.decoders[kind])
        assert np.array_equal(first.sigma2[kind], again.sigma2[kind])


def test_an_interrupted_comparison_trains_only_the_runs_it_had_not_finished(tmp_path, monkeypatch):
    monkeypatch.setenv("LINCOLLAPSE_CACHE_DIR", str(tmp_path))
    config = lde.EncoderComparisonConfig.for_preset(
        "fast", deep_linear_hidden=(8,), mlp_hidden=(8, 8), **dict(TINY, steps=20)
    )
    runs = len(config.kinds) * len(config.seeds)
    real = linear_decoder_vae_training.train_vae
    from lincollapse.experiments import gap_curves

    calls = []

    def interrupted_after_four(*args, **kwargs):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(kwargs["seed"])
        return real(*args, **kwargs)

    monkeypatch.setattr(gap_curves, "train_vae", interrupted_after_four)
    with pytest.raises(KeyboardInterrupt):
        lde.encoder_comparison(config)
    assert len(list(tmp_path.glob("*.npz"))) == 4

    calls.clear()
    monkeypatch.setattr(gap_curves, "train_vae", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = lde.encoder_comparison(config)
    assert len(calls) == runs - 4
    monkeypatch.setattr(gap_curves, "train_vae", real)
    monkeypatch.setenv("LINCOLLAPSE_CACHE_DIR", str(tmp_path / "fresh"))
    uninterrupted = lde.encoder_comparison(config)
    for kind in config.kinds:
        assert np.array_equal(resumed.elbo[kind], uninterrupted.elbo[kind])
