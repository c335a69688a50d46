"""The shared Gaussian formulas, each against torch.distributions or an independent closed form.

Every function is checked on numpy arrays and on torch tensors (float64): it computes with the
library of its inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lincollapse import gaussian


def _as(kind: str, array: np.ndarray):
    return torch.as_tensor(array) if kind == "torch" else array


def _numpy(value) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_kl_to_prior_matches_torch_distributions(kind):
    rng = np.random.default_rng(0)
    means = rng.normal(size=(50, 4)) * 2
    variances = rng.uniform(0.01, 5.0, size=(50, 4))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(torch.as_tensor(means), torch.as_tensor(variances).sqrt()),
        torch.distributions.Normal(0.0, 1.0),
    ).numpy()
    kl = gaussian.kl_to_prior(_as(kind, means), _as(kind, variances))
    assert isinstance(kl, torch.Tensor) == (kind == "torch")
    np.testing.assert_allclose(_numpy(kl), expected, rtol=1e-12)
    # from the log-variance an encoder returns, the same KL
    logs = _as(kind, np.log(variances))
    from_logs = gaussian.kl_to_prior(_as(kind, means), _as(kind, variances), logs)
    np.testing.assert_allclose(_numpy(from_logs), expected, rtol=1e-12)
    # the prior itself: zero
    assert np.all(_numpy(gaussian.kl_to_prior(_as(kind, np.zeros(3)), _as(kind, np.ones(3)))) == 0)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("given", [False, True])
def test_log_likelihood_matches_torch_distributions(kind, given):
    rng = np.random.default_rng(1)
    x, mean = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    sigma2 = np.array([[0.3], [2.0], [0.7], [1.0], [5.0], [0.01]])  # one σ² per point
    expected = (
        torch.distributions.Normal(torch.as_tensor(mean), torch.as_tensor(np.sqrt(sigma2)))
        .log_prob(torch.as_tensor(x))
        .sum(-1)
        .numpy()
    )
    squared = _as(kind, ((x - mean) ** 2).sum(-1))
    log_sigma2 = _as(kind, np.log(sigma2[:, 0]))
    value = gaussian.log_likelihood(
        squared, 5, log_sigma2, _as(kind, sigma2[:, 0]) if given else None
    )
    np.testing.assert_allclose(_numpy(value), expected, rtol=1e-12)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_m_matrix_gives_the_exact_posterior_covariance(kind):
    """σ² M⁻¹ = I − Wᵀ C⁻¹ W with C = WWᵀ + σ²I: the covariance of z given x in the joint
    Gaussian of (z, x), computed without M."""
    rng = np.random.default_rng(2)
    W, sigma2 = rng.normal(size=(7, 3)), 0.4
    M = _numpy(gaussian.m_matrix(_as(kind, W), sigma2))
    C = W @ W.T + sigma2 * np.eye(7)
    np.testing.assert_allclose(
        sigma2 * np.linalg.inv(M), np.eye(3) - W.T @ np.linalg.solve(C, W), atol=1e-12
    )
    # a given Gram matrix replaces WᵀW
    gram = _as(kind, 2.0 * np.eye(3))
    np.testing.assert_array_equal(_numpy(gaussian.m_matrix(None, sigma2, gram)), 2.4 * np.eye(3))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_optimal_encoder_is_the_posterior_mean_map_and_mean_field_variance(kind):
    """V* = Wᵀ C⁻¹ (the posterior mean map of the joint Gaussian) and
    D*_i = 1 / (1 + ‖w_i‖²/σ²) (the inverse diagonal of the posterior precision I + WᵀW/σ²)."""
    rng = np.random.default_rng(3)
    W, sigma2 = rng.normal(size=(8, 3)), 0.25
    V, D = gaussian.optimal_encoder(_as(kind, W), _as(kind, np.float64(sigma2)))
    C = W @ W.T + sigma2 * np.eye(8)
    np.testing.assert_allclose(_numpy(V), W.T @ np.linalg.inv(C), atol=1e-12)
    expected_D = 1.0 / (1.0 + (W**2).sum(0) / sigma2)
    np.testing.assert_allclose(_numpy(D), expected_D, rtol=1e-12)
    _, log_D = gaussian.optimal_encoder(
        _as(kind, W), _as(kind, np.float64(sigma2)), _as(kind, np.log(np.float64(sigma2)))
    )
    np.testing.assert_allclose(_numpy(log_D), np.log(expected_D), rtol=1e-12)
