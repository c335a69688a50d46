"""Tests of lincollapse.linear_decoder_vae against independent computations.

References: the linear VAE's closed-form ELBO from the sample covariance
(``linear_vae.elbo_terms``), pPCA's closed-form maximum (``ppca``), ``torch.distributions`` and
Monte-Carlo averages with standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lincollapse import linear_decoder_vae, linear_decoder_vae_training, linear_vae, ppca

D, Q, N = 12, 3, 40


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(D, D))
    return rng.normal(size=(N, D)) @ basis * 0.3 + rng.normal(size=D)


def _random_linear_vae(x: np.ndarray, seed: int = 1) -> linear_decoder_vae.LinearDecoderVAE:
    """A linear-encoder VAE with non-trivial W, V, D, σ² (not the small initialisation)."""
    model = linear_decoder_vae.make_vae("linear", x, Q, seed=seed, sigma2=0.7)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.decoder.W.copy_(torch.randn(D, Q, generator=g, dtype=torch.float64))
        model.encoder.V.copy_(0.5 * torch.randn(Q, D, generator=g, dtype=torch.float64))
        model.encoder.log_D.copy_(torch.randn(Q, generator=g, dtype=torch.float64))
    return model


def _random_amortised(
    kind: str, x: np.ndarray, seed: int = 2
) -> linear_decoder_vae.LinearDecoderVAE:
    """An amortised encoder whose variances genuinely depend on x."""
    model = linear_decoder_vae.make_vae(kind, x, Q, seed=seed, hidden=(8, 8), sigma2=0.5)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head = model.encoder.log_variance_head
        head.weight.copy_(0.3 * torch.randn(head.weight.shape, generator=g, dtype=torch.float64))
        model.encoder.mean_head.weight.mul_(50.0)
        model.decoder.W.copy_(torch.randn(D, Q, generator=g, dtype=torch.float64))
    return model


# --- the encoder-agnostic ELBO against the linear VAE's closed form -----------------------------


def test_linear_encoder_elbo_equals_closed_form(data):
    model = _random_linear_vae(data)
    W = model.decoder.W.detach().numpy()
    V = model.encoder.V.detach().numpy()
    Dvar = torch.exp(model.encoder.log_D).detach().numpy()
    terms = linear_vae.elbo_terms(data, W, V, Dvar, 0.7)  # from the sample covariance
    x = torch.as_tensor(data)
    means, variances = model.encoder(x)
    with torch.no_grad():
        recon = linear_decoder_vae.reconstruction_analytic(
            x, means, variances, model.decoder
        ).mean()
        kl = linear_decoder_vae.kl_per_image(means, variances).mean()
    assert float(recon) == pytest.approx(terms.reconstruction, abs=1e-10, rel=1e-12)
    assert float(kl) == pytest.approx(terms.kl, abs=1e-10, rel=1e-12)
    assert model.elbo(x).item() == pytest.approx(terms.elbo, abs=1e-10, rel=1e-12)


def test_linear_encoder_starts_like_linear_vae(data):
    """Same seed, same draws: make_vae("linear") initialises W and V as LinearVAE does."""
    model = linear_decoder_vae.make_vae("linear", data, Q, seed=7)
    reference = linear_vae.LinearVAE(D, Q, seed=7)
    assert torch.equal(model.decoder.W, reference.W)
    assert torch.equal(model.encoder.V, reference.V)
    np.testing.assert_allclose(model.decoder.centre.numpy(), data.mean(axis=0), atol=1e-14)


def test_elbo_at_ppca_optimum_with_optimal_encoder_is_max_loglik(data):
    """Theorem: ELBO = ℓ*(q) at W_MLE with the optimal linear encoder (lvae-optimal-encoder)."""
    fit = ppca.fit(data, Q)
    V, Dvar = linear_vae.optimal_encoder(fit.W, fit.sigma2)
    model = linear_decoder_vae.make_vae("linear", data, Q, sigma2=fit.sigma2)
    with torch.no_grad():
        model.decoder.W.copy_(torch.as_tensor(fit.W))
        model.encoder.V.copy_(torch.as_tensor(V))
        model.encoder.log_D.copy_(torch.log(torch.as_tensor(Dvar)))
    assert model.elbo(torch.as_tensor(data)).item() == pytest.approx(fit.log_likelihood, abs=1e-9)


def test_analytic_reconstruction_matches_torch_log_prob_at_zero_variance(data):
    """With s² → 0 the expectation is log N(x; Wμ + μ₀, σ²I), computed by torch.distributions."""
    model = _random_linear_vae(data)
    x = torch.as_tensor(data)
    means, _ = model.encoder(x)
    tiny = torch.full_like(means, 1e-300)
    value = linear_decoder_vae.reconstruction_analytic(x, means, tiny, model.decoder)
    loc = means @ model.decoder.W.T + model.decoder.centre
    scale = torch.sqrt(model.decoder.sigma2).expand_as(loc)
    expected = torch.distributions.Normal(loc, scale).log_prob(x).sum(dim=1)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=1e-10)


# --- the single-sample estimate is unbiased ---------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "deep-linear", "mlp"])
def test_single_sample_reconstruction_is_unbiased(data, kind):
    model = _random_linear_vae(data) if kind == "linear" else _random_amortised(kind, data)
    x = torch.as_tensor(data)
    with torch.no_grad():
        means, variances = model.encoder(x)
        analytic = linear_decoder_vae.reconstruction_analytic(x, means, variances, model.decoder)
        g = torch.Generator().manual_seed(11)
        draws = torch.stack(
            [
                linear_decoder_vae.reconstruction_sample(x, means, variances, model.decoder, g)
                for _ in range(3000)
            ]
        )  # (K, n)
    # Averaged over images (what is trained) ...
    averaged = draws.mean(dim=1)
    standard_error = float(averaged.std()) / math.sqrt(averaged.numel())
    assert standard_error > 0
    assert abs(float(averaged.mean()) - float(analytic.mean())) < 4 * standard_error
    # ... and image by image (Bonferroni over n images: 4.5 standard errors).
    per_image_se = draws.std(dim=0) / math.sqrt(draws.shape[0])
    z = (draws.mean(dim=0) - analytic) / per_image_se
    assert float(z.abs().max()) < 4.5
    # It is a genuinely noisy estimate, not the analytic value in disguise.
    assert float(draws.std(dim=0).min()) > 1e-3


def test_single_sample_gradient_is_unbiased(data):
    model = _random_linear_vae(data)
    x = torch.as_tensor(data)
    W = model.decoder.W
    (analytic,) = torch.autograd.grad(model.elbo(x, "analytic"), W)
    g = torch.Generator().manual_seed(5)
    draws = torch.stack(
        [torch.autograd.grad(model.elbo(x, "sample", g), W)[0] for _ in range(2000)]
    )
    z = (draws.mean(dim=0) - analytic) / (draws.std(dim=0) / math.sqrt(draws.shape[0]))
    assert float(z.abs().max()) < 4.5  # D·Q = 36 entries


def test_sample_estimator_is_reproducible_with_a_generator(data):
    model = _random_linear_vae(data)
    x = torch.as_tensor(data)
    a = model.elbo(x, "sample", torch.Generator().manual_seed(3))
    b = model.elbo(x, "sample", torch.Generator().manual_seed(3))
    assert a.item() == b.item()


# --- encoders --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", linear_decoder_vae.ENCODER_KINDS)
def test_encoder_shapes_and_positive_variances(data, kind):
    model = linear_decoder_vae.make_vae(kind, data, Q, seed=0, hidden=(8,))
    means, variances = model.encoder(torch.as_tensor(data))
    assert means.shape == variances.shape == (N, Q)
    assert means.dtype == torch.float64
    assert bool((variances > 0).all())


def test_deep_linear_mean_is_affine_and_variance_input_dependent(data):
    model = _random_amortised("deep-linear", data)
    x = torch.as_tensor(data)
    with torch.no_grad():
        means, variances = model.encoder(x)
        a, b = x[0], x[1]
        mid, _ = model.encoder(torch.stack([0.3 * a + 0.7 * b]))
    torch.testing.assert_close(mid[0], 0.3 * means[0] + 0.7 * means[1], rtol=1e-10, atol=1e-12)
    assert float(variances.std(dim=0).min()) > 1e-6


def test_mlp_with_width_2q_represents_the_linear_encoder(data):
    """ReLU(u) − ReLU(−u) = u: an MLP of widths ≥ 2q contains encoder (a) exactly."""
    linear = _random_linear_vae(data).encoder
    mlp = linear_decoder_vae.MLPEncoder(D, Q, hidden=(2 * Q, 2 * Q), centre=linear.centre)
    V = linear.V.detach()
    eye = torch.eye(Q, dtype=torch.float64)
    with torch.no_grad():
        first, second = mlp.body
        first.weight.copy_(torch.cat([V, -V]))
        second.weight.copy_(torch.block_diag(eye, eye))
        mlp.mean_head.weight.copy_(torch.cat([eye, -eye], dim=1))
        mlp.log_variance_head.bias.copy_(linear.log_D)
        for p in (first.bias, second.bias, mlp.mean_head.bias, mlp.log_variance_head.weight):
            p.zero_()
    x = torch.as_tensor(data)
    for got, want in zip(mlp(x), linear(x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_make_vae_shares_the_decoder_initialisation_across_kinds(data):
    decoders = [
        linear_decoder_vae.make_vae(k, data, Q, seed=4).decoder.W
        for k in linear_decoder_vae.ENCODER_KINDS
    ]
    for W in decoders[1:]:
        assert torch.equal(W, decoders[0])


def test_gram_is_w_transpose_w(data):
    model = _random_linear_vae(data)
    W = model.decoder.W.detach().numpy()
    np.testing.assert_allclose(model.gram(), W.T @ W, rtol=1e-14)


# --- bad inputs ------------------------------------------------------------------------------


def test_wrong_shapes_are_rejected(data):
    model = linear_decoder_vae.make_vae("linear", data, Q)
    with pytest.raises(ValueError, match=r"shape \(n, 12\)"):
        model.elbo(torch.zeros(5, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="x\\[None, :\\]"):
        model.encoder(torch.zeros(D, dtype=torch.float64))
    means = torch.zeros(4, Q, dtype=torch.float64)
    with pytest.raises(ValueError, match="both have shape"):
        linear_decoder_vae.kl_per_image(means, torch.ones(4, Q + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="same latent dimension"):
        linear_decoder_vae.reconstruction_analytic(
            torch.as_tensor(data[:4]),
            torch.zeros(4, Q + 1, dtype=torch.float64),
            torch.ones(4, Q + 1, dtype=torch.float64),
            model.decoder,
        )
    with pytest.raises(ValueError, match="1 <= q < d"):
        linear_decoder_vae.make_vae("linear", data, D)


def test_nan_and_nonpositive_values_are_rejected(data):
    model = linear_decoder_vae.make_vae("mlp", data, Q, hidden=(8,))
    bad = torch.as_tensor(data).clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.elbo(bad)
    with pytest.raises(ValueError, match="NaN"):
        linear_decoder_vae_training.train_vae(bad.numpy(), Q, steps=1)
    with pytest.raises(ValueError, match="> 0"):
        linear_decoder_vae.kl_per_image(torch.zeros(2, Q), -torch.ones(2, Q))
    for sigma2 in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="σ²"):
            linear_decoder_vae.make_vae("linear", data, Q, sigma2=sigma2)


def test_unknown_names_are_rejected(data):
    with pytest.raises(ValueError, match="choose one of linear, deep-linear, mlp"):
        linear_decoder_vae.make_encoder("conv", D, Q)
    with pytest.raises(ValueError, match="choose one of analytic, sample"):
        linear_decoder_vae.make_vae("linear", data, Q).elbo(torch.as_tensor(data), "two-sample")
    with pytest.raises(ValueError, match="positive widths"):
        linear_decoder_vae.make_encoder("mlp", D, Q, hidden=())
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        linear_decoder_vae_training.train_vae(data, Q, steps=1, dtype=torch.int64)


def test_rank_deficient_q_is_rejected():
    x = np.random.default_rng(0).normal(size=(4, D))  # rank 3 after centring
    with pytest.raises(ppca.RankDeficientError):
        linear_decoder_vae_training.train_vae(x, 3, steps=1)


# --- the noise at the optimum (chapter *Stochastic vs analytic ELBO*) ---------------------------


def _linear_vae_at_fixed_sigma2_optimum(x: np.ndarray, sigma2: float):
    """W = U_q (Λ_q − σ²)^{1/2} with the optimal encoder, σ² fixed below λ_q."""
    spectrum = ppca.data_spectrum(x)
    assert spectrum.eigenvalues[Q - 1] > sigma2
    W = ppca.fixed_sigma2_maximiser(spectrum, Q, sigma2)
    V, Dvar = linear_vae.optimal_encoder(W, sigma2)
    model = linear_decoder_vae.make_vae("linear", x, Q, sigma2=sigma2, learn_sigma2=False)
    with torch.no_grad():
        model.decoder.W.copy_(torch.as_tensor(W))
        model.encoder.V.copy_(torch.as_tensor(V))
        model.encoder.log_D.copy_(torch.log(torch.as_tensor(Dvar)))
    return model, spectrum.eigenvalues[:Q]


def test_single_sample_variance_at_the_optimum_is_bounded_by_half_q(data):
    """Averaged over images, Var_ξ of one image's single-sample term at the optimum is
    ½ Σ_j (1 − σ⁴/λ_j²) ≤ q/2 (exercise ex-selbo-variance): it does not grow as σ² falls."""
    x = torch.as_tensor(data)
    lam_q = ppca.data_spectrum(data).eigenvalues[Q - 1]
    for sigma2 in (lam_q / 4, lam_q / 64):
        model, lam = _linear_vae_at_fixed_sigma2_optimum(data, sigma2)
        with torch.no_grad():
            means, variances = model.encoder(x)
            g = torch.Generator().manual_seed(3)
            draws = torch.stack(
                [
                    linear_decoder_vae.reconstruction_sample(x, means, variances, model.decoder, g)
                    for _ in range(4000)
                ]
            )
        measured = float(draws.var(dim=0).mean())
        expected = 0.5 * float(np.sum(1 - sigma2**2 / lam**2))
        assert measured == pytest.approx(expected, rel=0.05)
        assert expected < Q / 2


def test_gradient_noise_standard_deviation_grows_like_one_over_sigma(data):
    """At the optimum, dividing σ² by 16 multiplies the standard deviation of the single-sample
    gradient with respect to W by about 4 = √16 (not 16)."""
    x = torch.as_tensor(data)
    lam_q = ppca.data_spectrum(data).eigenvalues[Q - 1]
    noise = []
    for sigma2 in (lam_q / 4, lam_q / 64):
        model, _ = _linear_vae_at_fixed_sigma2_optimum(data, sigma2)
        W = model.decoder.W
        g = torch.Generator().manual_seed(4)
        draws = torch.stack(
            [torch.autograd.grad(model.elbo(x, "sample", g), W)[0] for _ in range(600)]
        )
        noise.append(float(draws.var(dim=0).sum().sqrt()))
    assert noise[1] / noise[0] == pytest.approx(4.0, rel=0.2)
