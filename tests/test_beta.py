"""β-weighted ELBO ⇔ noise βσ², effective σ² of squared-error losses, linear β-VAE, KL annealing.

Every check compares with an independent computation: torch.distributions for the ELBO,
torch.nn.functional.mse_loss for the losses, pPCA's likelihood for the linear optimum, and the
deep-VAE module's own trainer for the constant-β runs.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from lincollapse import beta_elbo as B
from lincollapse import kl_annealing as KA
from lincollapse import linear_beta_vae as L
from lincollapse import linear_vae, ppca, validation
from lincollapse.deep_vae import Architecture, BatchedGaussianVAE, GaussianVAE, train_batched
from lincollapse.results_cache import ResultsCache

matplotlib.use("Agg")
TINY = Architecture(data_dim=12, latent=3, encoder_hidden=(10,), decoder_hidden=(9,))


def _model_and_data(seed: int = 0) -> tuple[GaussianVAE, torch.Tensor, torch.Tensor]:
    model = GaussianVAE(TINY, seed=seed, dtype=torch.float64, device="cpu")
    generator = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(7, TINY.data_dim, generator=generator, dtype=torch.float64)
    eps = torch.randn(7, TINY.latent, generator=generator, dtype=torch.float64)
    return model, x, eps


def _reference_elbo(model: GaussianVAE, x, eps, sigma2: float, beta: float = 1.0):
    """E log N(x; f(z), σ²I) − β KL with torch.distributions, one fixed sample, mean over images."""
    mean, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    recon = model.decode(mean + std * eps)
    log_lik = Normal(recon, math.sqrt(sigma2)).log_prob(x).sum(-1)
    kl = kl_divergence(Normal(mean, std), Normal(torch.zeros_like(mean), 1.0)).sum(-1)
    return (log_lik - beta * kl).mean()


def _package_beta_elbo(model: GaussianVAE, x, eps, sigma2: float, beta: float):
    mean, logvar = model.encode(x)
    recon = model.decode(mean + torch.exp(0.5 * logvar) * eps)
    return B.gaussian_beta_elbo(x, recon, mean, logvar, sigma2, beta)


def _gradient(value: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(value, parameters)
    return torch.cat([g.reshape(-1) for g in grads])


# ------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize(("sigma2", "beta"), [(1.0, 0.3), (0.1, 4.0), (0.02, 1.0), (2.5, 0.05)])
def test_beta_objective_gradient_is_beta_times_elbo_gradient_at_beta_sigma2(sigma2, beta):
    for seed in (0, 1):
        model, x, eps = _model_and_data(seed)
        weighted = _reference_elbo(model, x, eps, sigma2, beta)
        plain = _reference_elbo(model, x, eps, beta * sigma2)
        g_weighted, g_plain = _gradient(weighted, model), _gradient(plain, model)
        torch.testing.assert_close(g_weighted, beta * g_plain, rtol=1e-10, atol=1e-12)
        # the package's β-objective is the same function
        package = _package_beta_elbo(model, x, eps, sigma2, beta)
        torch.testing.assert_close(package, weighted, rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(_gradient(package, model), g_weighted, rtol=1e-10, atol=1e-12)


def test_the_equivalence_fails_at_the_wrong_noise():
    """The check can fail: at noise σ² (not βσ²) the gradients are not proportional."""
    model, x, eps = _model_and_data(0)
    sigma2, beta = 0.5, 3.0
    g_weighted = _gradient(_reference_elbo(model, x, eps, sigma2, beta), model)
    g_wrong = _gradient(_reference_elbo(model, x, eps, sigma2), model)
    scale = (g_weighted @ g_wrong) / (g_wrong @ g_wrong)
    assert (g_weighted - scale * g_wrong).norm() > 1e-3 * g_weighted.norm()


@pytest.mark.parametrize(("sigma2", "beta"), [(1.0, 0.3), (0.1, 4.0), (0.02, 1.0), (2.5, 0.05)])
def test_additive_constant_by_value_and_independent_of_parameters(sigma2, beta):
    d = TINY.data_dim
    expected = -(d / 2) * (
        math.log(2 * math.pi * sigma2) - beta * math.log(2 * math.pi * beta * sigma2)
    )
    assert B.beta_elbo_constant(d, sigma2, beta) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    for seed in (0, 1, 2):  # different parameters, different data: the same constant
        model, x, eps = _model_and_data(seed)
        with torch.no_grad():
            weighted = float(_reference_elbo(model, x, eps, sigma2, beta))
            plain = float(_reference_elbo(model, x, eps, beta * sigma2))
        assert weighted - beta * plain == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_constant_vanishes_at_beta_one_and_effective_noise():
    assert B.beta_elbo_constant(784, 0.3, 1.0) == pytest.approx(0.0, abs=1e-10)
    assert B.effective_sigma2(0.5, 4.0) == 2.0


# ----------------------------------------------------------------------- squared-error losses


def _kl_terms(model, x):
    mean, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    return mean, std, kl_divergence(Normal(mean, std), Normal(torch.zeros_like(mean), 1.0))


@pytest.mark.parametrize("mse_reduction", ["mean", "sum"])
@pytest.mark.parametrize("kl_reduction", ["batchmean", "sum", "mean"])
@pytest.mark.parametrize("beta", [1.0, 0.25])
def test_effective_sigma2_of_mse_losses_matches_torch(mse_reduction, kl_reduction, beta):
    model, x, eps = _model_and_data(3)
    n, d, q = x.shape[0], TINY.data_dim, TINY.latent
    sigma2 = B.loss_effective_sigma2(
        d, mse_reduction=mse_reduction, kl_reduction=kl_reduction, beta=beta, batch_size=n, latent=q
    )
    mean, std, kl = _kl_terms(model, x)
    recon = model.decode(mean + std * eps)
    kl_value = {"batchmean": kl.sum(-1).mean(), "sum": kl.sum(), "mean": kl.mean()}[kl_reduction]
    loss = F.mse_loss(recon, x, reduction=mse_reduction) + beta * kl_value
    g_loss = _gradient(loss, model)

    def negative_elbo_gradient(noise: float) -> torch.Tensor:
        return _gradient(-_reference_elbo(model, x, eps, noise) * n, model)  # −Σ_n ELBO_n

    g_elbo = negative_elbo_gradient(sigma2)
    scale = (g_loss @ g_elbo) / (g_elbo @ g_elbo)
    assert scale > 0
    torch.testing.assert_close(g_loss, scale * g_elbo, rtol=1e-9, atol=1e-12)
    g_wrong = negative_elbo_gradient(2.0 * sigma2)  # the comparison can fail
    scale = (g_loss @ g_wrong) / (g_wrong @ g_wrong)
    assert (g_loss - scale * g_wrong).norm() > 1e-4 * g_loss.norm()


def test_effective_sigma2_of_the_usual_conventions_on_mnist():
    assert B.loss_effective_sigma2(784) == pytest.approx(392.0)  # F.mse_loss (mean) + KL per image
    assert B.loss_effective_sigma2(784, mse_reduction="sum", kl_reduction="sum") == pytest.approx(
        0.5
    )
    assert B.loss_effective_sigma2(784, kl_reduction="mean", latent=200) == pytest.approx(1.96)
    assert B.loss_effective_sigma2(784, beta=4.0) == pytest.approx(1568.0)


def test_effective_sigma2_asks_for_what_it_needs():
    with pytest.raises(ValueError, match="batch_size"):
        B.loss_effective_sigma2(784, mse_reduction="sum", kl_reduction="batchmean")
    with pytest.raises(ValueError, match="latent"):
        B.loss_effective_sigma2(784, kl_reduction="mean")
    with pytest.raises(ValueError, match="mse_reduction"):
        B.loss_effective_sigma2(784, mse_reduction="none")
    with pytest.raises(ValueError, match="kl_reduction"):
        B.loss_effective_sigma2(784, kl_reduction="max")


# ------------------------------------------------------------------------- linear β-VAE


def _synthetic(eigenvalues: np.ndarray, n: int = 4000, seed: int = 0) -> ppca.DataSpectrum:
    """A spectrum with exactly the given eigenvalues (random orthogonal basis)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((eigenvalues.size, eigenvalues.size)))
    covariance = (basis * eigenvalues) @ basis.T
    return ppca.spectrum_from_covariance(covariance, n=n)


EIGENVALUES = np.array([6.0, 4.0, 2.5, 1.6, 1.1, 0.7, 0.4, 0.25, 0.15, 0.1])


@pytest.mark.parametrize("beta", [0.2, 1.0, 2.6, 20.0])
def test_trained_linear_beta_vae_reaches_the_closed_form(beta):
    spectrum, q, sigma2 = _synthetic(EIGENVALUES), 6, 0.5
    fit = L.train_linear_beta_vae(spectrum, q, sigma2, beta, encoder="optimal", steps=200, seed=1)
    expected = np.clip(EIGENVALUES[:q] - beta * sigma2, 0.0, None)  # written out, not imported
    np.testing.assert_allclose(fit.squared_singular_values, expected, atol=1e-6)
    collapsed = int(np.sum(EIGENVALUES[:q] <= beta * sigma2))
    assert int(np.sum(fit.rates < 1e-6)) == collapsed
    noise = beta * sigma2
    expected_kl = 0.5 * np.log(np.maximum(EIGENVALUES[:q], noise) / noise)
    np.testing.assert_allclose(fit.rates, expected_kl, atol=1e-6)
    assert int(L.collapsed_latents(spectrum, q, sigma2, beta).sum()) == collapsed
    np.testing.assert_allclose(
        L.optimal_singular_values(spectrum, q, sigma2, beta) ** 2, expected, atol=1e-12
    )
    np.testing.assert_allclose(L.optimal_rates(spectrum, q, sigma2, beta), expected_kl, atol=1e-12)
    # its value: β × (pPCA log-likelihood at noise βσ², fixed-noise maximiser) + the constant
    W = ppca.fixed_sigma2_maximiser(spectrum, q, beta * sigma2)
    loglik = ppca.average_log_likelihood(spectrum, W, beta * sigma2)
    value = beta * loglik + B.beta_elbo_constant(spectrum.d, sigma2, beta)
    assert fit.objective == pytest.approx(value, abs=1e-7)
    assert fit.optimum == pytest.approx(value, abs=1e-10)
    # the returned model is in data coordinates: its ELBO_β, evaluated by linear_vae's numpy code
    with torch.no_grad():
        W, V, D = fit.model.W.numpy(), fit.model.V.numpy(), fit.model.D.numpy()
    terms = linear_vae.elbo_terms(spectrum, W, V, D, sigma2)
    assert terms.reconstruction - beta * terms.kl == pytest.approx(fit.objective, abs=1e-9)


def test_beta_optimal_encoder_is_a_stationary_point_of_the_beta_objective():
    spectrum, q, sigma2, beta = _synthetic(EIGENVALUES), 4, 0.3, 2.0
    rng = np.random.default_rng(3)
    W = rng.standard_normal((spectrum.d, q))
    V, D = L.beta_optimal_encoder(W, sigma2, beta)
    V = torch.tensor(V, requires_grad=True)
    logD = torch.tensor(np.log(D), requires_grad=True)
    S = torch.tensor(spectrum.covariance)
    value = L.linear_beta_objective(
        S, torch.tensor(W), V, torch.exp(logD), torch.tensor(sigma2, dtype=torch.float64), beta
    )
    grad_V, grad_logD = torch.autograd.grad(value, [V, logD])
    # and moving the encoder away lowers the objective and gives a gradient of order one
    V_away = (V.detach() * 1.1).requires_grad_(True)
    away = L.linear_beta_objective(
        S,
        torch.tensor(W),
        V_away,
        torch.exp(logD.detach()),
        torch.tensor(sigma2, dtype=torch.float64),
        beta,
    )
    (grad_away,) = torch.autograd.grad(away, [V_away])
    assert float(away.detach()) < float(value.detach())
    scale = float(grad_away.abs().max())
    assert scale > 1e-2
    assert grad_V.abs().max() < 1e-12 * scale and grad_logD.abs().max() < 1e-12 * scale


def test_linear_count_on_mnist_is_the_eigenvalue_count():
    from lincollapse.data import covariance_eigenvalues, load_mnist

    eigenvalues = covariance_eigenvalues(load_mnist(1000, seed=0).images)
    for sigma2, beta in [(0.5, 1.0), (0.5, 0.1), (1.0, 3.0)]:
        collapsed = int(L.collapsed_latents(eigenvalues, 200, sigma2, beta).sum())
        assert collapsed == sum(1 for lam in eigenvalues[:200] if lam <= beta * sigma2)
    # the F.mse_loss(mean) + KL convention: σ²_eff = 392 ≫ λ_1, every latent collapses
    assert L.collapsed_latents(eigenvalues, 200, B.loss_effective_sigma2(784), 1.0).all()


# ----------------------------------------------------------------------------- KL annealing


def test_linear_warmup():
    beta = KA.linear_warmup(4)
    assert [beta(t) for t in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert KA.linear_warmup(0)(0) == 1.0


def test_constant_beta_run_is_the_deep_vae_run():
    """β = 1 with fixed σ² is the deep chapter's training: same trajectory, to float64 round-off."""
    x = torch.rand(30, TINY.data_dim, generator=torch.Generator().manual_seed(9)).numpy()
    kwargs = dict(steps=12, lr=5e-3, record_every=4, dtype=torch.float64, device="cpu")
    ours = KA.train_annealed(x, TINY, [KA.RunSpec(0.2, 0, "fixed", 5)], **kwargs)
    theirs = train_batched(x, TINY, [0.2], False, seed=5, **kwargs)
    np.testing.assert_array_equal(ours.steps, theirs.steps)
    np.testing.assert_allclose(ours.elbo, theirs.elbo, rtol=1e-10)
    np.testing.assert_allclose(ours.thresholds, theirs.thresholds, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours.effective_sigma2, 0.2)


def test_annealed_and_optimal_runs_record_their_noise():
    x = torch.rand(30, TINY.data_dim, generator=torch.Generator().manual_seed(9)).numpy()
    specs = [
        KA.RunSpec(0.2, 0, "fixed", 5),
        KA.RunSpec(0.2, 8, "fixed", 5),
        KA.RunSpec(0.2, 0, "optimal", 5),
    ]
    runs = KA.train_annealed(
        x, TINY, specs, steps=12, lr=5e-3, record_every=4, dtype=torch.float64, device="cpu"
    )
    np.testing.assert_allclose(runs.beta[:, 1], [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(runs.effective_sigma2[:, 1], 0.2 * runs.beta[:, 1])
    np.testing.assert_allclose(runs.beta[:, [0, 2]], 1.0)
    # step 0 is before training: all runs share weights and noise, so the same collapse stats
    np.testing.assert_allclose(runs.thresholds[0, 1], runs.thresholds[0, 0])
    assert not np.allclose(runs.elbo[1:, 1], runs.elbo[1:, 0])  # the schedule changed training
    # the optimal run's σ² at step 0 is the mean squared error per pixel (deep_vae's optimum),
    # computed here from an independent model with the same seed and evaluation noise
    model = BatchedGaussianVAE(TINY, [0.2], seeds=5, dtype=torch.float64, device="cpu")
    data = torch.tensor(x, dtype=torch.float64)
    with torch.no_grad():
        mean, logvar = model.encode(data)
        eps = model.draw_noise(mean.shape, mean)
        recon = model.decode(mean + torch.exp(0.5 * logvar) * eps)
        kl = (0.5 * (mean**2 + torch.exp(logvar) - 1 - logvar)).sum(-1).mean()
    from lincollapse.deep_vae import optimal_sigma2

    sigma2_star = optimal_sigma2(x, recon[0].numpy())
    assert runs.effective_sigma2[0, 2] == pytest.approx(sigma2_star, rel=1e-10)
    elbo_star = -0.5 * TINY.data_dim * (1 + math.log(2 * math.pi * sigma2_star)) - float(kl)
    assert runs.elbo[0, 2] == pytest.approx(elbo_star, rel=1e-10)


def test_runs_round_trip_through_arrays():
    x = torch.rand(20, TINY.data_dim, generator=torch.Generator().manual_seed(2)).numpy()
    runs = KA.train_annealed(
        x, TINY, [KA.RunSpec(0.5, 3, "fixed", 1)], steps=4, record_every=2, device="cpu"
    )
    again = KA.AnnealedRuns.from_arrays(runs.arrays())
    assert again.specs == runs.specs
    np.testing.assert_array_equal(again.thresholds, runs.thresholds)


# -------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "x", None])
def test_bad_beta_and_sigma2_are_clear_errors(bad):
    with pytest.raises(ValueError, match="beta"):
        validation.check_beta(bad)
    with pytest.raises(ValueError, match="sigma2"):
        validation.check_sigma2(bad)
    with pytest.raises(ValueError, match="beta"):
        B.beta_elbo_constant(10, 1.0, bad)
    with pytest.raises(ValueError, match="sigma2"):
        B.effective_sigma2(bad, 1.0)
    with pytest.raises(ValueError):
        KA.RunSpec(bad)


def test_other_bad_inputs():
    model, x, eps = _model_and_data(0)
    with pytest.raises(ValueError, match="beta"):
        _package_beta_elbo(model, x, eps, 1.0, 0.0)
    with pytest.raises(ValueError, match="warmup"):
        KA.linear_warmup(-3)
    with pytest.raises(ValueError, match="noise"):
        KA.RunSpec(1.0, noise="learned")
    with pytest.raises(ValueError, match="q"):
        L.train_linear_beta_vae(_synthetic(EIGENVALUES), 0, 1.0, 1.0, encoder="optimal")
    with pytest.raises(ValueError, match="encoder"):
        L.train_linear_beta_vae(_synthetic(EIGENVALUES), 2, 1.0, 1.0, encoder="exact")
    with pytest.raises(ValueError, match="run"):
        KA.train_annealed(np.zeros((3, 12)), TINY, [], steps=2)


# ------------------------------------------------------------------------- the chapter's figures


def test_fast_figures_compute_and_plot(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from lincollapse.experiments import beta as experiments
    from lincollapse.experiments import kl_annealing_figures as annealing
    from lincollapse.experiments import load_all
    from lincollapse.experiments.kl_annealing_runs import AnnealingConfig
    from lincollapse.plotting import beta as plotting

    figures = load_all()
    for name in ("linear-beta-collapse", "kl-annealing"):
        assert figures[name].chapter == "beta_annealing"
        assert callable(figures[name].plot_function())
    config = experiments.MnistLinearBetaConfig.for_preset("fast")
    linear = experiments.linear_beta_collapse(config)
    shape = (len(config.betas), config.latent)
    assert linear.trained_squared_singular_values.shape == shape
    assert linear.optimum_squared_singular_values.shape == shape
    np.testing.assert_array_equal(linear.predicted_collapsed, linear.trained_collapsed)
    fig = plotting.plot_linear_beta(linear)
    assert isinstance(fig, Figure)
    plt.close(fig)  # leave no figure open for later tests

    cache = ResultsCache(tmp_path)
    annealing_config = AnnealingConfig.for_preset("fast")
    result = annealing.kl_annealing(annealing_config, cache=cache, device="cpu")
    runs = len(annealing_config.specs())
    records = annealing_config.steps // annealing_config.record_every + 1
    assert result.fraction.shape == (records, runs)
    assert result.runs.thresholds.shape == (records, runs, annealing_config.latent)
    assert np.all((result.fraction >= 0) & (result.fraction <= 1))
    assert np.all(np.isfinite(result.final_elbo))
    assert result.annealing_effect.shape == (len(annealing_config.seeds),)
    assert "trained now" in result.provenance
    again = annealing.kl_annealing(annealing_config, cache=cache, device="cpu")
    assert "results cache" in again.provenance
    np.testing.assert_array_equal(again.fraction, result.fraction)
    fig = plotting.plot_annealing(result)
    assert isinstance(fig, Figure)
    plt.close(fig)  # leave no figure open for later tests


def test_house_style_keeps_interactive_mode_switched_on_inside_it():
    """A notebook's inline backend turns interactive mode on inside the first figure's context;
    leaving the context must not turn it off, or no later figure is displayed."""
    import matplotlib as mpl

    from lincollapse.plotting.style import house_style

    before = mpl.is_interactive()
    try:
        mpl.interactive(False)
        with house_style():
            mpl.interactive(True)  # what loading the inline backend does
        assert mpl.is_interactive()
    finally:
        mpl.interactive(before)


def test_half_collapsed_step_counts_from_after_the_initial_drop():
    """Step 0 starts collapsed (tiny encoder outputs); the step wanted is the return above ½."""
    from types import SimpleNamespace

    from lincollapse.experiments.kl_annealing_figures import AnnealingResult

    fraction = np.array(
        [[0.9, 0.9, 0.9], [0.1, 0.6, 0.0], [0.4, 0.7, 0.0], [0.5, 0.2, 0.0], [0.8, 0.6, 0.0]]
    )
    fake = SimpleNamespace(fraction=fraction, runs=SimpleNamespace(steps=np.arange(5) * 100))
    steps = AnnealingResult.half_collapsed_steps(fake)
    np.testing.assert_array_equal(steps[:2], [300.0, 400.0])
    assert math.isnan(steps[2])


def test_long_annealing_runs_continue_the_book_runs(tmp_path, monkeypatch):
    """The fast preset's long runs are trained; the preset's runs are their first steps."""
    import matplotlib.pyplot as plt

    from lincollapse.experiments import kl_annealing_figures as experiments
    from lincollapse.experiments import kl_annealing_runs as runs
    from lincollapse.plotting import beta as plotting

    monkeypatch.setattr(runs, "RESULTS_DIR", tmp_path / "no-results")
    cache = ResultsCache(tmp_path / "cache")
    config = runs.AnnealingConfig.for_preset("fast")
    absent = experiments.kl_annealing_convergence(
        config, cache=cache, device="cpu", train_long=False
    )
    assert not absent.long_available and "not found" in absent.provenance
    assert "not in the results cache" in absent.provenance and math.isnan(absent.gap["constant"])
    plt.close(plotting.plot_annealing_convergence(absent))

    study = experiments.kl_annealing_convergence(config, cache=cache, device="cpu")
    long = config.long_config()
    assert study.long.steps[-1] == long.steps == config.long_steps
    assert len(study.long.specs) == 3 * len(config.long_seeds)
    # Same weights, noise and constant learning rate: the book runs are the long runs' start.
    book, rows = study.book.runs, np.flatnonzero(np.isin(study.long.steps, study.book.runs.steps))
    for r, spec in enumerate(book.specs):
        s = study.long.specs.index(spec)
        np.testing.assert_allclose(study.long.elbo[rows, s], book.elbo[:, r], rtol=1e-5)
    assert study.prefix_difference <= 1 / config.latent
    for kind in experiments.KINDS:
        end = study.long_fraction[-1, study.long_kind == kind].mean()
        assert study.long_end[kind] == pytest.approx(end)
        assert study.gap[kind] == pytest.approx(study.book_end[kind] - end)
        assert study.agrees(kind) == (abs(study.gap[kind]) <= study.tolerance)
    assert study.elbo_advantage.shape == (long.steps // long.record_every + 1, 2)
    constant = study.long_kind == "constant"
    annealed = study.long_kind == "annealed"
    np.testing.assert_allclose(
        study.elbo_advantage[-1], study.long.elbo[-1, annealed] - study.long.elbo[-1, constant]
    )
    end = study.long_end["constant"]
    assert study.long_fraction_at("constant", long.steps) == pytest.approx(end)
    with pytest.raises(ValueError, match="no record at step"):
        study.long_fraction_at("constant", 7)
    again = experiments.kl_annealing_convergence(
        config, cache=cache, device="cpu", train_long=False
    )
    assert "results cache" in again.provenance  # cached, not retrained
    plt.close(plotting.plot_annealing_convergence(study))


def test_shipped_annealing_long_runs_are_current():
    """The committed long runs match the book preset and the code now (else: regenerate them
    with ``python -m lincollapse.experiments.beta --long --preset book --write-reference``)."""
    from lincollapse.experiments import kl_annealing_runs as experiments
    from lincollapse.references import load_shipped, verify_behaviour

    config = experiments.AnnealingConfig.for_preset("book")
    long = config.long_config()
    stem = experiments.annealing_reference_path("book")
    arrays, meta = load_shipped(
        stem, experiments.annealing_key(long, experiments.data_for(long)[1])
    )
    verify_behaviour(stem, experiments.annealing_probe(long))
    assert stem.with_suffix(".npz").stat().st_size + stem.with_suffix(".json").stat().st_size < 1e6
    assert arrays["steps"][-1] == config.long_steps
    assert arrays["thresholds"].shape[1:] == (3 * len(config.long_seeds), config.latent)
    assert meta["info"]["command"].startswith("python -m lincollapse.experiments.beta")


def test_differing_latents_counts_the_symmetric_difference_not_the_fraction():
    """Equal collapsed fractions can hide different collapsed sets (chapter *β, σ² and KL
    annealing*): two runs of a seed with 2 of 4 latents collapsed each, sharing one of them,
    differ in 2 latents although the fraction difference is 0."""
    from lincollapse.experiments.kl_annealing_figures import differing_latents

    specs = [
        KA.RunSpec(0.1, 0, "fixed", 0),
        KA.RunSpec(0.1, 5, "fixed", 0),
        KA.RunSpec(0.1, 0, "optimal", 0),
    ]
    thresholds = np.array(
        [[[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]]
    )  # one record, (k, R, q): constant collapses {0, 1}, annealed {0, 2}
    runs = KA.AnnealedRuns(
        specs=specs,
        steps=np.array([10]),
        elbo=np.zeros((1, 3)),
        beta=np.ones((1, 3)),
        effective_sigma2=np.full((1, 3), 0.1),
        thresholds=thresholds,
        kl_mean=thresholds,
        seconds=0.0,
        delta=0.01,
    )
    fraction = runs.collapsed_fraction(0.01)[-1]
    assert fraction[0] == fraction[1] == 0.5
    np.testing.assert_array_equal(differing_latents(runs, 0.01, [0]), [2])


def test_interrupted_annealing_resumes_with_its_warm_up_where_it_stopped(tmp_path, monkeypatch):
    """Killed during its second chunk and rerun, the annealing runs end bit for bit where one
    uninterrupted training ends: weights, noise, Adam's moments and the warm-up's step count
    (β depends on it) all come back."""
    import lincollapse.training_state as training_state

    x = torch.rand(30, TINY.data_dim, generator=torch.Generator().manual_seed(9)).numpy()
    specs = [KA.RunSpec(0.2, 30, "fixed", 5), KA.RunSpec(0.2, 0, "optimal", 5)]
    kwargs = dict(steps=40, lr=5e-3, record_every=5, device="cpu")
    whole = KA.train_annealed(x, TINY, specs, **kwargs)
    state = tmp_path / "runs.pt"
    real, calls = training_state.maximise, []

    def interrupted(*a, **k):
        calls.append(k["start_step"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(training_state, "maximise", interrupted)
    with pytest.raises(KeyboardInterrupt):
        KA.train_annealed(x, TINY, specs, checkpoint=state, checkpoint_every=15, **kwargs)
    assert state.is_file() and calls == [0, 15]  # stopped during the second chunk
    monkeypatch.setattr(training_state, "maximise", real)
    resumed = KA.train_annealed(x, TINY, specs, checkpoint=state, checkpoint_every=15, **kwargs)
    assert not state.exists()
    for name in ("steps", "elbo", "beta", "effective_sigma2", "thresholds", "kl_mean"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name), err_msg=name)
