"""An interactive σ² explorer for the pPCA chapter, with a static fallback.

Which columns of the fixed-σ² pPCA maximiser collapse (λ_j ≤ σ², j ≤ q), and what the
log-likelihood looks like around a zero column: a saddle when the best unused eigenvalue exceeds
σ², a local maximum otherwise (chapter *Probabilistic PCA*, theorem ``thm-ppca-stability``).

Computation (:func:`explorer_state`) is separate from drawing (:func:`draw_state`).
:func:`explore_sigma2` shows sliders over σ² (log scale) and q when it runs in a Jupyter kernel
with ``ipywidgets`` installed, and otherwise — no widget library, a plain Python process, or a
non-interactive run such as the book build (``LINCOLLAPSE_QUIET`` or ``LINCOLLAPSE_STATIC`` set) —
returns a static matplotlib figure for a few σ². Widget output never reaches the rendered book:
its JavaScript would have to come from a CDN.

The same mechanism (:class:`SliderFigure`: sliders, one output area, a figure redrawn on every
change; :func:`interactive_available` to choose) drives :func:`explore_ppca_2d`, a σ² slider over
the chapter's two-dimensional example.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from lincollapse import ppca, validation
from lincollapse.plotting.style import ACTIVE, COLLAPSED, OPTIMUM, house_style, new_figure

__all__ = [
    "ExplorerState",
    "PPCA2DExplorer",
    "SigmaExplorer",
    "SliderFigure",
    "STATIC_ENV_VARS",
    "collapsed_columns",
    "draw_state",
    "explore_ppca_2d",
    "explore_sigma2",
    "explorer_state",
    "interactive_available",
    "static_figure",
    "zero_column_landscape",
]

#: Any of these set (non-empty) makes :func:`explore_sigma2` draw the static figure. The book
#: build sets ``LINCOLLAPSE_QUIET`` for its kernels.
STATIC_ENV_VARS = ("LINCOLLAPSE_STATIC", "LINCOLLAPSE_QUIET")


# --------------------------------------------------------------------------------------------
# Computation
# --------------------------------------------------------------------------------------------


def collapsed_columns(
    eigenvalues: np.ndarray | ppca.DataSpectrum, q: int, sigma2: float
) -> tuple[np.ndarray, np.ndarray]:
    """Kept and collapsed columns of the fixed-σ² maximiser (0-based indices j < q).

    Column j is u_j √(λ_j − σ²) when λ_j > σ² (kept) and zero when λ_j ≤ σ² (collapsed); see
    :func:`lincollapse.ppca.fixed_sigma2_maximiser`.
    """
    eigenvalues = ppca.eigenvalues_of(eigenvalues)
    q = validation.check_q(q, eigenvalues)
    sigma2 = validation.check_sigma2(sigma2)
    top = eigenvalues[:q]
    return np.flatnonzero(top > sigma2), np.flatnonzero(top <= sigma2)


def zero_column_landscape(
    eigenvalues: np.ndarray | ppca.DataSpectrum,
    sigma2: float,
    a: int,
    b: int,
    epsilon: np.ndarray,
    eta: np.ndarray,
) -> np.ndarray:
    """Exact change of the average log-likelihood when a zero column becomes ε u_a + η u_b.

    u_a and u_b must be eigenvectors of S that no other column of W uses. With v = ε u_a + η u_b,
    r² = ε² + η², the covariance becomes C + v vᵀ, where v is an eigenvector of C with eigenvalue
    σ², so by the determinant lemma and Sherman–Morrison (as in the proof of
    ``thm-ppca-stability``)

        Δℓ = ½ [ (ε² λ_a + η² λ_b) / (σ² (σ² + r²)) − log(1 + r² / σ²) ],

    whose second-order term is (ppca-perturbation) divided by N.

    Parameters
    ----------
    eigenvalues : ndarray of shape (d,) or DataSpectrum
    sigma2 : float
    a, b : int
        Distinct 0-based eigenvector indices.
    epsilon, eta : ndarray of shape (g,) and (h,)

    Returns
    -------
    ndarray of shape (g, h)
        Nats per data point; ``[i, k]`` is at (ε_i, η_k).
    """
    eigenvalues = ppca.eigenvalues_of(eigenvalues)
    sigma2 = validation.check_sigma2(sigma2)
    d = eigenvalues.size
    if not (0 <= a < d and 0 <= b < d) or a == b:
        raise ValueError(
            f"a and b must be distinct eigenvector indices in 0..{d - 1}, got {a}, {b}"
        )
    e2 = np.square(np.asarray(epsilon, dtype=np.float64))[:, None]
    h2 = np.square(np.asarray(eta, dtype=np.float64))[None, :]
    r2 = e2 + h2
    explained = (e2 * eigenvalues[a] + h2 * eigenvalues[b]) / (sigma2 * (sigma2 + r2))
    return 0.5 * (explained - np.log1p(r2 / sigma2))


@dataclasses.dataclass(frozen=True)
class ExplorerState:
    """What the explorer shows for one (σ², q).

    Attributes
    ----------
    sigma2 : float
    q : int
    eigenvalues : ndarray of shape (d,)
    kept, collapsed : ndarray of int
        0-based columns j < q with λ_j > σ² and with λ_j ≤ σ².
    probe : int
        The zero column probed (0-based): the first collapsed one, or the last column forced to
        zero when none collapses (then the point is a saddle, not the maximiser).
    second : int
        The second unused eigenvector of the landscape: the last one, u_d, whose eigenvalue is
        the smallest (≤ σ² unless σ² is tiny), so that a saddle shows as one.
    kind : str
        ``"saddle"`` if λ_probe > σ², else ``"local maximum"``.
    epsilon, eta : ndarray of shape (g,)
        Coefficients of u_probe and u_second, in units of σ (ε = t σ).
    landscape : ndarray of shape (g, g)
        :func:`zero_column_landscape` on that grid, nats per data point.
    """

    sigma2: float
    q: int
    eigenvalues: np.ndarray
    kept: np.ndarray
    collapsed: np.ndarray
    probe: int
    second: int
    kind: str
    epsilon: np.ndarray
    eta: np.ndarray
    landscape: np.ndarray

    @property
    def n_collapsed(self) -> int:
        """#{j ≤ q : λ_j ≤ σ²}."""
        return int(self.collapsed.size)


def explorer_state(
    eigenvalues: np.ndarray | ppca.DataSpectrum,
    sigma2: float,
    q: int,
    *,
    grid_size: int = 41,
    extent: float = 2.0,
) -> ExplorerState:
    """Kept/collapsed columns for (σ², q) and the landscape around a zero column.

    The stationary point keeps columns u_j √(λ_j − σ²) for j < ``probe`` and has zero columns
    from ``probe`` on; its zero column ``probe`` is moved to ε u_probe + η u_d (both unused: u_d
    is the eigenvector of the smallest eigenvalue), with ε, η ∈ [−extent σ, extent σ].

    Parameters
    ----------
    eigenvalues : ndarray of shape (d,) or DataSpectrum
    sigma2 : float
    q : int
        1 ≤ q < d.
    grid_size : int, default 41
    extent : float, default 2
        Half-width of the grid in units of σ.

    Returns
    -------
    ExplorerState
    """
    eigenvalues = ppca.eigenvalues_of(eigenvalues)
    kept, collapsed = collapsed_columns(eigenvalues, q, sigma2)
    if q < 1:
        raise ValueError("q must be >= 1 to have a column to probe")
    if grid_size < 3 or not (math.isfinite(extent) and extent > 0):
        raise ValueError("grid_size must be >= 3 and extent a positive number")
    probe = int(collapsed[0]) if collapsed.size else q - 1
    second = eigenvalues.size - 1  # > probe because probe < q < d
    scale = math.sqrt(float(sigma2))
    grid = np.linspace(-extent, extent, int(grid_size)) * scale
    return ExplorerState(
        sigma2=float(sigma2),
        q=int(q),
        eigenvalues=eigenvalues,
        kept=kept,
        collapsed=collapsed,
        probe=probe,
        second=second,
        kind="saddle" if eigenvalues[probe] > sigma2 else "local maximum",
        epsilon=grid,
        eta=grid.copy(),
        landscape=zero_column_landscape(eigenvalues, sigma2, probe, second, grid, grid),
    )


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def draw_state(state: ExplorerState, spectrum_ax, landscape_ax, *, colorbar: bool = True) -> None:
    """Draw the spectrum with the σ² line (kept blue, collapsed red) and the landscape."""
    d = state.eigenvalues.size
    shown = min(d, max(2 * state.q, state.q + 20))
    index = np.arange(1, shown + 1)
    values = np.maximum(state.eigenvalues[:shown], np.finfo(float).tiny)
    spectrum_ax.semilogy(index, values, "-", color="0.75", lw=1.0)
    spectrum_ax.plot(
        index[state.q :], values[state.q :], ".", color="0.6", ms=3, label="beyond q (unused)"
    )
    if state.kept.size:
        spectrum_ax.plot(
            state.kept + 1,
            values[state.kept],
            "o",
            color=ACTIVE,
            ms=4,
            label=f"kept: {state.kept.size}",
        )
    if state.collapsed.size:
        spectrum_ax.plot(
            state.collapsed + 1,
            values[state.collapsed],
            "o",
            color=COLLAPSED,
            ms=4,
            label=f"collapsed: {state.collapsed.size}",
        )
    spectrum_ax.axhline(
        state.sigma2, color=OPTIMUM, ls="--", lw=1.2, label=f"σ² = {state.sigma2:.3g}"
    )
    spectrum_ax.axvline(state.q + 0.5, color="0.4", ls=":", lw=1.0)
    spectrum_ax.set_xlabel(f"eigenvalue index j (dotted: q = {state.q})")
    spectrum_ax.set_ylabel(r"$\lambda_j$")
    spectrum_ax.set_title(
        f"σ² = {state.sigma2:.3g}, q = {state.q}: {state.n_collapsed} of {state.q} columns collapse"
    )
    spectrum_ax.legend(loc="best", fontsize=8)

    limit = float(np.abs(state.landscape).max()) or 1.0
    levels = np.linspace(-limit, limit, 21)
    levels[10] = 0.0  # exactly, not −1e-16
    sigma = math.sqrt(state.sigma2)
    filled = landscape_ax.contourf(
        state.eta / sigma, state.epsilon / sigma, state.landscape, levels=levels, cmap="RdBu_r"
    )
    landscape_ax.plot(0, 0, "o", color=OPTIMUM, ms=5)
    a, b = state.probe + 1, state.second + 1
    lam = state.eigenvalues
    landscape_ax.set_title(
        f"zero column {a}: {state.kind}\n(λ_{a} = {lam[a - 1]:.3g}, λ_{b} = {lam[b - 1]:.3g})"
    )
    landscape_ax.set_xlabel(rf"$\eta/\sigma$ (along $u_{{{b}}}$)")
    landscape_ax.set_ylabel(rf"$\varepsilon/\sigma$ (along $u_{{{a}}}$)")
    if colorbar:
        landscape_ax.figure.colorbar(
            filled, ax=landscape_ax, format="%.2g", label="Δ log-likelihood (nats)"
        )


def static_figure(
    eigenvalues: np.ndarray | ppca.DataSpectrum, q: int, sigma2_values: Sequence[float]
) -> Figure:
    """One column per σ²: spectrum with the σ² line (top) and the landscape (bottom)."""
    sigma2_values = [float(s) for s in sigma2_values]
    if not sigma2_values:
        raise ValueError("pass at least one σ² value")
    states = [explorer_state(eigenvalues, s, q) for s in sigma2_values]
    k = len(states)
    with house_style():
        fig, axes = new_figure(2, k, figsize=(4.4 * k, 7.2), squeeze=False)
        for column, state in enumerate(states):
            draw_state(state, axes[0, column], axes[1, column])
    return fig


# --------------------------------------------------------------------------------------------
# Interactive front end
# --------------------------------------------------------------------------------------------


def _ipywidgets():
    """The ``ipywidgets`` module, or ``None`` when it cannot be imported."""
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (not a plain Python process or an IPython terminal)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def interactive_available() -> bool:
    """Whether :func:`explore_sigma2` would show widgets here (see the module docstring)."""
    if any(os.environ.get(name, "").strip() for name in STATIC_ENV_VARS):
        return False
    return _ipywidgets() is not None and _in_kernel()


def _require_ipywidgets():
    widgets = _ipywidgets()
    if widgets is None:
        raise ImportError("the interactive explorer needs ipywidgets (pip install ipywidgets)")
    return widgets


def _log_slider(widgets, value: float, value_range: tuple[float, float], description: str):
    """A FloatLogSlider over ``value_range`` (200 steps), updated when released."""
    low, high = (math.log10(v) for v in value_range)
    return widgets.FloatLogSlider(
        value=value,
        base=10,
        min=low,
        max=high,
        step=(high - low) / 200,
        description=description,
        continuous_update=False,
        readout_format=".3g",
    )


class SliderFigure:
    """Sliders and an output area in which a figure is redrawn whenever a slider moves.

    Subclasses set their sliders and define :meth:`draw`, which takes the sliders' values as
    keyword arguments (named as in ``sliders``) and returns a matplotlib Figure.

    Parameters
    ----------
    sliders : dict of str to ipywidgets widget

    Attributes
    ----------
    widget : ipywidgets.VBox
        What is displayed: the sliders above the output area.
    output : ipywidgets.Output
    """

    def __init__(self, sliders: dict[str, object]) -> None:
        widgets = _require_ipywidgets()
        self.sliders = dict(sliders)
        self.output = widgets.Output()
        self.widget = widgets.VBox([widgets.HBox(list(self.sliders.values())), self.output])
        for slider in self.sliders.values():
            slider.observe(self.redraw, names="value")
        self.redraw()

    def draw(self, **values) -> Figure:  # pragma: no cover - abstract
        raise NotImplementedError

    def redraw(self, _change=None) -> None:
        """Draw the figure for the sliders' values into the output area."""
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig = self.draw(**{name: slider.value for name, slider in self.sliders.items()})
        if _in_kernel():  # outside a kernel there is nowhere to draw (and clear_output prints)
            with self.output:
                self.output.clear_output(wait=True)
                display(fig)
        plt.close(fig)  # shown once, in the output area; never again at the end of the cell

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


class SigmaExplorer(SliderFigure):
    """Sliders over σ² (log scale) and q, and an output area redrawn on every change.

    Attributes
    ----------
    widget : ipywidgets.VBox
        What is displayed.
    sigma2_slider : ipywidgets.FloatLogSlider
    q_slider : ipywidgets.IntSlider
    output : ipywidgets.Output
    state : ExplorerState
        The state drawn last.
    """

    def __init__(
        self,
        eigenvalues: np.ndarray,
        *,
        q: int,
        sigma2: float,
        sigma2_range: tuple[float, float],
        q_max: int,
    ) -> None:
        widgets = _require_ipywidgets()
        self.eigenvalues = eigenvalues
        self.sigma2_slider = _log_slider(widgets, sigma2, sigma2_range, "σ²")
        self.q_slider = widgets.IntSlider(
            value=q, min=1, max=q_max, description="q", continuous_update=False
        )
        self.state: ExplorerState | None = None
        super().__init__({"sigma2": self.sigma2_slider, "q": self.q_slider})

    def draw(self, sigma2: float, q: int) -> Figure:
        """Spectrum and landscape for (σ², q) (:func:`draw_state`)."""
        self.state = explorer_state(self.eigenvalues, sigma2, q)
        with house_style():
            fig, (left, right) = new_figure(1, 2, figsize=(10.5, 3.9))
            draw_state(self.state, left, right)
        return fig


class PPCA2DExplorer(SliderFigure):
    """A σ² slider (log scale) over the two-dimensional pPCA example of chapter *Probabilistic PCA*.

    Attributes
    ----------
    result : lincollapse.experiments.ppca.PPCA2DResult
    sigma2_slider : ipywidgets.FloatLogSlider
    state : lincollapse.experiments.ppca.PPCA2DState
        The model drawn last.
    """

    def __init__(self, result, *, sigma2: float, sigma2_range: tuple[float, float]) -> None:
        widgets = _require_ipywidgets()
        self.result = result
        self.sigma2_slider = _log_slider(widgets, sigma2, sigma2_range, "σ²")
        self.state = None
        super().__init__({"sigma2": self.sigma2_slider})

    def draw(self, sigma2: float) -> Figure:
        """:func:`lincollapse.plotting.linear.plot_ppca_2d` with the model at ``sigma2``."""
        from lincollapse.plotting.linear import plot_ppca_2d

        self.state = self.result.state(sigma2)
        return plot_ppca_2d(self.result, (self.state,))


def explore_sigma2(
    eigenvalues: np.ndarray | ppca.DataSpectrum,
    q: int = 50,
    *,
    sigma2: float | None = None,
    sigma2_values: Sequence[float] | None = None,
    sigma2_range: tuple[float, float] | None = None,
    q_max: int | None = None,
    interactive: bool | None = None,
    display: bool = True,
) -> SigmaExplorer | Figure:
    """Explore which pPCA columns collapse as σ² and q change.

    Parameters
    ----------
    eigenvalues : ndarray of shape (d,) or DataSpectrum
        Descending eigenvalues of the sample covariance.
    q : int, default 50
        Initial (and static) latent dimension, 1 ≤ q < d.
    sigma2 : float, optional
        Initial σ² of the slider (default: the middle static value).
    sigma2_values : sequence of float, optional
        σ² of the static figure's columns (default: λ_q / 3, 3 λ_q and λ_1 / 2: no column,
        a few columns and most columns collapsed).
    sigma2_range : (float, float), optional
        Slider range (default: from λ_{q_max} / 10 to 2 λ_1).
    q_max : int, optional
        Largest q on the slider (default min(d − 1, max(2q, 100))).
    interactive : bool, optional
        ``None`` (default): widgets iff :func:`interactive_available`. ``True`` forces widgets
        (raises ImportError without ipywidgets); ``False`` forces the static figure.
    display : bool, default True
        Display the widgets (interactive mode only; the static figure is shown by the notebook's
        inline backend like any other figure).

    Returns
    -------
    SigmaExplorer or matplotlib Figure
    """
    eigenvalues = ppca.eigenvalues_of(eigenvalues)
    d = eigenvalues.size
    q = validation.check_q(q, eigenvalues)
    if q < 1:
        raise ValueError("q must be >= 1")
    q_max = min(d - 1, max(2 * q, 100)) if q_max is None else int(q_max)
    if not q <= q_max < d:
        raise ValueError(f"need q <= q_max < d = {d}, got q={q}, q_max={q_max}")
    positive = eigenvalues[eigenvalues > 0]
    if positive.size == 0:
        raise ValueError("all eigenvalues are zero: there is nothing to explore")
    if sigma2_values is None:
        anchor = eigenvalues[q - 1] if eigenvalues[q - 1] > 0 else positive[-1]
        sigma2_values = (anchor / 3.0, anchor * 3.0, eigenvalues[0] * 0.5)
    if interactive is None:
        interactive = interactive_available()
    if not interactive:
        return static_figure(eigenvalues, q, sigma2_values)
    if sigma2_range is None:
        floor = eigenvalues[q_max - 1] if eigenvalues[q_max - 1] > 0 else positive[-1]
        sigma2_range = (floor / 10.0, 2.0 * eigenvalues[0])
    low, high = (validation.check_sigma2(v) for v in sigma2_range)
    if not low < high:
        raise ValueError(f"sigma2_range must be increasing, got {sigma2_range}")
    if sigma2 is None:
        sigma2 = sorted(sigma2_values)[len(sigma2_values) // 2]
    start = float(np.clip(validation.check_sigma2(sigma2), low, high))
    explorer = SigmaExplorer(eigenvalues, q=q, sigma2=start, sigma2_range=(low, high), q_max=q_max)
    if display:
        from IPython.display import display as show

        show(explorer.widget)
    return explorer


def explore_ppca_2d(
    result,
    *,
    sigma2: float | None = None,
    sigma2_range: tuple[float, float] | None = None,
    interactive: bool | None = None,
    display: bool = True,
) -> PPCA2DExplorer | Figure:
    """Move σ² over the two-dimensional pPCA example and watch the model and the posterior.

    Parameters
    ----------
    result : lincollapse.experiments.ppca.PPCA2DResult
        From :func:`lincollapse.experiments.ppca.ppca_2d_example`.
    sigma2 : float, optional
        Initial σ² of the slider (default σ²_MLE = λ_2).
    sigma2_range : (float, float), optional
        Slider range (default: the result's σ² sweep).
    interactive : bool, optional
        As in :func:`explore_sigma2`: ``None`` (default) gives widgets iff
        :func:`interactive_available`, else the static figure of the fixed σ² values.
    display : bool, default True
        Display the widgets (interactive mode only).

    Returns
    -------
    PPCA2DExplorer or matplotlib Figure
    """
    if interactive is None:
        interactive = interactive_available()
    if not interactive:
        from lincollapse.plotting.linear import plot_ppca_2d

        return plot_ppca_2d(result)
    if sigma2_range is None:
        sigma2_range = (float(result.sweep_sigma2[0]), float(result.sweep_sigma2[-1]))
    low, high = (validation.check_sigma2(v) for v in sigma2_range)
    if not low < high:
        raise ValueError(f"sigma2_range must be increasing, got {sigma2_range}")
    start = result.sigma2_mle if sigma2 is None else validation.check_sigma2(sigma2)
    explorer = PPCA2DExplorer(
        result, sigma2=float(np.clip(start, low, high)), sigma2_range=(low, high)
    )
    if display:
        from IPython.display import display as show

        show(explorer.widget)
    return explorer
