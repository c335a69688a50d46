"""Linear β-VAE closed form (chapter *Beyond the paper*) against training and pPCA, in float64."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from lincollapse import linear_beta_vae, linear_vae, ppca  # noqa: E402
from lincollapse.experiments import beyond_the_paper as beyond  # noqa: E402
from lincollapse.experiments import load_all
from lincollapse.plotting import beyond as plotting  # noqa: E402

SPECTRUM = np.array([8.0, 5.0, 3.0, 2.0, 1.2, 0.8, 0.5, 0.3, 0.2, 0.1])


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    x, _ = linear_beta_vae.synthetic_data(SPECTRUM, 400, seed=0)
    return x


def test_synthetic_data_has_exactly_the_requested_spectrum(data):
    spectrum = ppca.data_spectrum(data)
    np.testing.assert_allclose(spectrum.eigenvalues, SPECTRUM, rtol=0, atol=1e-12)
    np.testing.assert_allclose(spectrum.mean, 0.0, atol=1e-12)


@pytest.mark.parametrize("beta", [0.4, 1.0, 2.5, 6.0])
def test_closed_form_matches_a_trained_linear_beta_vae(data, beta):
    """W, V, log D trained jointly by L-BFGS from a random start; nothing from the closed form.

    Tolerances: the closed-form maximum is an upper bound, so the trained objective may not
    exceed it beyond round-off, and must come within 1e-7 nats of it. The slowest direction of
    the training is a rotation of the latents (penalised only by the small ELBO-gap term), so the
    singular values converge more slowly than the objective: measured errors are <= 2e-5 at
    these settings; 5e-3 keeps a margin while still failing any wrong closed form (using σ²
    instead of βσ² moves a singular value by >= 0.2 for every β here but β = 1, and β = 1 is
    checked against pPCA separately).
    """
    q, sigma2 = 6, 1.0
    run = linear_beta_vae.train_linear_beta_vae(
        data, q, sigma2, beta, encoder="learned", steps=1500, seed=1
    )
    spectrum = ppca.data_spectrum(data)
    closed = linear_beta_vae.optimal_singular_values(spectrum, q, sigma2, beta)
    assert run.objective <= run.optimum + 1e-9
    assert run.gap < 1e-7
    np.testing.assert_allclose(run.singular_values, closed, atol=5e-3)
    collapsed = linear_beta_vae.collapsed_latents(spectrum, q, sigma2, beta)
    assert np.all(run.singular_values[collapsed] < 1e-3)
    assert np.all(run.singular_values[~collapsed] > 0.1)
    np.testing.assert_allclose(
        run.rates, linear_beta_vae.optimal_rates(spectrum, q, sigma2, beta), atol=1e-3
    )


def test_adam_reaches_the_same_optimum(data):
    run = linear_beta_vae.train_linear_beta_vae(
        data,
        4,
        1.0,
        2.5,
        encoder="learned",
        optimiser="adam",
        steps=3000,
        lr=1e-2,
        seed=2,
        tolerance=None,
    )
    closed = linear_beta_vae.optimal_singular_values(ppca.data_spectrum(data), 4, 1.0, 2.5)
    np.testing.assert_allclose(run.singular_values, closed, atol=1e-2)
    assert run.gap < 1e-4


@pytest.mark.parametrize("sigma2", [0.15, 0.6, 1.0, 2.5, 9.0])
def test_beta_one_reduces_to_fixed_sigma2_ppca(data, sigma2):
    """β = 1: the optimum is the fixed-σ² pPCA maximiser, and its value pPCA's log-likelihood."""
    spectrum = ppca.data_spectrum(data)
    q = 6
    W = ppca.fixed_sigma2_maximiser(spectrum, q, sigma2)
    np.testing.assert_allclose(
        linear_beta_vae.optimal_singular_values(spectrum, q, sigma2, 1.0),
        np.linalg.norm(W, axis=0),
        atol=1e-12,
    )
    assert linear_beta_vae.optimal_beta_elbo(spectrum, q, sigma2, 1.0) == pytest.approx(
        ppca.average_log_likelihood(spectrum, W, sigma2), abs=1e-10
    )
    assert linear_beta_vae.collapsed_latents(spectrum, q, sigma2).sum() == (
        ppca.collapsed_column_count(spectrum, q, sigma2)
    )


@pytest.mark.parametrize("beta", [0.3, 1.0, 3.0])
def test_optimum_value_is_the_elbo_of_the_closed_form_parameters(data, beta):
    """Evaluate ELBO_β with linear_vae's analytic terms at W* (and its optimal encoder at βσ²)."""
    spectrum = ppca.data_spectrum(data)
    q, sigma2 = 6, 0.7
    s = beta * sigma2
    W = ppca.fixed_sigma2_maximiser(spectrum, q, s)
    V, D = linear_vae.optimal_encoder(W, s)
    terms = linear_vae.elbo_terms(spectrum, W, V, D, sigma2)
    value = terms.reconstruction - beta * terms.kl
    assert value == pytest.approx(
        linear_beta_vae.optimal_beta_elbo(spectrum, q, sigma2, beta), abs=1e-10
    )
    # and the per-latent KL at the optimum is ½ log(λ_j / βσ²)₊ (beyond-beta-rate)
    kl = 0.5 * (D - np.log(D) + np.einsum("id,de,ie->i", V, spectrum.covariance, V) - 1.0)
    np.testing.assert_allclose(
        kl, linear_beta_vae.optimal_rates(spectrum, q, sigma2, beta), atol=1e-12
    )


def test_beta_and_sigma2_enter_only_through_their_product():
    a = linear_beta_vae.optimal_singular_values(SPECTRUM, 6, 0.5, 4.0)
    b = linear_beta_vae.optimal_singular_values(SPECTRUM, 6, 2.0, 1.0)
    np.testing.assert_array_equal(a, b)
    expected = np.sqrt(np.clip(SPECTRUM[:6] - 2.0, 0, None))
    np.testing.assert_allclose(a, expected, atol=1e-15)
    assert linear_beta_vae.collapsed_latents(SPECTRUM, 6, 0.5, 4.0).tolist() == [
        False,
        False,
        False,
        True,
        True,
        True,
    ]


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="β must be a finite positive"):
        linear_beta_vae.optimal_singular_values(SPECTRUM, 3, 1.0, 0.0)
    with pytest.raises(ValueError, match="β must be"):
        linear_beta_vae.optimal_rates(SPECTRUM, 3, 1.0, math.nan)
    with pytest.raises(ValueError, match="σ²"):
        linear_beta_vae.optimal_beta_elbo(SPECTRUM, 3, -1.0, 1.0)
    with pytest.raises(ValueError, match="q must be < d"):
        linear_beta_vae.collapsed_latents(SPECTRUM, 10, 1.0, 1.0)
    with pytest.raises(ValueError, match="descending"):
        linear_beta_vae.optimal_singular_values(SPECTRUM[::-1], 3, 1.0)
    with pytest.raises(ValueError, match="n must be an integer > d"):
        linear_beta_vae.synthetic_data(SPECTRUM, 5)
    x, _ = linear_beta_vae.synthetic_data(SPECTRUM, 50)
    with pytest.raises(ValueError, match="q must be >= 1"):
        linear_beta_vae.train_linear_beta_vae(x, 0, 1.0, 1.0)


def test_exact_inference_collapse_figure():
    result = beyond.exact_inference_collapse(beyond.ExactCollapseConfig.for_preset("fast"))
    k = result.collapsed
    assert result.column_norms[k] == 0.0
    np.testing.assert_array_equal(result.loglik_collapsed, 0.0)
    np.testing.assert_allclose(result.posterior_mean[:, k], 0.0, atol=1e-15)
    assert result.posterior_sd[k] == pytest.approx(1.0, abs=1e-15)
    # active latents: I(x; z_j) = ½ log(λ_j / σ²), independent of how it was computed
    active = np.flatnonzero(result.column_norms > 0)
    np.testing.assert_allclose(
        result.mutual_information[active],
        0.5 * np.log(result.eigenvalues[active] / result.sigma2),
        atol=1e-12,
    )
    plt.close(plotting.plot_exact_inference_collapse(result))


def test_linear_beta_figure_fast_preset():
    result = beyond.linear_beta_optimum(beyond.SyntheticLinearBetaConfig.for_preset("fast"))
    np.testing.assert_array_equal(result.collapsed_trained, result.collapsed_predicted)
    assert result.max_singular_value_error < 5e-3
    assert np.all(result.objective_gap < 1e-5)
    assert "βσ²" in result.table()
    plt.close(plotting.plot_linear_beta_optimum(result))


def test_figures_are_registered_for_the_chapter():
    figures = load_all()
    for name in ("linear-beta-optimum", "exact-inference-collapse"):
        assert figures[name].chapter == "beyond_the_paper"
        assert callable(figures[name].plot_function())
