"""The linear chapters' figure functions (shrunken fast presets) and their plots."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

matplotlib.use("Agg")

from lincollapse.experiments import linear as experiments  # noqa: E402
from lincollapse.experiments import load_all  # noqa: E402
from lincollapse.plotting import linear as plotting  # noqa: E402

LINEAR_FIGURES = {
    "ppca-landscape": "ppca",
    "ppca-collapsed-vs-sigma2": "ppca",
    "likelihood-vs-latent-size": "linear_vae",
    "gram-matrices": "linear_vae",
    "elbo-gap": "linear_vae",
    "collapse-metric": "posterior_collapse",
}


def _close(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_figures_are_registered_with_presets_and_plots():
    figures = load_all()
    for name, chapter in LINEAR_FIGURES.items():
        spec = figures[name]
        assert spec.chapter == chapter
        assert callable(spec.plot_function())
        for preset in ("fast", "book", "paper"):
            assert spec.config.for_preset(preset).preset == preset


def test_landscape_saddle_and_maximum():
    result = experiments.ppca_landscape(experiments.PPCALandscapeConfig.for_preset("fast"))
    saddle, maximum = result.exact
    middle = result.epsilon.size // 2
    assert result.kind == ("saddle", "local maximum")
    assert saddle[-1, middle] > 0 > saddle[middle, -1]  # up along u_2, down along u_3
    assert np.all(maximum <= 1e-12)
    # second-order agreement near the stationary point
    near = np.abs(result.epsilon) <= 0.1
    for exact, predicted in zip(result.exact, result.predicted, strict=True):
        scale = np.abs(predicted[np.ix_(near, near)]).max()
        assert np.abs(exact - predicted)[np.ix_(near, near)].max() < 0.05 * scale
    _close(plotting.plot_ppca_landscape(result))


def test_collapsed_columns_check_matches_the_count():
    config = experiments.CollapsedColumnsConfig.for_preset(
        "fast", q=20, check_sigma2=(1.0, 0.3), check_steps=80, grid_size=9
    )
    result = experiments.ppca_collapsed_columns(config)
    np.testing.assert_array_equal(result.check_trained, result.check_predicted)
    assert np.all(np.diff(result.collapsed) >= 0)
    assert result.collapsed[-1] == 20
    _close(plotting.plot_collapsed_columns(result))


def test_likelihood_curve():
    config = experiments.LikelihoodVsLatentSizeConfig.for_preset(
        "fast", latent_sizes=(0, 10, 20), reference_q=10, steps=100
    )
    curve = experiments.likelihood_vs_latent_size(config)
    assert np.all(np.abs(curve.gap) < 1e-2)
    assert np.all(curve.fixed_sigma2_loglik <= curve.ppca_optimum + 1e-9)
    assert curve.fixed_sigma2_loglik[1] == pytest.approx(curve.ppca_optimum[1])  # q = reference
    assert "total training time" in curve.table()
    _close(plotting.plot_likelihood_vs_latent_size(curve))


def test_gram_matrices_vae_is_diagonal_rotated_ppca_is_not():
    config = experiments.GramMatricesConfig.for_preset("fast", q=10, block=6, steps=100)
    result = experiments.gram_matrices(config)
    assert result.vae.shape == (6, 6)
    assert result.off_diagonal_ratio["vae"] < 1e-2
    assert result.off_diagonal_ratio["ppca_rotated"] > 0.1
    assert result.off_diagonal_ratio["ppca_mle"] < 1e-12
    _close(plotting.plot_gram_matrices(result))


def test_elbo_gap_along_rotation():
    result = experiments.elbo_gap_along_rotation(
        experiments.ElboGapConfig.for_preset("fast", n_angles=9, q=4)
    )
    np.testing.assert_allclose(result.gap, result.gap_formula, atol=1e-9)
    np.testing.assert_allclose(result.log_likelihood, result.optimum, rtol=1e-12)
    at_quarter_turns = np.isclose(np.mod(result.theta, np.pi / 2), 0) | np.isclose(
        np.mod(result.theta, np.pi / 2), np.pi / 2
    )
    assert np.all(np.abs(result.gap[at_quarter_turns]) < 1e-9)
    assert np.all(result.gap[~at_quarter_turns] > 1e-6)
    _close(plotting.plot_elbo_gap(result))


def test_collapse_metric_matches_the_eigenvalue_count():
    config = experiments.CollapseMetricConfig.for_preset(
        "fast", q=20, sigma2_values=(2.0, 1.0), steps=100, n_epsilons=21
    )
    result = experiments.collapse_metric(config)
    assert result.fractions.shape == (2, 21)
    assert np.all(result.predicted > 0)
    index = np.searchsorted(result.epsilons, 0.1)
    np.testing.assert_allclose(result.fractions[:, index], result.predicted, atol=1.0 / 20 + 1e-9)
    _close(plotting.plot_collapse_metric(result))


def test_collapse_metric_reports_the_epsilon_it_reads():
    """The fast preset's 41-point grid over [0, 2] has no 0.01: a request for 0.01 reads 0.05,
    and that is the ε the chapter must print (it used to print 0.01)."""
    import dataclasses

    config = experiments.CollapseMetricConfig.for_preset("fast")
    grid = np.linspace(0.0, config.epsilon_max, config.n_epsilons)
    fractions = np.arange(2 * grid.size, dtype=float).reshape(2, grid.size)
    result = experiments.CollapseMetricResult(
        epsilons=grid, sigma2_values=np.array([0.1, 0.03]), fractions=fractions,
        predicted=np.zeros(2), mean_kl=np.zeros((2, config.q)), elbo_gap=np.zeros(2),
        q=config.q, delta=config.delta,
    )  # fmt: skip
    used, values = result.fraction_at(0.01)
    assert used == pytest.approx(0.05) and used == grid[grid >= 0.01][0]
    np.testing.assert_array_equal(values, fractions[:, 1])
    book = experiments.CollapseMetricConfig.for_preset("book")
    book_grid = np.linspace(0.0, book.epsilon_max, book.n_epsilons)
    on_book_grid = dataclasses.replace(
        result, epsilons=book_grid, fractions=np.zeros((2, book_grid.size))
    )
    assert on_book_grid.fraction_at(0.01)[0] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="above the largest"):
        result.fraction_at(2.5)
