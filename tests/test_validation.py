"""Bad numerical inputs are refused up front, with a message naming the argument and the fix."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from lincollapse import linear_decoder_vae, linear_vae, ppca
from lincollapse.deep_vae import Architecture, BatchedGaussianVAE, GaussianVAE, train_batched
from lincollapse.training import maximise

ARCH = Architecture(data_dim=4, latent=2, encoder_hidden=(3,), decoder_hidden=(3,))


def _data(n=6, d=4, seed=0):
    return np.random.default_rng(seed).random((n, d))


def test_train_batched_names_a_wrong_data_width():
    with pytest.raises(ValueError, match=r"x has 5 columns.*data_dim=4"):
        train_batched(_data(d=5), ARCH, [1.0], steps=2, device="cpu", progress=False)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_train_batched_names_non_finite_data_not_divergence(value):
    x = _data()
    x[2, 1] = value
    with pytest.raises(ValueError, match="x contains 1 NaN or infinite") as info:
        train_batched(x, ARCH, [1.0], steps=2, device="cpu", progress=False)
    assert "learning rate" not in str(info.value)


def test_train_batched_refuses_a_single_image_vector():
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        train_batched(_data()[0], ARCH, [1.0], steps=2, device="cpu", progress=False)


@pytest.mark.parametrize("sigma2", [np.inf, np.nan, -1.0, 0.0, "1"])
def test_gaussian_vae_refuses_a_sigma2_that_is_not_finite_positive(sigma2):
    with pytest.raises(ValueError, match="sigma2"):
        GaussianVAE(ARCH, sigma2=sigma2, device="cpu")
    with pytest.raises(ValueError, match="sigma2"):
        BatchedGaussianVAE(ARCH, [1.0, sigma2], device="cpu")


@pytest.mark.parametrize("steps", [np.nan, 2.5, "3", True, -1])
def test_maximise_refuses_a_step_count_that_is_not_a_whole_number(steps):
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        maximise(lambda: -(p**2).sum(), [p], steps=steps)


def test_maximise_accepts_numpy_integers():
    p = torch.nn.Parameter(torch.ones(2))
    history = maximise(lambda: -(p**2).sum(), [p], steps=np.int64(3))
    assert history.steps[-1] == 3


def test_optimal_encoder_refuses_nan_in_w():
    W = np.ones((3, 2))
    W[1, 0] = np.nan
    with pytest.raises(ValueError, match="W contains NaN or infinite"):
        linear_vae.optimal_encoder(W, 1.0)
    with pytest.raises(ValueError, match="W contains NaN or infinite"):
        linear_vae.elbo_gap(W, 1.0)


def test_data_spectrum_of_data_without_columns():
    with pytest.raises(ValueError, match="no columns"):
        ppca.data_spectrum(np.zeros((5, 0)))


def test_data_spectrum_refuses_complex_data_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="complex"):
            ppca.data_spectrum(np.ones((5, 3)) + 1j)


@pytest.mark.parametrize("sigma2", ["1", b"1", True])
def test_sigma2_must_be_a_number(sigma2):
    spectrum = ppca.data_spectrum(_data(n=10, d=3))
    with pytest.raises(ValueError, match="sigma2"):
        ppca.fixed_sigma2_maximiser(spectrum, 1, sigma2)


def test_sigma2_numbers_of_every_kind_still_work():
    spectrum = ppca.data_spectrum(_data(n=10, d=3))
    expected = ppca.fixed_sigma2_maximiser(spectrum, 1, 0.01)
    for sigma2 in (np.float32(0.01), np.float64(0.01), torch.tensor(0.01, dtype=torch.float64)):
        np.testing.assert_allclose(ppca.fixed_sigma2_maximiser(spectrum, 1, sigma2), expected)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda W: linear_vae.optimal_encoder(W, 1.0), r"W must have shape \(d, q\), got \(3,\)"),
        (lambda W: linear_vae.elbo_gap(W, 1.0), r"W must have shape \(d, q\), got \(3,\)"),
        (lambda W: ppca.marginal_covariance(W, 1.0), r"W must have shape \(d, q\), got \(3,\)"),
    ],
)
def test_weights_that_are_not_a_matrix_are_refused_by_one_check(call, message):
    with pytest.raises(ValueError, match=message):
        call(np.ones(3))


def test_marginal_covariance_refuses_as_many_columns_as_rows():
    with pytest.raises(ValueError, match="pPCA needs q < d=3"):
        ppca.marginal_covariance(np.ones((3, 3)), 1.0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: linear_vae.LinearVAE(3, 3), r"need d >= 1 and 0 <= q < d, got d=3, q=3"),
        (lambda: linear_vae.LinearVAE(3, 1.5), "d and q must be integers"),
        (lambda: linear_decoder_vae.LinearEncoder(3, 0), r"need d >= 1 and 1 <= q < d"),
    ],
)
def test_model_dimensions_are_checked_by_one_check(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "value", [0.0, -1.0, np.inf, np.nan, "1", b"1", True, np.bool_(True), 1j, np.ones(2)]
)
def test_one_rule_for_positive_parameters(value):
    from lincollapse import validation

    for check in (
        lambda v: validation.check_positive(v, "sigma2"),
        validation.check_sigma2,
        validation.check_beta,
    ):
        with pytest.raises(ValueError, match="finite positive"):
            check(value)


@pytest.mark.parametrize("value", [0.5, 3, np.float32(0.5), np.int64(2), torch.tensor(0.5)])
def test_positive_parameters_of_every_numeric_kind_pass(value):
    from lincollapse import validation

    validation.check_positive(value, "sigma2")
    assert validation.check_sigma2(value) == validation.check_beta(value) == float(value)
