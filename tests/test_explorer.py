"""The pPCA σ² explorer: its computations against independent formulas, and both front ends."""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from lincollapse import explorer, ppca  # noqa: E402

EIGENVALUES = np.array([5.0, 3.0, 2.0, 1.5, 1.0, 0.7, 0.4, 0.2])


def _spectrum(eigenvalues: np.ndarray, seed: int = 0) -> ppca.DataSpectrum:
    basis, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(eigenvalues.size,) * 2))
    return ppca.spectrum_from_covariance((basis * eigenvalues) @ basis.T, n=1)


@pytest.mark.parametrize("sigma2", [0.1, 0.5, 1.0, 1.7, 2.5, 4.0, 6.0])
@pytest.mark.parametrize("q", [1, 3, 5, 7])
def test_collapsed_set_is_eigenvalues_below_sigma2_among_first_q(q, sigma2):
    kept, collapsed = explorer.collapsed_columns(EIGENVALUES, q, sigma2)
    expected = {j for j in range(EIGENVALUES.size) if EIGENVALUES[j] <= sigma2} & set(range(q))
    assert set(collapsed.tolist()) == expected
    assert set(kept.tolist()) == set(range(q)) - expected
    # and it agrees with the zero columns of the fixed-σ² maximiser
    W = ppca.fixed_sigma2_maximiser(_spectrum(EIGENVALUES), q, sigma2)
    assert set(np.flatnonzero(np.linalg.norm(W, axis=0) == 0).tolist()) == expected


def test_boundary_eigenvalue_equal_to_sigma2_counts_as_collapsed():
    _, collapsed = explorer.collapsed_columns(EIGENVALUES, 5, 1.5)
    assert collapsed.tolist() == [3, 4]


@pytest.mark.parametrize("sigma2", [0.3, 1.2, 2.5])
def test_landscape_matches_the_log_likelihood_evaluated_directly(sigma2):
    """The closed form against ppca.average_log_likelihood at moved parameters (float64)."""
    spectrum = _spectrum(EIGENVALUES, seed=3)
    q = 4
    state = explorer.explorer_state(spectrum, sigma2, q, grid_size=7, extent=1.5)
    columns = [j if j < state.probe else None for j in range(q)]
    W = ppca.stationary_point(spectrum, columns, sigma2)
    base = ppca.average_log_likelihood(spectrum, W, sigma2)
    u = spectrum.eigenvectors
    for i, e in enumerate(state.epsilon):
        for k, h in enumerate(state.eta):
            moved = W.copy()
            moved[:, state.probe] = e * u[:, state.probe] + h * u[:, state.second]
            direct = ppca.average_log_likelihood(spectrum, moved, sigma2) - base
            assert state.landscape[i, k] == pytest.approx(direct, abs=1e-10)


def test_kind_follows_the_probed_eigenvalue():
    assert explorer.explorer_state(EIGENVALUES, 0.1, 3).kind == "saddle"  # none collapse
    state = explorer.explorer_state(EIGENVALUES, 2.5, 5)
    assert state.kind == "local maximum" and state.probe == 2
    # a local maximum: every probed move lowers the log-likelihood
    centre = state.landscape.shape[0] // 2
    off_centre = np.ones_like(state.landscape, dtype=bool)
    off_centre[centre, centre] = False
    assert np.all(state.landscape[off_centre] < 0)


def test_static_fallback_renders_without_ipywidgets(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets -> ImportError
    assert explorer._ipywidgets() is None
    assert not explorer.interactive_available()
    fig = explorer.explore_sigma2(EIGENVALUES, q=4)
    assert isinstance(fig, Figure)
    assert len(fig.axes) >= 6  # 2 × 3 panels (+ colour bars)
    fig.canvas.draw()
    plt.close(fig)
    with pytest.raises(ImportError, match="ipywidgets"):
        explorer.explore_sigma2(EIGENVALUES, q=4, interactive=True, display=False)


def test_static_when_the_book_build_runs(monkeypatch):
    monkeypatch.setenv("LINCOLLAPSE_QUIET", "1")
    assert not explorer.interactive_available()
    fig = explorer.explore_sigma2(EIGENVALUES, q=3, sigma2_values=(0.5, 2.5))
    assert isinstance(fig, Figure)
    plt.close(fig)


def test_widget_path_builds_and_follows_the_sliders():
    pytest.importorskip("ipywidgets")
    open_before = set(plt.get_fignums())  # another test on this worker may have left one open
    view = explorer.explore_sigma2(EIGENVALUES, q=4, interactive=True, display=False)
    assert isinstance(view, explorer.SigmaExplorer)
    assert view.q_slider.max == EIGENVALUES.size - 1
    view.sigma2_slider.value = 1.6
    assert view.state.sigma2 == pytest.approx(1.6)
    assert view.state.collapsed.tolist() == [3]  # λ_3 = 2 > 1.6 ≥ λ_4 = 1.5; q = 4
    view.q_slider.value = 6
    assert view.state.collapsed.tolist() == [3, 4, 5]
    # redraws leave no figure open for the inline backend
    assert set(plt.get_fignums()) <= open_before


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="σ²"):
        explorer.collapsed_columns(EIGENVALUES, 3, 0.0)
    with pytest.raises(ValueError, match="q must be"):
        explorer.explore_sigma2(EIGENVALUES, q=0, interactive=False)
    with pytest.raises(ValueError, match="descending"):
        explorer.collapsed_columns(EIGENVALUES[::-1], 3, 1.0)
    with pytest.raises(ValueError, match="distinct"):
        explorer.zero_column_landscape(EIGENVALUES, 1.0, 2, 2, np.zeros(2), np.zeros(2))
