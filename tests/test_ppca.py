"""pPCA in closed form, checked against torch.distributions and against optimisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lincollapse import ppca
from lincollapse.experiments.ppca import maximise_fixed_sigma2


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


# --------------------------------------------------------------------------------------------
# The proofs of the maxima (chapter *Probabilistic PCA*), checked by independent optimisation
# --------------------------------------------------------------------------------------------


def _negative_average_log_likelihood(S: np.ndarray, W: np.ndarray, sigma2: float) -> float:
    """−(1/N) L from the full d × d covariance with numpy's slogdet and solve (no Woodbury)."""
    d = S.shape[0]
    C = W @ W.T + sigma2 * np.eye(d)
    return 0.5 * (d * np.log(2 * np.pi) + np.linalg.slogdet(C)[1] + np.trace(np.linalg.solve(C, S)))


def _brute_force_maximum(S: np.ndarray, q: int, sigma2: float | None, starts: int = 12) -> float:
    """max of the average log-likelihood over W (and log σ² when ``sigma2`` is None) by BFGS."""
    from scipy.optimize import minimize

    d = S.shape[0]
    rng = np.random.default_rng(0)

    def objective(p):
        W = p[: d * q].reshape(d, q)
        return _negative_average_log_likelihood(S, W, np.exp(p[-1]) if sigma2 is None else sigma2)

    size = d * q + (sigma2 is None)
    runs = [
        minimize(objective, rng.normal(size=size), method="BFGS", options={"gtol": 1e-10})
        for _ in range(starts)
    ]
    return -min(run.fun for run in runs)


def test_comparing_index_sets_at_their_own_noise_is_not_a_proof():
    """λ = (3, 2, 0.1), q = 1: scoring each kept eigenvalue with σ²_I = mean of the others ranks
    0.1 first (−4.02 against −4.85), but that needs σ²_I = 2.5 > 0.1, where no real W exists.
    The maximum keeps λ = 3; BFGS over (W, log σ²) from many starts confirms it."""
    lam = np.array([3.0, 2.0, 0.1])
    d, q = 3, 1

    def score(kept: int) -> tuple[float, float]:
        sigma2 = float(np.delete(lam, kept).mean())
        return sigma2, -0.5 * (
            d * np.log(2 * np.pi) + np.log(lam[kept]) + (d - q) * np.log(sigma2) + d
        )

    scores = [score(i)[1] for i in range(3)]
    assert int(np.argmax(scores)) == 2  # the shortcut picks the smallest eigenvalue
    assert scores[2] == pytest.approx(-4.0218, abs=1e-4)
    assert scores[0] == pytest.approx(-4.8549, abs=1e-4)
    assert score(2)[0] == pytest.approx(2.5) and lam[2] < 2.5  # a column √(0.1 − 2.5): not real
    spectrum = ppca.spectrum_from_covariance(np.diag(lam))
    with pytest.raises(ValueError, match="pass None"):
        ppca.stationary_point(spectrum, [2], 2.5)
    brute = _brute_force_maximum(np.diag(lam), q, None)
    assert brute == pytest.approx(scores[0], abs=1e-7)
    assert ppca.max_log_likelihood(spectrum, q) == pytest.approx(scores[0], rel=1e-12)
    assert brute < scores[2] - 0.8


def _fixed_sigma2_maximum(lam: np.ndarray, q: int, sigma2: float) -> float:
    """(ppca-stationary-value) at I = {j ≤ q : λ_j > σ²}, with g(t) = t − 1 − log t."""
    t = lam / sigma2
    kept = t[:q][t[:q] > 1.0]
    return -0.5 * (
        lam.size * np.log(2 * np.pi) + np.sum(np.log(sigma2) + t) - np.sum(kept - 1 - np.log(kept))
    )


@pytest.mark.parametrize("sigma2", [0.05, 0.7, 1.6, 2.6, 6.0])
def test_fixed_sigma2_global_maximum_is_collapsed(sigma2):
    """The fixed-σ² maximum is the closed form of thm-ppca-fixed-sigma2, no random start of BFGS
    beats it, and its rank is #{j ≤ q : λ_j > σ²}."""
    lam = np.array([5.0, 3.0, 2.0, 1.2, 0.8, 0.5])
    q = 4
    spectrum = _spectrum(lam, seed=4)
    closed_form = _fixed_sigma2_maximum(lam, q, sigma2)
    W = ppca.fixed_sigma2_maximiser(spectrum, q, sigma2)
    assert ppca.average_log_likelihood(spectrum, W, sigma2) == pytest.approx(closed_form, rel=1e-12)
    brute = _brute_force_maximum(spectrum.covariance, q, sigma2, starts=6)
    assert brute == pytest.approx(closed_form, abs=1e-7)
    assert np.linalg.matrix_rank(W, tol=1e-9) == int(np.sum(lam[:q] > sigma2))


def test_zero_loadings_are_a_local_minimum_when_every_eigenvalue_exceeds_sigma2():
    """W = 0 with all λ_j > σ²: every direction raises L (the proof's remark), by exact values."""
    lam = np.array([4.0, 2.0, 1.2, 0.6])
    spectrum = _spectrum(lam, seed=6)
    sigma2 = 0.5
    base = ppca.average_log_likelihood(spectrum, np.zeros((4, 2)), sigma2)
    rng = np.random.default_rng(7)
    for _ in range(20):
        A = rng.normal(size=(4, 2))
        A /= np.linalg.norm(A)
        moved = ppca.average_log_likelihood(spectrum, 1e-3 * A, sigma2) - base
        predicted = 0.5 * 1e-6 * np.trace(A.T @ (spectrum.covariance - sigma2 * np.eye(4)) @ A)
        assert moved > 0
        assert moved == pytest.approx(predicted / sigma2**2, rel=1e-4)


def test_profiled_likelihood_rises_to_sigma2_mle_and_falls_after():
    """L*(σ²) = max_W L(W, σ²) increases strictly up to σ²_MLE and decreases strictly after."""
    lam = np.array([5.0, 3.0, 2.0, 1.2, 0.8, 0.5, 0.3, 0.1])
    spectrum = _spectrum(lam, seed=8)
    q = 3
    mle = lam[q:].mean()
    grid = np.geomspace(0.02, 8.0, 81)
    profile = np.array(
        [
            ppca.average_log_likelihood(spectrum, ppca.fixed_sigma2_maximiser(spectrum, q, s), s)
            for s in grid
        ]
    )
    closed_form = [_fixed_sigma2_maximum(lam, q, s) for s in grid]
    np.testing.assert_allclose(profile, closed_form, rtol=1e-12)
    assert np.all(np.diff(profile[grid < mle]) > 0)
    assert np.all(np.diff(profile[grid > mle]) < 0)
    assert profile.max() < ppca.max_log_likelihood(spectrum, q)
    assert ppca.sigma2_mle(spectrum, q) == pytest.approx(mle, rel=1e-12)


def test_fixed_sigma2_exercise_counts_on_the_book_images():
    """Exercise ex-lvae-sigma-fixed: at σ² = σ²_MLE(50) so many eigenvalues exceed σ² that a
    q = 100 model collapses nothing (the old exercise compared 0 with 0); at σ² = 1, q = 50, a
    non-trivial number collapses, with the nearest eigenvalues a few per cent from σ². Counts
    from numpy's eigvalsh of the raw covariance, independent of the package's spectrum."""
    from lincollapse.data import load_mnist

    x = load_mnist(1000, seed=0).images
    centred = x - x.mean(axis=0)
    lam = np.sort(np.linalg.eigvalsh(centred.T @ centred / x.shape[0]))[::-1]
    noise = lam[50:].sum() / (lam.size - 50)
    assert noise == pytest.approx(0.01145, abs=5e-5)
    assert int(np.sum(lam > noise)) == 214 > 100
    assert ppca.collapsed_column_count(ppca.data_spectrum(x), 100, noise) == 0
    collapsed = int(np.sum(lam[:50] <= 1.0))
    assert 0 < collapsed < 50
    assert ppca.collapsed_column_count(ppca.data_spectrum(x), 50, 1.0) == collapsed
    active = 50 - collapsed
    assert lam[active - 1] > 1.05 and lam[active] < 0.95  # a clear margin on both sides of σ²
