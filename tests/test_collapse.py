"""Per-dimension Gaussian KLs and the (ε, δ)-collapse metric."""

from __future__ import annotations

import numpy as np
import pytest

from lincollapse.collapse import collapsed_fraction, collapsed_mask, gaussian_kl_per_dimension


def test_shared_variances_broadcast_over_the_points():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(50, 4)) * 2
    variances = rng.uniform(0.01, 5.0, size=(50, 4))
    shared = gaussian_kl_per_dimension(means, variances[0])
    np.testing.assert_allclose(
        shared, gaussian_kl_per_dimension(means, np.tile(variances[0], (50, 1)))
    )


def test_prior_has_zero_kl():
    assert np.all(gaussian_kl_per_dimension(np.zeros((3, 2)), np.ones((3, 2))) == 0.0)


def test_collapse_metric_on_known_kls():
    n = 1000
    kl = np.zeros((n, 4))
    kl[:, 1] = 0.05  # collapsed once ε > 0.05
    kl[:5, 2] = 3.0  # 0.5 % of the points informative: collapsed for δ = 0.01
    kl[:20, 3] = 3.0  # 2 % informative: never collapsed for δ = 0.01 and ε ≤ 3
    epsilons = np.array([0.0, 0.01, 0.1, 2.0])
    np.testing.assert_array_equal(
        collapsed_mask(kl, epsilons),
        [
            [False] * 4,
            [True, False, True, False],
            [True, True, True, False],
            [True, True, True, False],
        ],
    )
    np.testing.assert_allclose(collapsed_fraction(kl, epsilons), [0.0, 0.5, 0.75, 0.75])
    # δ = 0.03 tolerates the 2 % too; δ = 0 tolerates nothing
    assert collapsed_fraction(kl, 0.1, delta=0.03) == pytest.approx(1.0)
    assert collapsed_fraction(kl, 0.1, delta=0.0) == pytest.approx(0.5)


def test_vectorised_over_epsilon_equals_a_loop():
    rng = np.random.default_rng(1)
    kl = rng.exponential(scale=rng.uniform(0.01, 2.0, size=7), size=(300, 7))
    epsilons = np.linspace(0, 2, 41)
    looped = [collapsed_fraction(kl, float(e), delta=0.05) for e in epsilons]
    np.testing.assert_allclose(collapsed_fraction(kl, epsilons, delta=0.05), looped)
    assert np.all(np.diff(collapsed_fraction(kl, epsilons)) >= 0)  # monotone in ε


def test_bad_inputs():
    with pytest.raises(ValueError, match="variances must be > 0"):
        gaussian_kl_per_dimension(np.zeros((2, 2)), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_kl_per_dimension(np.array([[np.nan, 0.0]]), np.ones(2))
    with pytest.raises(ValueError, match=r"variances must have shape \(3, 2\) or \(2,\)"):
        gaussian_kl_per_dimension(np.zeros((3, 2)), np.ones(3))
    with pytest.raises(ValueError, match=r"means must have shape \(n, q\)"):
        gaussian_kl_per_dimension(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match=r"delta must be in \[0, 1\)"):
        collapsed_fraction(np.zeros((3, 2)), 0.1, delta=1.0)
    with pytest.raises(ValueError, match="kl must be >= 0"):
        collapsed_fraction(-np.ones((3, 2)), 0.1)
    with pytest.raises(ValueError, match="epsilons must be"):
        collapsed_fraction(np.zeros((3, 2)), np.array([-0.1]))
