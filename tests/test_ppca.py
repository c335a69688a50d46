"""pPCA in closed form, checked against torch.distributions and against optimisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lincollapse import ppca
from lincollapse.experiments.linear import maximise_fixed_sigma2


def _data(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.linspace(2.0, 0.2, d)
    return rng.normal(size=(n, d)) * scales @ np.linalg.qr(rng.normal(size=(d, d)))[0] + 0.3


def _oracle(x: np.ndarray, W: np.ndarray, sigma2: float, mean: np.ndarray) -> float:
    """Average log-density under torch's LowRankMultivariateNormal N(μ, WWᵀ + σ²I)."""
    d = x.shape[1]
    if W.shape[1] == 0:
        dist = torch.distributions.MultivariateNormal(
            torch.as_tensor(mean), covariance_matrix=sigma2 * torch.eye(d, dtype=torch.float64)
        )
    else:
        dist = torch.distributions.LowRankMultivariateNormal(
            torch.as_tensor(mean), torch.as_tensor(W), torch.full((d,), sigma2, dtype=torch.float64)
        )
    return float(dist.log_prob(torch.as_tensor(x)).mean())


def _spectrum(eigenvalues, seed: int = 0) -> ppca.DataSpectrum:
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    basis, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(eigenvalues.size,) * 2))
    return ppca.spectrum_from_covariance((basis * eigenvalues) @ basis.T, n=1)


def test_log_likelihood_matches_low_rank_normal():
    x = _data(300, 9)
    rng = np.random.default_rng(1)
    W, mean = rng.normal(size=(9, 3)), rng.normal(size=9)
    expected = _oracle(x, W, 0.7, mean)
    assert ppca.average_log_likelihood(x, W, 0.7, mean) == pytest.approx(expected, rel=1e-12)
    # the spectrum route and the default mean (the sample mean) agree with the oracle as well
    spectrum = ppca.data_spectrum(x)
    assert ppca.average_log_likelihood(spectrum, W, 0.7, mean) == pytest.approx(expected, rel=1e-10)
    sample_mean = _oracle(x, W, 0.7, x.mean(axis=0))
    assert ppca.average_log_likelihood(x, W, 0.7) == pytest.approx(sample_mean, rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(2, 12),
    q_fraction=st.floats(0.0, 0.99),
    n=st.integers(3, 60),
    log_sigma2=st.floats(-3.0, 2.0),
    seed=st.integers(0, 2**16),
)
def test_log_likelihood_property(d, q_fraction, n, log_sigma2, seed):
    q = int(q_fraction * d)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, size=d)
    W, mean = rng.normal(size=(d, q)), rng.normal(size=d)
    sigma2 = float(np.exp(log_sigma2))
    expected = _oracle(x, W, sigma2, mean)
    assert ppca.average_log_likelihood(x, W, sigma2, mean) == pytest.approx(
        expected, rel=1e-9, abs=1e-9
    )


def test_q_zero_is_isotropic_gaussian():
    x = _data(200, 6)
    fit = ppca.fit(x, 0)
    centred = x - x.mean(axis=0)
    assert fit.W.shape == (6, 0)
    assert fit.sigma2 == pytest.approx(np.sum(centred**2) / x.size, rel=1e-12)  # tr S / d
    assert fit.log_likelihood == pytest.approx(_oracle(x, fit.W, fit.sigma2, fit.mean), rel=1e-12)


@pytest.mark.parametrize("q", [1, 3, 6])
def test_max_log_likelihood_is_the_likelihood_at_the_fit(q):
    x = _data(400, 8, seed=q)
    fit = ppca.fit(x, q)
    assert fit.log_likelihood == pytest.approx(_oracle(x, fit.W, fit.sigma2, fit.mean), rel=1e-12)
    # any other parameters do worse
    rng = np.random.default_rng(q)
    for _ in range(5):
        W = fit.W + 0.1 * rng.normal(size=fit.W.shape)
        assert ppca.average_log_likelihood(x, W, fit.sigma2 * 1.1) < fit.log_likelihood


@pytest.mark.parametrize("q", [0, 2, 5])
def test_mle_is_a_stationary_point_of_the_torch_likelihood(q):
    x = torch.as_tensor(_data(500, 7, seed=10 + q))
    fit = ppca.fit(x.numpy(), q)
    W = torch.tensor(fit.W, requires_grad=True)
    log_sigma2 = torch.tensor(np.log(fit.sigma2), requires_grad=True)
    mean = torch.tensor(fit.mean, requires_grad=True)
    cov_diag = torch.exp(log_sigma2).expand(7)
    factor = W if q else torch.zeros(7, 1, dtype=torch.float64)
    value = torch.distributions.LowRankMultivariateNormal(mean, factor, cov_diag).log_prob(x).mean()
    value.backward()
    assert float(value.detach()) == pytest.approx(fit.log_likelihood, rel=1e-12)
    for grad in (W.grad if q else torch.zeros(1), log_sigma2.grad, mean.grad):
        assert float(grad.abs().max()) < 1e-10


def test_fixed_sigma2_maximiser_and_collapsed_count():
    spectrum = _spectrum([5.0, 3.0, 2.0, 1.2, 0.8, 0.5, 0.3, 0.1])
    for sigma2, expected in [(0.05, 0), (1.0, 1), (1.5, 2), (2.5, 3), (10.0, 5)]:
        W = ppca.fixed_sigma2_maximiser(spectrum, 5, sigma2)
        zero = int(np.count_nonzero(np.linalg.norm(W, axis=0) == 0.0))
        assert ppca.collapsed_column_count(spectrum, 5, sigma2) == expected == zero


@pytest.mark.parametrize("sigma2", [0.9, 2.5])
def test_optimising_w_with_fixed_sigma2_collapses_the_predicted_columns(sigma2):
    spectrum = _spectrum([5.0, 3.0, 2.0, 1.2, 0.8, 0.5, 0.3, 0.1], seed=3)
    q = 5
    W, reached = maximise_fixed_sigma2(spectrum, q, sigma2, steps=200, seed=1)
    best = ppca.average_log_likelihood(
        spectrum, ppca.fixed_sigma2_maximiser(spectrum, q, sigma2), sigma2
    )
    singular = np.linalg.svd(W, compute_uv=False)
    assert best - reached < 1e-8
    assert int(np.count_nonzero(singular < 1e-3)) == ppca.collapsed_column_count(
        spectrum, q, sigma2
    )


@pytest.mark.parametrize("sigma2", [0.7, 1.6])  # λ_3 = 1.2 below one, above the other
def test_perturbation_formula_matches_exact_change(sigma2):
    spectrum = _spectrum([4.0, 2.0, 1.2, 0.6, 0.3])
    W = ppca.stationary_point(spectrum, [0, 1, None], sigma2)
    base = ppca.average_log_likelihood(spectrum, W, sigma2)
    for epsilon in (1e-1, 1e-2, 1e-3):
        moved = W.copy()
        moved[:, 2] = epsilon * spectrum.eigenvectors[:, 2]
        exact = ppca.average_log_likelihood(spectrum, moved, sigma2) - base
        predicted = ppca.perturbation_change(spectrum.eigenvalues[2], sigma2, epsilon)
        assert np.sign(exact) == np.sign(1.2 - sigma2)
        assert exact == pytest.approx(predicted, rel=5 * epsilon**2, abs=1e-13)
    total = ppca.perturbation_change(spectrum.eigenvalues[2], sigma2, 1e-3, n=50)
    assert total == pytest.approx(50 * ppca.perturbation_change(1.2, sigma2, 1e-3))


def test_stationary_points_have_zero_gradient():
    spectrum = _spectrum([4.0, 2.0, 1.2, 0.6, 0.3], seed=5)
    covariance = torch.as_tensor(spectrum.covariance)
    for columns in ([0, None], [2, 0], [None, 1, 3]):
        W0 = ppca.stationary_point(spectrum, columns, 0.25)
        W = torch.tensor(W0, requires_grad=True)
        C = W @ W.T + 0.25 * torch.eye(5, dtype=torch.float64)
        value = -0.5 * (torch.logdet(C) + torch.trace(torch.linalg.solve(C, covariance)))
        value.backward()
        assert float(W.grad.abs().max()) < 1e-12


def test_posterior_is_gaussian_conditioning():
    rng = np.random.default_rng(2)
    d, q, sigma2 = 6, 2, 0.4
    W, mean, x = rng.normal(size=(d, q)), rng.normal(size=d), rng.normal(size=(5, d))
    C = W @ W.T + sigma2 * np.eye(d)
    posterior = ppca.posterior(x, W, sigma2, mean)
    np.testing.assert_allclose(posterior.mean, (W.T @ np.linalg.solve(C, (x - mean).T)).T)
    np.testing.assert_allclose(posterior.covariance, np.eye(q) - W.T @ np.linalg.solve(C, W))
    # a zero column has the prior as its posterior
    W[:, 1] = 0.0
    collapsed = ppca.posterior(x, W, sigma2, mean)
    np.testing.assert_allclose(collapsed.mean[:, 1], 0.0, atol=1e-15)
    assert collapsed.covariance[1, 1] == pytest.approx(1.0)


def test_rank_deficient_covariance_raises_a_clear_error():
    rng = np.random.default_rng(0)
    x = np.zeros((20, 30))
    x[:, :25] = rng.normal(size=(20, 25))  # rank of S is 19 (n − 1), five constant pixels
    spectrum = ppca.data_spectrum(x)
    assert spectrum.numerical_rank == 19
    assert ppca.fit(x, 18).sigma2 > 0
    with pytest.raises(
        ppca.RankDeficientError, match=r"q=19 is at or above the numerical rank r=19"
    ):
        ppca.fit(x, 19)
    with pytest.raises(ValueError, match="choose q < r or fix σ²"):
        ppca.max_log_likelihood(spectrum, 25)
    # with σ² fixed, large q is fine
    assert ppca.fixed_sigma2_maximiser(spectrum, 25, 0.1).shape == (30, 25)


def test_bad_inputs_are_rejected_with_a_fix():
    x = _data(50, 5)
    W = np.ones((5, 2))
    with pytest.raises(ValueError, match="σ² must be a finite positive"):
        ppca.average_log_likelihood(x, W, 0.0)
    with pytest.raises(ValueError, match="σ² must be a finite positive"):
        ppca.fixed_sigma2_maximiser(ppca.data_spectrum(x), 2, -1.0)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ppca.fit(bad, 1)
    with pytest.raises(ValueError, match=r"W must have shape \(d, q\) = \(5, q\)"):
        ppca.average_log_likelihood(x, np.ones((4, 2)), 1.0)
    with pytest.raises(ValueError, match="shape"):
        ppca.fit(x[0], 1)
    with pytest.raises(ValueError, match="q must be >= 0"):
        ppca.fit(x, -1)
    with pytest.raises(ValueError, match="q must be < d=5"):
        ppca.fit(x, 5)
    with pytest.raises(ValueError, match="descending"):
        ppca.sigma2_mle(np.array([1.0, 2.0, 3.0]), 1)
    with pytest.raises(ValueError, match="pass None"):
        ppca.stationary_point(ppca.data_spectrum(x), [0, 4], 10.0)
