"""The diagnosis chapter's measurements, against independent formulas and both ways.

Oracles written here: the torch order-statistic implementation of the collapse metric
(``lincollapse.deep_vae``), eigenvalues from ``numpy.linalg.eigvalsh``, the linear count
max(0, q − #{λ_j > σ²})/q, d/2 for PyTorch's default ``mse_loss``, and the pPCA log-likelihood from
``torch.distributions.LowRankMultivariateNormal`` for the ELBO with the best encoder.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lincollapse import collapse
from lincollapse.data import load_mnist
from lincollapse.experiments import diagnosis, diagnosis_runs

CONFIG = diagnosis.DiagnosisConfig.for_preset("fast")


def _eigenvalues(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0)
    return np.sort(np.linalg.eigvalsh(centred.T @ centred / x.shape[0]))[::-1]


def _count(eigenvalues: np.ndarray, sigma2: float, q: int) -> float:
    return max(0, q - int(np.sum(eigenvalues > sigma2))) / q


# ------------------------------------------------------------------ encoder_collapsed_fraction


def test_encoder_collapsed_fraction_both_ways_and_shared_variances():
    n, q = 100, 4
    prior = collapse.encoder_collapsed_fraction(np.zeros((n, q)), np.ones(q), [1e-9, 0.01])
    np.testing.assert_array_equal(prior, [1.0, 1.0])  # the prior: collapsed at every ε > 0
    informative = np.where(np.arange(n)[:, None] % 2 == 0, 3.0, -3.0) * np.ones((n, q))
    np.testing.assert_array_equal(
        collapse.encoder_collapsed_fraction(informative, np.ones(q), [0.01, 1.0]), [0.0, 0.0]
    )
    half = np.concatenate([np.zeros((n, 2)), informative[:, :2]], axis=1)
    assert float(collapse.encoder_collapsed_fraction(half, np.ones(q), 0.01)) == 0.5
    with pytest.raises(ValueError, match="log-variances"):
        collapse.encoder_collapsed_fraction(np.zeros((n, q)), np.full(q, -1.0), 0.01)


# ------------------------------------------------------------------------------- noise


@pytest.fixture(scope="module")
def noise() -> diagnosis.NoiseCheck:
    return diagnosis.noise_check(CONFIG)


@pytest.fixture(scope="module")
def train_images() -> np.ndarray:
    return diagnosis_runs.split_images(CONFIG.n, CONFIG.n_heldout, CONFIG.seed)[0]


def test_noise_of_each_loss_and_the_linear_count(noise, train_images):
    assert noise.sigma2[0] == pytest.approx(784 / 2)  # mse_loss(mean) + batch-mean KL: d/2
    assert noise.sigma2[1] == pytest.approx(1 / 2)  # both summed: 1/2
    eigenvalues = _eigenvalues(train_images)
    assert noise.lambda_1 == pytest.approx(eigenvalues[0], rel=1e-10)
    for k, sigma2 in enumerate(noise.sigma2):
        assert noise.linear[k] == pytest.approx(_count(eigenvalues, sigma2, CONFIG.latent))
    assert np.all(noise.measured[0] == 1.0)  # every latent collapsed at σ² = d/2
    assert noise.measured[1, 0] == pytest.approx(noise.linear[1])  # the count, measured
    assert 0 < noise.linear[1] < 1  # the example is a partial collapse
    assert np.all(noise.measured[2] == 0.0)  # learned σ²: nothing collapses


def test_learned_noise_is_the_mle_and_the_reconstruction_error(noise, train_images):
    eigenvalues = _eigenvalues(train_images)
    # σ²_MLE(q) is the mean discarded eigenvalue; the run stops at a stated budget, so 2 %
    assert noise.sigma2[2] == pytest.approx(eigenvalues[CONFIG.latent :].mean(), rel=0.02)
    assert noise.optimal_sigma2[2] == pytest.approx(noise.sigma2[2], rel=0.05)  # one sample of z
    # the collapsed model reconstructs the mean image: its error is the variance per pixel
    assert noise.optimal_sigma2[0] == pytest.approx(eigenvalues.sum() / 784, rel=0.02)


def test_noise_table_and_glue_values(noise):
    table = noise.table()
    assert all(label in table for label in noise.labels)
    values = noise.glue_values()
    assert values["noise_ratio_0"] == pytest.approx(noise.sigma2[0] / noise.lambda_1)
    assert values["noise_excess_0"] > 1000
    assert all(np.isfinite(v) for v in values.values())


# ----------------------------------------------------------------------------- encoder


def test_encoder_check_blames_the_lagging_encoder_only(train_images):
    check = diagnosis.encoder_check(CONFIG)
    np.testing.assert_array_equal(check.blames_encoder(), [False, True])
    assert check.measured[0] == check.best  # the learned encoder collapses what the decoder does
    assert check.measured[1] - check.best == pytest.approx(CONFIG.lagging / CONFIG.latent)
    assert check.best_elbo >= check.elbo.max() - 1e-9
    assert check.best_elbo - check.elbo[0] < 1e-3 < 0.1 < check.best_elbo - check.elbo[1]
    # the best encoder's ELBO is log p − ½(Σ log M_ii − log det M) (lvae-elbo-gap), with log p
    # from torch's LowRankMultivariateNormal and the gap written out here
    trained = diagnosis_runs.run_for(CONFIG, check.sigma2)
    W = trained.model.numpy_parameters()["W"]
    x = torch.as_tensor(train_images)
    marginal = torch.distributions.LowRankMultivariateNormal(
        x.mean(0), torch.as_tensor(W), torch.full((x.shape[1],), check.sigma2, dtype=torch.float64)
    )
    M = W.T @ W + check.sigma2 * np.eye(W.shape[1])
    gap = 0.5 * (np.log(np.diag(M)).sum() - np.linalg.slogdet(M)[1])
    assert check.best_elbo == pytest.approx(float(marginal.log_prob(x).mean()) - gap, abs=1e-7)
    assert "encoder" in check.table() and "decoder (the model)" in check.table()


# --------------------------------------------------------------------------- optimiser


def test_optimiser_check_converged_runs_agree_and_the_early_one_does_not():
    check = diagnosis.optimiser_check(CONFIG)
    converged = check.converged()
    np.testing.assert_array_equal(converged, [True] * len(CONFIG.seeds) + [False])
    assert np.all(check.gap[converged] < CONFIG.converged_gap) and check.gap[~converged][0] > 1.0
    assert np.all(check.gap > -1e-8)  # nothing beats the fixed-σ² maximum
    assert np.all(check.measured[converged, 0] == check.linear)  # the global maximum's count
    values = check.glue_values()
    assert values["optimiser_seeds"] == len(CONFIG.seeds)
    assert values["optimiser_early_measured"] < values["optimiser_converged_measured"]


# --------------------------------------------------------------------------- data size


def test_data_size_check_against_numpy():
    check = diagnosis.data_size_check(CONFIG)
    for size, rank, above, linear in zip(
        check.sizes, check.rank, check.above, check.linear, strict=True
    ):
        x = load_mnist(int(size), seed=CONFIG.seed).images
        eigenvalues = _eigenvalues(x)
        assert rank == np.linalg.matrix_rank(x - x.mean(0)) and rank <= size - 1
        assert above == int(np.sum(eigenvalues > check.sigma2))
        assert linear == pytest.approx(_count(eigenvalues, check.sigma2, check.latent))
    assert np.all(np.diff(check.above) > 0)  # more images, more directions above the noise
    assert check.train_measured == check.heldout_measured  # a linear VAE does not memorise
    assert "rank of S" in check.table()


def test_bad_loss_conventions_raise():
    with pytest.raises(ValueError, match="mse_reduction"):
        diagnosis.noise_check(dataclasses.replace(CONFIG, conventions=(("median", "sum"),)))


# ------------------------------------------------------------------ the reader's shipped models


def test_reader_runs_are_every_model_the_steps_train_and_round_trip_bitwise(monkeypatch, tmp_path):
    """`reader_runs` names exactly the models the four steps train (so the reader preset trains
    none of them when they are shipped); a model written and read back computes the same."""
    trained = {}
    original = diagnosis_runs.train_run.__wrapped__

    def recording(*args, **kwargs):
        run = original(*args, **kwargs)
        trained[tuple(sorted(diagnosis_runs.run_key(*args, **kwargs).items(), key=str))] = run
        return run

    monkeypatch.setattr(diagnosis_runs, "train_run", recording)
    for step in (diagnosis.noise_check, diagnosis.encoder_check, diagnosis.optimiser_check):
        step(CONFIG)
    diagnosis.data_size_check(CONFIG)
    expected = {tuple(sorted(k.items(), key=str)) for k in diagnosis_runs.reader_runs(CONFIG)}
    assert set(trained) == expected and len(expected) == 5

    key, run = next(iter(trained.items()))
    store = diagnosis_runs.reader_store(tmp_path)
    store.save(dict(key), diagnosis_runs.run_arrays(run))
    arrays, _ = store.load(dict(key))
    back = diagnosis_runs.run_from_arrays(arrays, dict(key))
    assert (back.gap, back.steps) == (run.gap, run.steps)
    x = load_mnist(50, seed=3).images
    for a, b in zip(
        diagnosis_runs.encode(back.model, x), diagnosis_runs.encode(run.model, x), strict=True
    ):
        assert a.tobytes() == b.tobytes()
    for name, value in run.model.numpy_parameters().items():
        np.testing.assert_array_equal(back.model.numpy_parameters()[name], value)


def test_full_rerun_prints_its_cost_and_waits(capsys):
    assert diagnosis.full_rerun() == {}
    out = capsys.readouterr().out
    assert "Expected time for the whole chapter" in out and "RUN_FULL = True" in out
