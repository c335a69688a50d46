"""The linear VAE: closed-form ELBO identities, Monte Carlo, and training to the pPCA optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lincollapse import linear_vae, linear_vae_training, ppca
from lincollapse.profiled_elbo import ProfiledELBO

Normal = torch.distributions.Normal
Independent = torch.distributions.Independent


def _data(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * np.linspace(2.0, 0.3, d) + rng.normal(size=d)


def _spectrum(eigenvalues, seed: int = 0) -> ppca.DataSpectrum:
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    basis, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(eigenvalues.size,) * 2))
    return ppca.spectrum_from_covariance((basis * eigenvalues) @ basis.T, n=1)


def _elbo_from_points(x, W, V, D, sigma2) -> tuple[float, float]:
    """Reconstruction and KL computed point by point, the KL by torch.distributions."""
    x, W, V, D = (torch.as_tensor(a, dtype=torch.float64) for a in (x, W, V, D))
    centred = x - x.mean(dim=0)
    d = x.shape[1]
    residual = centred - centred @ V.T @ W.T
    reconstruction = -0.5 / sigma2 * (torch.trace(W @ torch.diag(D) @ W.T) + (residual**2).sum(1))
    reconstruction = reconstruction - 0.5 * d * np.log(2 * np.pi * sigma2)
    encoder = Independent(Normal(centred @ V.T, D.sqrt().expand(len(x), -1)), 1)
    prior = Independent(Normal(torch.zeros_like(D), torch.ones_like(D)), 1)
    kl = torch.distributions.kl_divergence(encoder, prior)
    return float(reconstruction.mean()), float(kl.mean())


def _random_parameters(d: int, q: int, seed: int):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(d, q)),
        0.3 * rng.normal(size=(q, d)),
        rng.uniform(0.2, 1.5, size=q),
        float(rng.uniform(0.2, 2.0)),
    )


def test_analytic_elbo_matches_the_pointwise_definition():
    x = _data(200, 7)
    W, V, D, sigma2 = _random_parameters(7, 3, seed=1)
    terms = linear_vae.elbo_terms(x, W, V, D, sigma2)
    reconstruction, kl = _elbo_from_points(x, W, V, D, sigma2)
    assert terms.reconstruction == pytest.approx(reconstruction, rel=1e-12)
    assert terms.kl == pytest.approx(kl, rel=1e-12)
    assert terms.elbo == pytest.approx(reconstruction - kl, rel=1e-12)


def test_diagonal_covariance_form_agrees_with_the_full_one():
    spectrum = ppca.data_spectrum(_data(100, 6, seed=4))
    W, V, D, sigma2 = (torch.as_tensor(a) for a in _random_parameters(6, 2, seed=4))
    U = torch.as_tensor(spectrum.eigenvectors)
    full = linear_vae.analytic_elbo_terms(torch.as_tensor(spectrum.covariance), W, V, D, sigma2)
    eigen = linear_vae.analytic_elbo_terms(
        torch.as_tensor(spectrum.eigenvalues), U.T @ W, V @ U, D, sigma2
    )
    for a, b in zip(full, eigen, strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-12)


def test_elbo_star_equals_log_likelihood_iff_columns_are_orthogonal():
    x = _data(300, 8, seed=2)
    spectrum = ppca.data_spectrum(x)
    orthogonal = spectrum.eigenvectors[:, [1, 4, 6]] * np.array([0.5, 2.0, 0.1])
    assert linear_vae.optimal_encoder_elbo(x, orthogonal, 0.3) == pytest.approx(
        ppca.average_log_likelihood(x, orthogonal, 0.3), rel=1e-12
    )
    rng = np.random.default_rng(0)
    for _ in range(5):
        W = rng.normal(size=(8, 3))
        gap = ppca.average_log_likelihood(x, W, 0.3) - linear_vae.optimal_encoder_elbo(x, W, 0.3)
        assert gap > 1e-6


def test_optimal_encoder_gives_elbo_star_and_zero_encoder_gradient():
    x = _data(250, 6, seed=3)
    W, _, _, sigma2 = _random_parameters(6, 3, seed=3)
    V, D = linear_vae.optimal_encoder(W, sigma2)
    terms = linear_vae.elbo_terms(x, W, V, D, sigma2)
    assert terms.elbo == pytest.approx(linear_vae.optimal_encoder_elbo(x, W, sigma2), rel=1e-12)
    # stationarity in V and log D, by autograd on the pointwise definition
    model = linear_vae.LinearVAE(6, 3, sigma2=sigma2)
    with torch.no_grad():
        model.W.copy_(torch.as_tensor(W))
    model.set_optimal_encoder()
    np.testing.assert_allclose(model.V.detach().numpy(), V, rtol=1e-12)
    covariance = torch.as_tensor(ppca.data_spectrum(x).covariance)
    model.elbo(covariance).backward()
    assert float(model.V.grad.abs().max()) < 1e-10
    assert float(model.log_D.grad.abs().max()) < 1e-10


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(2, 10),
    q_fraction=st.floats(0.0, 0.99),
    n=st.integers(3, 40),
    seed=st.integers(0, 2**16),
)
def test_elbo_identities_property(d, q_fraction, n, seed):
    q = int(q_fraction * d)
    x = np.random.default_rng(seed).normal(size=(n, d)) * 1.5
    W, V, D, sigma2 = _random_parameters(d, q, seed)
    loglik = ppca.average_log_likelihood(x, W, sigma2)
    elbo = linear_vae.elbo_terms(x, W, V, D, sigma2).elbo
    V_star, D_star = linear_vae.optimal_encoder(W, sigma2)
    best = linear_vae.elbo_terms(x, W, V_star, D_star, sigma2).elbo
    gap = linear_vae.elbo_gap(W, sigma2)
    assert elbo <= best + 1e-9 * (1 + abs(best))  # the optimal encoder is optimal
    assert best == pytest.approx(loglik - gap, rel=1e-9, abs=1e-9)  # (lvae-elbo-gap)
    assert gap >= -1e-12


def test_encode_shapes_and_shared_variances():
    x = _data(30, 6)
    model = linear_vae.LinearVAE(6, 2, mean=x.mean(axis=0))
    means, variances = model.encode(x)
    assert means.shape == variances.shape == (30, 2)
    assert torch.equal(variances[0], variances[-1])
    with pytest.raises(ValueError, match=r"x must have shape \(n, 6\)"):
        model.encode(x[:, :5])


def test_training_reaches_the_ppca_optimum_on_a_known_spectrum():
    spectrum = _spectrum(np.geomspace(4.0, 0.05, 12), seed=1)
    for q in (0, 4, 8):
        trained = linear_vae_training.train_linear_vae(spectrum, q, steps=200, seed=q)
        assert trained.optimum == pytest.approx(ppca.max_log_likelihood(spectrum, q))
        assert -1e-9 < trained.gap < 1e-6, (q, trained.gap)
        W = trained.model.W.detach().numpy()
        gram = W.T @ W
        off_diagonal = gram - np.diag(np.diag(gram))
        assert np.all(np.abs(off_diagonal) < 1e-3 * max(1.0, np.abs(gram).max(initial=0.0)))
    # the same through joint L-BFGS on every parameter (no coordinate ascent)
    joint = linear_vae_training.train_linear_vae(spectrum, 3, encoder="learned", steps=300, seed=0)
    assert joint.encoder == "learned"
    assert -1e-9 < joint.gap < 1e-3


def test_adam_improves_the_elbo():
    spectrum = _spectrum(np.geomspace(4.0, 0.05, 6), seed=2)
    trained = linear_vae_training.train_linear_vae(
        spectrum, 2, optimiser="adam", steps=300, lr=1e-2
    )
    assert trained.encoder == "learned"
    assert trained.history.values[-1] > trained.history.values[0] + 1.0
    assert trained.elbo == pytest.approx(trained.history.values[-1], rel=1e-9)
    assert trained.gap > 0


def test_fixed_sigma2_training_collapses_the_predicted_columns():
    spectrum = _spectrum([5.0, 3.0, 2.0, 1.2, 0.8, 0.5, 0.3, 0.1], seed=4)
    for sigma2 in (0.4, 1.0, 2.5):
        trained = linear_vae_training.train_linear_vae(
            spectrum, 5, learn_sigma2=False, sigma2_init=sigma2, steps=200
        )
        assert float(trained.model.sigma2) == pytest.approx(sigma2)
        assert trained.gap < 1e-6
        norms = trained.model.decoder_column_norms()
        collapsed = int(np.count_nonzero(norms < 1e-3))
        assert collapsed == ppca.collapsed_column_count(spectrum, 5, sigma2)


def test_training_input_errors():
    rng = np.random.default_rng(0)
    x = np.zeros((20, 30))
    x[:, :25] = rng.normal(size=(20, 25))
    with pytest.raises(ppca.RankDeficientError, match="numerical rank r=19"):
        linear_vae_training.train_linear_vae(x, 19)
    with pytest.raises(ValueError, match="unknown optimiser"):
        linear_vae_training.train_linear_vae(x, 2, optimiser="sgd")
    with pytest.raises(ValueError, match="unknown encoder"):
        linear_vae_training.train_linear_vae(x, 2, encoder="amortised")
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        linear_vae_training.train_linear_vae(x, 2)
    with pytest.raises(ValueError, match="σ² must be a finite positive"):
        linear_vae.optimal_encoder(np.ones((3, 1)), 0.0)
    with pytest.raises(ValueError, match=r"V must have shape \(q, d\)"):
        linear_vae.elbo_terms(
            np.ones((4, 3)) * np.arange(4)[:, None],
            np.ones((3, 1)),
            np.ones((3, 1)),
            np.ones(1),
            1.0,
        )
    with pytest.raises(ValueError, match="D must be finite and > 0"):
        linear_vae.elbo_terms(
            np.arange(12.0).reshape(4, 3), np.ones((3, 1)), np.ones((1, 3)), np.zeros(1), 1.0
        )


@pytest.mark.parametrize("q", [1, 3, 6])
@pytest.mark.parametrize("basis", ["eigenbasis", "pixels"])
def test_hand_written_profiled_elbo_gradient_matches_finite_differences(q, basis):
    """ELBO*(W, σ²) and its hand-written gradient, against the numpy closed form.

    Value: :func:`linear_vae.optimal_encoder_elbo` (log p − gap, computed independently in
    numpy). Gradient: central finite differences of that function along random directions.
    Two parameterisations: the fast path's (diagonal S, W = diag(r) Ŵ: G and P diagonal) and
    :func:`linear_vae_training.ascend_elbo`'s (a full S in pixel coordinates, W = Ŵ: G = I, P = S).
    """
    eigenvalues = np.array([5.0, 3.0, 2.0, 1.2, 0.7, 0.4, 0.2, 0.1])
    d = eigenvalues.size
    rng = np.random.default_rng(q)
    if basis == "eigenbasis":
        covariance = np.diag(eigenvalues)
        row_scale = np.sqrt(eigenvalues + 0.05)[:, None]
        metric = torch.tensor(row_scale[:, 0] ** 2)
        projected = torch.tensor(row_scale[:, 0] ** 2 * eigenvalues)
    else:
        rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
        covariance = (rotation * eigenvalues) @ rotation.T
        row_scale = np.ones((d, 1))
        metric, projected = None, torch.tensor(covariance)
    spectrum = ppca.spectrum_from_covariance(covariance, n=1)
    W_hat = torch.tensor(rng.normal(size=(d, q)), requires_grad=True)
    log_sigma2 = torch.tensor(np.log(0.6), requires_grad=True)
    value = ProfiledELBO.apply(W_hat, log_sigma2, metric, projected, float(eigenvalues.sum()), d)
    value.backward()

    def closed_form(W_hat_np: np.ndarray, log_s: float) -> float:
        return linear_vae.optimal_encoder_elbo(spectrum, row_scale * W_hat_np, np.exp(log_s))

    W0, s0 = W_hat.detach().numpy(), float(log_sigma2.detach())
    assert value.item() == pytest.approx(closed_form(W0, s0), abs=1e-10)
    h = 1e-5
    for _ in range(3):
        direction = rng.normal(size=W0.shape)
        numeric = (closed_form(W0 + h * direction, s0) - closed_form(W0 - h * direction, s0)) / (
            2 * h
        )
        assert float((W_hat.grad.numpy() * direction).sum()) == pytest.approx(numeric, rel=1e-6)
    numeric = (closed_form(W0, s0 + h) - closed_form(W0, s0 - h)) / (2 * h)
    assert float(log_sigma2.grad) == pytest.approx(numeric, rel=1e-6)


# ----------------------------------------------------------------------------- ascend_elbo


def _synthetic_images(n: int = 400, seed: int = 3) -> np.ndarray:
    """Distinct variances along a random basis of 11 coordinates, and one constant coordinate."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(11, 11)))
    scales = np.geomspace(2.5, 0.2, 11)
    x = np.full((n, 12), 0.7)
    x[:, 1:] = (rng.normal(size=(n, 11)) * scales) @ basis.T + rng.normal(size=11)
    return x


@pytest.mark.parametrize("q", [0, 2, 5])
def test_ascend_elbo_reaches_the_ppca_maximum_likelihood(q):
    """From a random start, L-BFGS on ELBO* lands on the closed-form pPCA MLE (float64).

    Against Tipping & Bishop's closed form (``ppca.max_log_likelihood``, ``ppca.fit``: an
    eigendecomposition the trainer never sees): ℓ*(q), σ²_MLE and W Wᵀ = W_MLE W_MLEᵀ; and
    the Gram matrix WᵀW is diagonal, as the ELBO's maximiser must have it.
    """
    x = _synthetic_images()
    fit = ppca.fit(x, q)
    trained = linear_vae_training.ascend_elbo(x, q, steps=2000, record_every=10, seed=q)
    assert trained.encoder == "optimal" and trained.optimiser == "lbfgs"
    assert fit.log_likelihood - trained.elbo == pytest.approx(0.0, abs=1e-8)
    assert fit.log_likelihood == pytest.approx(ppca.max_log_likelihood(ppca.data_spectrum(x), q))
    assert float(trained.model.sigma2.detach()) == pytest.approx(fit.sigma2, rel=1e-6)
    assert trained.trace.sigma2[-1] == float(trained.model.sigma2.detach())
    W = trained.model.W.detach().numpy()
    # the value is quadratic in the parameters near the maximum: 1e-8 nats ≈ 1e-4 in W Wᵀ
    np.testing.assert_allclose(W @ W.T, fit.W @ fit.W.T, atol=1e-4)
    np.testing.assert_allclose(trained.model.mean.numpy(), x.mean(axis=0), atol=1e-12)
    assert np.all(W[0] == 0.0)  # the constant coordinate
    assert trained.gram_ratio < 1e-5
    # the trace: step 0 is the random start, the ELBO never decreases, its last record is final
    assert trained.trace.steps[0] == 0 and trained.trace.steps[-1] == trained.steps
    assert np.all(np.diff(trained.trace.elbo) >= -1e-9)
    assert trained.trace.elbo[-1] == pytest.approx(trained.elbo, abs=1e-9)
    assert trained.trace.seconds.shape == trained.trace.gram_ratio.shape


def test_ascend_elbo_joint_training_reaches_the_same_optimum():
    """Plain joint training of (W, V, D, σ²) — L-BFGS, then Adam — against ℓ*(q)."""
    x = _synthetic_images()
    best = ppca.fit(x, 3).log_likelihood
    joint = linear_vae_training.ascend_elbo(x, 3, encoder="learned", steps=3000, seed=1)
    assert joint.encoder == "learned"
    # a lower bound on the maximum, above it only by round-off (3.6e-15 seen on an AMD EPYC)
    assert -1e-12 <= best - joint.elbo < 1e-5
    assert joint.gram_ratio < 1e-2
    adam = linear_vae_training.ascend_elbo(
        x, 3, encoder="learned", optimiser="adam", steps=300, lr=1e-2
    )
    assert adam.trace.elbo[-1] > adam.trace.elbo[0] + 1.0
    assert best - adam.elbo > 0
    assert adam.trace.steps[-1] == 300


def test_ascend_elbo_with_fixed_sigma2_collapses_the_predicted_columns():
    x = _synthetic_images()
    spectrum = ppca.data_spectrum(x)
    sigma2 = float(spectrum.eigenvalues[3] + spectrum.eigenvalues[4]) / 2  # between λ_4 and λ_5
    trained = linear_vae_training.ascend_elbo(
        x, 6, learn_sigma2=False, sigma2_init=sigma2, steps=2000
    )
    assert float(trained.model.sigma2.detach()) == sigma2
    best_W = ppca.fixed_sigma2_maximiser(spectrum, 6, sigma2)
    best = ppca.average_log_likelihood(spectrum, best_W, sigma2)
    assert -1e-12 <= best - trained.elbo < 1e-5  # at most round-off above the maximum
    norms = np.sort(trained.model.decoder_column_norms())
    assert np.all(norms[:2] < 1e-2) and np.all(norms[2:] > 0.1)  # two of six collapse


def test_ascend_elbo_never_decomposes(no_decompositions):
    """No eigendecomposition or SVD inside the trainer, whatever the encoder or optimiser."""
    x = _synthetic_images()
    with no_decompositions():
        for encoder, optimiser in (("optimal", "lbfgs"), ("learned", "lbfgs"), ("learned", "adam")):
            trained = linear_vae_training.ascend_elbo(
                x, 3, encoder=encoder, optimiser=optimiser, steps=30
            )
            assert trained.trace.gram_ratio.size >= 2
        # the guard works: the rotation fast path decomposes (the spectrum, then W^T W)
        with pytest.raises(AssertionError, match="called"):
            linear_vae_training.train_linear_vae(x, 3, steps=30)


def test_ascend_elbo_input_errors():
    x = _synthetic_images(n=30)
    with pytest.raises(TypeError, match="not a DataSpectrum"):
        linear_vae_training.ascend_elbo(ppca.data_spectrum(x), 2)
    with pytest.raises(ValueError, match="unknown encoder"):
        linear_vae_training.ascend_elbo(x, 2, encoder="amortised")
    with pytest.raises(ValueError, match="unknown optimiser"):
        linear_vae_training.ascend_elbo(x, 2, optimiser="sgd")
    with pytest.raises(ValueError, match=r"0 <= q < 11 \(the number of non-constant"):
        linear_vae_training.ascend_elbo(x, 11)
    with pytest.raises(ValueError, match="record_every and block"):
        linear_vae_training.ascend_elbo(x, 2, block=0)
    low_rank = np.zeros((6, 12))
    low_rank[:, :8] = np.random.default_rng(0).normal(size=(6, 8))
    with pytest.raises(ppca.RankDeficientError, match="numerical rank r=5"):
        linear_vae_training.ascend_elbo(low_rank, 5)
    # with σ² fixed, q may reach the rank
    linear_vae_training.ascend_elbo(low_rank, 5, learn_sigma2=False, sigma2_init=0.5, steps=5)


def test_covariance_rank_and_gram_helpers():
    rng = np.random.default_rng(1)
    factor = rng.normal(size=(9, 4))
    assert linear_vae_training.covariance_rank(factor @ factor.T) == 4
    assert linear_vae_training.covariance_rank(np.zeros((3, 3))) == 0
    W = rng.normal(size=(9, 4)) * np.array([1.0, 3.0, 2.0, 0.5])
    gram = linear_vae.leading_gram(W, 2)
    order = np.argsort(-np.linalg.norm(W, axis=0))[:2]
    np.testing.assert_allclose(gram, W[:, order].T @ W[:, order])
    orthogonal = np.linalg.qr(rng.normal(size=(9, 4)))[0] * np.array([1.0, 3.0, 2.0, 0.5])
    assert linear_vae.off_diagonal_ratio(linear_vae.leading_gram(orthogonal)) < 1e-12
    assert linear_vae.off_diagonal_ratio(np.array([[1.0, 1.0], [1.0, 1.0]])) == pytest.approx(1.0)
    assert linear_vae.off_diagonal_ratio(np.zeros((2, 2))) == 0.0
    with pytest.raises(ValueError, match="square"):
        linear_vae.off_diagonal_ratio(np.ones((2, 3)))
