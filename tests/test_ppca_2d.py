"""The two-dimensional pPCA example of chapter *Probabilistic PCA*, against independent formulas.

The oracles are written out here rather than imported: the eigen-decomposition of a symmetric
2 × 2 matrix by hand, torch's LowRankMultivariateNormal for the marginal N(μ, wwᵀ + σ²I), and
Gaussian conditioning of the joint (z, x) for the posterior.
"""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from lincollapse import explorer, ppca  # noqa: E402
from lincollapse.experiments import load_all  # noqa: E402
from lincollapse.experiments import ppca as experiments  # noqa: E402
from lincollapse.plotting import linear as plotting  # noqa: E402


@pytest.fixture(scope="module")
def example() -> experiments.PPCA2DResult:
    return experiments.ppca_2d_example(experiments.PPCA2DConfig.for_preset("fast"))


def _by_hand(S: np.ndarray) -> tuple[float, float, np.ndarray]:
    """λ_1 ≥ λ_2 and u_1 of [[a, b], [b, c]] from the characteristic polynomial."""
    a, b, c = S[0, 0], S[0, 1], S[1, 1]
    centre, radius = (a + c) / 2, np.hypot((a - c) / 2, b)
    lam1, lam2 = centre + radius, centre - radius
    u1 = np.array([b, lam1 - a])  # (S − λ_1 I) u_1 = 0, first row
    return lam1, lam2, u1 / np.linalg.norm(u1)


def _low_rank_normal(state: experiments.PPCA2DState, mean: np.ndarray):
    return torch.distributions.LowRankMultivariateNormal(
        torch.as_tensor(mean),
        torch.as_tensor(state.W),
        torch.full((2,), state.sigma2, dtype=torch.float64),
    )


def test_data_have_the_configured_moments_exactly(example):
    config = experiments.PPCA2DConfig.for_preset("fast")
    x = example.x
    S = (x - x.mean(0)).T @ (x - x.mean(0)) / x.shape[0]
    angle = np.radians(config.angle_degrees)
    u = np.array([np.cos(angle), np.sin(angle)])
    expected = config.eigenvalues[1] * np.eye(2) + (
        config.eigenvalues[0] - config.eigenvalues[1]
    ) * np.outer(u, u)
    np.testing.assert_allclose(S, expected, atol=1e-12)
    np.testing.assert_allclose(x.mean(0), config.mean, atol=1e-12)


def test_eigen_decomposition_matches_the_hand_formula(example):
    lam1, lam2, u1 = _by_hand(example.spectrum.covariance)
    np.testing.assert_allclose(example.spectrum.eigenvalues, [lam1, lam2], rtol=1e-12)
    np.testing.assert_allclose(example.spectrum.eigenvectors[:, 0], u1, atol=1e-12)
    assert example.collapse_sigma2 == pytest.approx(lam1)


def test_mle_is_the_discarded_eigenvalue_and_reproduces_s(example):
    lam1, lam2, u1 = _by_hand(example.spectrum.covariance)
    assert example.sigma2_mle == pytest.approx(lam2)
    np.testing.assert_allclose(example.mle.W[:, 0], u1 * np.sqrt(lam1 - lam2), atol=1e-12)
    np.testing.assert_allclose(example.mle.covariance, example.spectrum.covariance, atol=1e-12)


def test_likelihood_and_covariance_match_torch_low_rank_normal(example):
    x = torch.as_tensor(example.x)
    for state in (example.mle, *example.fixed, example.state(0.7), example.state(40.0)):
        dist = _low_rank_normal(state, example.spectrum.mean)
        np.testing.assert_allclose(state.covariance, dist.covariance_matrix.numpy(), atol=1e-12)
        assert state.log_likelihood == pytest.approx(float(dist.log_prob(x).mean()), abs=1e-10)


def test_mle_beats_every_fixed_sigma2_on_the_sweep(example):
    best = example.mle.log_likelihood
    for sigma2 in example.sweep_sigma2:
        assert example.state(sigma2).log_likelihood <= best + 1e-12


@pytest.mark.parametrize("sigma2", [0.05, 0.25, 1.0, 2.5, 3.99, 4.01, 5.0, 40.0])
def test_posterior_is_gaussian_conditioning_and_the_hand_formula(example, sigma2):
    state = example.state(sigma2)
    w = state.W[:, 0]
    C = np.outer(w, w) + sigma2 * np.eye(2)
    centred = example.point - example.spectrum.mean
    # joint Gaussian: Cov(z, x) = wᵀ, Var(x) = C ⇒ p(z | x) = N(wᵀC⁻¹x̃, 1 − wᵀC⁻¹w)
    assert state.posterior_mean == pytest.approx(w @ np.linalg.solve(C, centred), abs=1e-12)
    assert state.posterior_variance == pytest.approx(1 - w @ np.linalg.solve(C, w), abs=1e-12)
    lam1, _, u1 = _by_hand(example.spectrum.covariance)
    if sigma2 < lam1:  # M = wᵀw + σ² = λ_1: the chapter's hand computation
        assert not state.collapsed
        expected = np.sqrt(lam1 - sigma2) * (u1 @ centred) / lam1
        assert state.posterior_mean == pytest.approx(expected, abs=1e-12)
        assert state.posterior_variance == pytest.approx(sigma2 / lam1, abs=1e-12)
    else:  # collapsed: w = 0 and the posterior is the prior
        assert state.collapsed
        assert np.all(state.W == 0)
        assert state.posterior_mean == 0.0
        assert state.posterior_variance == pytest.approx(1.0, rel=1e-15)


def test_sweep_reaches_the_prior_continuously_at_lambda_1(example):
    lam1 = example.collapse_sigma2
    above = example.sweep_sigma2 >= lam1
    assert above.any() and (~above).any()
    np.testing.assert_array_equal(example.sweep_posterior_mean[above], 0.0)
    np.testing.assert_allclose(example.sweep_posterior_sd[above], 1.0, rtol=1e-15)
    assert np.all(np.diff(example.sweep_posterior_sd[~above]) > 0)  # sd = √(σ²/λ_1) grows
    near = example.state(lam1 * (1 - 1e-8))
    assert abs(near.posterior_mean) < 1e-3 and near.posterior_variance == pytest.approx(1.0)


def test_point_is_farthest_along_u1(example):
    along = (example.x - example.spectrum.mean) @ example.spectrum.eigenvectors[:, 0]
    assert example.point_index == int(np.argmax(along)) and along[example.point_index] > 0


def test_marginal_covariance_against_torch_and_bad_inputs():
    rng = np.random.default_rng(3)
    for q in (0, 1, 3):
        W = rng.normal(size=(5, q))
        factor = torch.as_tensor(W) if q else torch.zeros(5, 1, dtype=torch.float64)
        dist = torch.distributions.LowRankMultivariateNormal(
            torch.zeros(5, dtype=torch.float64), factor, torch.full((5,), 0.3, dtype=torch.float64)
        )
        np.testing.assert_allclose(
            ppca.marginal_covariance(W, 0.3), dist.covariance_matrix.numpy(), atol=1e-12
        )
    with pytest.raises(ValueError, match="σ²"):
        ppca.marginal_covariance(np.ones((3, 1)), 0.0)
    with pytest.raises(ValueError, match="q < d"):
        ppca.marginal_covariance(np.ones((2, 2)), 1.0)


def test_recoloured_gaussian_exact_moments_and_bad_inputs():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(3, 3))
    covariance = A @ A.T + np.eye(3)
    x = experiments.recoloured_gaussian(50, covariance, np.array([1.0, -2.0, 0.5]), seed=4)
    centred = x - x.mean(0)
    np.testing.assert_allclose(centred.T @ centred / 50, covariance, atol=1e-10)
    np.testing.assert_allclose(x.mean(0), [1.0, -2.0, 0.5], atol=1e-12)
    with pytest.raises(ValueError, match="n > d"):
        experiments.recoloured_gaussian(3, covariance, np.zeros(3))
    with pytest.raises(ValueError, match="λ_1 > λ_2"):
        experiments.ppca_2d_example(experiments.PPCA2DConfig(eigenvalues=(1.0, 2.0)))


def test_registered_plot_and_both_explorer_front_ends(example, monkeypatch):
    spec = load_all()["ppca-2d-example"]
    assert spec.chapter == "ppca" and spec.plot_function() is plotting.plot_ppca_2d
    fig = plotting.plot_ppca_2d(example)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    plt.close(fig)

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # no widget library: static figure
    static = explorer.explore_ppca_2d(example)
    assert isinstance(static, Figure)
    plt.close(static)
    with pytest.raises(ImportError, match="ipywidgets"):
        explorer.explore_ppca_2d(example, interactive=True, display=False)


def test_widget_follows_the_slider(example):
    pytest.importorskip("ipywidgets")
    open_before = set(plt.get_fignums())  # another test on this worker may have left one open
    view = explorer.explore_ppca_2d(example, interactive=True, display=False)
    assert isinstance(view, explorer.PPCA2DExplorer)
    assert view.state.sigma2 == pytest.approx(example.sigma2_mle)
    view.sigma2_slider.value = 6.0
    assert view.state.collapsed and view.state.sigma2 == pytest.approx(6.0, rel=1e-9)
    view.sigma2_slider.value = 0.5
    assert not view.state.collapsed
    assert (
        set(plt.get_fignums()) <= open_before
    )  # redraws leave no figure open for the inline backend


def test_glue_values_are_the_hand_computation(example):
    values = example.glue_values("g")
    a, b, c = values["g_s11"], values["g_s12"], values["g_s22"]
    assert values["g_half_trace"] == pytest.approx((a + c) / 2, abs=1e-12)
    assert values["g_half_gap"] == pytest.approx(np.hypot((a - c) / 2, b), abs=1e-12)
    raw = np.array([values["g_u1_raw_1"], values["g_u1_raw_2"]])
    u1 = np.array([values["g_u1_1"], values["g_u1_2"]])
    np.testing.assert_allclose(raw / np.linalg.norm(raw), u1, atol=1e-12)
    lam1, lam2 = values["g_lambda1"], values["g_lambda2"]
    assert values["g_M"] == pytest.approx(lam1, abs=1e-12)
    assert values["g_w_squared"] == pytest.approx(lam1 - lam2, abs=1e-12)
    m = np.sqrt(lam1 - lam2) * values["g_projection"] / lam1
    assert values["g_m"] == pytest.approx(m, abs=1e-12)
    assert values["g_v"] == pytest.approx(lam2 / lam1, abs=1e-12)
    assert all(np.isfinite(v) for v in values.values())
