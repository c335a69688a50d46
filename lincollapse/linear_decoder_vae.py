"""A linear Gaussian decoder with linear, deep-linear or nonlinear encoders, and their ELBO.

The generative model is pPCA's, as in :mod:`lincollapse.linear_vae`: p(z) = N(0, I_q),
p(x | z) = N(W z + μ, σ² I_d). Only the encoder changes. Every encoder maps a batch of images
x (n, d) to the means μ(x) (n, q) and variances s²(x) (n, q) of a diagonal Gaussian
q(z | x) = N(μ(x), diag s²(x)):

``"linear"`` (:class:`LinearEncoder`)
    The linear VAE's encoder, equation (lvae-encoder): μ(x) = V(x − μ), s²(x) = D shared.
``"deep-linear"`` (:class:`DeepLinearEncoder`)
    Linear layers without activations (so μ(x) is still affine in x) and an input-dependent
    log-variance head: log s²(x) affine in x.
``"mlp"`` (:class:`MLPEncoder`)
    ReLU hidden layers, then linear heads for μ(x) and log s²(x).

The ELBO is **encoder-agnostic** (chapter *Linear decoder, varying encoders*, equations
(lde-recon) and (lde-kl), which derives it): per image, with x̃ = x − μ and w_i the columns of W,

    E_q log p(x | z) = −(1/(2σ²)) [‖x̃ − W μ(x)‖² + Σ_i s_i²(x) ‖w_i‖²] − (d/2) log 2πσ²
    KL(q(z | x) ‖ p(z)) = ½ Σ_i [μ_i(x)² + s_i²(x) − 1 − log s_i²(x)],

equations (lvae-recon) and (lvae-kl) of the chapter *The linear VAE* with Vx̃ → μ(x) and
D → diag s²(x). :func:`reconstruction_sample` is the single-sample reparameterised estimate
of the first term (z = μ(x) + s(x) ⊙ ξ, ξ ~ N(0, I)), unbiased for it (chapter *Stochastic vs
analytic ELBO*, equations (selbo-analytic), (selbo-sample)). Everything is float64 (only
:func:`lincollapse.linear_decoder_vae_training.train_vae` may optimise in float32, and it
reports in float64) and averaged over images (nats per image) unless a function says per image.

Training (``train_vae``, the one training function of the chapters *Stochastic vs analytic
ELBO* and *Linear decoder, varying encoders*) is in :mod:`lincollapse.linear_decoder_vae_training`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lincollapse import gaussian, validation
from lincollapse.linear_vae import LinearDecoderParameters

__all__ = [
    "ENCODER_KINDS",
    "ESTIMATORS",
    "DeepLinearEncoder",
    "LinearDecoder",
    "LinearDecoderVAE",
    "LinearEncoder",
    "MLPEncoder",
    "as_points",
    "check_estimator",
    "elbo",
    "kl_per_image",
    "make_encoder",
    "make_vae",
    "reconstruction_analytic",
    "reconstruction_sample",
]

ENCODER_KINDS = ("linear", "deep-linear", "mlp")
ESTIMATORS = ("analytic", "sample")
DTYPE = torch.float64


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def as_points(x: torch.Tensor | np.ndarray, d: int | None = None) -> torch.Tensor:
    """x as a float64 tensor of shape (n, d), finite; errors name the fix."""
    x = torch.as_tensor(x, dtype=DTYPE)
    validation.check_points(x, d)
    return x


def _check_posterior(means: torch.Tensor, variances: torch.Tensor, q: int | None = None) -> None:
    if means.ndim != 2 or means.shape != variances.shape:
        raise ValueError(
            f"encoder means and variances must both have shape (n, q), got "
            f"{tuple(means.shape)} and {tuple(variances.shape)}"
        )
    if q is not None and means.shape[1] != q:
        raise ValueError(
            f"the encoder gives q={means.shape[1]} latents but the decoder has q={q}; "
            "build both with the same latent dimension"
        )
    if not bool((variances.detach() > 0).all()):
        raise ValueError("encoder variances must be > 0; parameterise them by their logarithm")


def _centre_buffer(centre: np.ndarray | torch.Tensor | None, d: int) -> torch.Tensor:
    centre = torch.zeros(d, dtype=DTYPE) if centre is None else torch.as_tensor(centre, dtype=DTYPE)
    if centre.shape != (d,):
        raise ValueError(
            f"centre (the data mean μ) must have shape ({d},), got {tuple(centre.shape)}"
        )
    if not bool(torch.isfinite(centre).all()):
        raise ValueError("centre contains NaN or infinite values")
    return centre


def _gaussian(generator: torch.Generator, *shape: int, scale: float) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=DTYPE) * scale


# --------------------------------------------------------------------------------------------
# Decoder and encoders
# --------------------------------------------------------------------------------------------


class LinearDecoder(LinearDecoderParameters, nn.Module):
    """p(x | z) = N(W z + μ, σ² I_d): pPCA's decoder (chapter *The linear VAE*).

    Parameters
    ----------
    W : Tensor of shape (d, q)
        Initial decoder weights (copied); 1 ≤ q < d.
    centre : array of shape (d,), optional
        μ, a buffer (not trained): the sample mean maximises the ELBO over μ for any other
        parameters (:mod:`lincollapse.linear_vae`). Default zeros.
    sigma2 : float, default 1.0
        Initial (or fixed) σ² > 0.
    learn_sigma2 : bool, default True
    """

    def __init__(
        self,
        W: torch.Tensor,
        *,
        centre: np.ndarray | torch.Tensor | None = None,
        sigma2: float = 1.0,
        learn_sigma2: bool = True,
    ) -> None:
        super().__init__()
        W = torch.as_tensor(W, dtype=DTYPE)
        if W.ndim != 2:
            raise ValueError(f"W must have shape (d, q), got {tuple(W.shape)}")
        validation.check_dimensions(W.shape[0], W.shape[1], min_q=1)
        sigma2 = validation.check_sigma2(sigma2)
        self.W = nn.Parameter(W.clone())
        self.log_sigma2 = nn.Parameter(
            torch.tensor(math.log(sigma2), dtype=DTYPE), requires_grad=learn_sigma2
        )
        self.register_buffer("centre", _centre_buffer(centre, W.shape[0]))


class LinearEncoder(nn.Module):
    """Encoder (a), the linear VAE's: q(z | x) = N(V(x − μ), D), D diagonal and shared.

    Equation (lvae-encoder) of the chapter *The linear VAE*.

    Parameters
    ----------
    d, q : int
    centre : array of shape (d,), optional
        μ, subtracted from x (a buffer).
    init_scale : float, default 0.01
        Standard deviation of the Gaussian initialisation of V; log D starts at 0 (D = I).
    generator : torch.Generator, optional
        Source of the initialisation.

    Attributes
    ----------
    V : Parameter of shape (q, d)
    log_D : Parameter of shape (q,)
    """

    kind = "linear"

    def __init__(
        self,
        d: int,
        q: int,
        *,
        centre: np.ndarray | torch.Tensor | None = None,
        init_scale: float = 1e-2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        validation.check_dimensions(d, q, min_q=1)
        generator = generator or torch.Generator().manual_seed(0)
        self.V = nn.Parameter(_gaussian(generator, q, d, scale=init_scale))
        self.log_D = nn.Parameter(torch.zeros(q, dtype=DTYPE))
        self.register_buffer("centre", _centre_buffer(centre, d))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Means V(x − μ) (n, q) and variances D repeated for each row (n, q)."""
        return self.encode(as_points(x, self.V.shape[1]))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` without input checks (x: float64 tensor of shape (n, d))."""
        means = (x - self.centre) @ self.V.T
        return means, torch.exp(self.log_D).expand_as(means)


class _LayeredEncoder(nn.Module):
    """Hidden layers, then a mean head and a log-variance head; subclasses set the init gain
    of the hidden layers and their activation."""

    kind: str
    gain: float
    default_hidden: tuple[int, ...]

    def __init__(
        self,
        d: int,
        q: int,
        *,
        hidden: Sequence[int] | None = None,
        centre: np.ndarray | torch.Tensor | None = None,
        init_scale: float = 1e-2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        validation.check_dimensions(d, q, min_q=1)
        hidden = self.default_hidden if hidden is None else hidden
        self.body = _layers(d, hidden, generator, gain=self.gain)
        self.mean_head, self.log_variance_head = _heads(_width(d, hidden), q, generator, init_scale)
        self.register_buffer("centre", _centre_buffer(centre, d))
        self.d = d

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Means (n, q) and variances (n, q)."""
        return self.encode(as_points(x, self.d))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` without input checks (x: float64 tensor of shape (n, d))."""
        h = x - self.centre
        for layer in self.body:
            h = self.activation(layer(h))
        return self.mean_head(h), torch.exp(self.log_variance_head(h))

    @staticmethod
    def activation(h: torch.Tensor) -> torch.Tensor:
        return h


class DeepLinearEncoder(_LayeredEncoder):
    """Encoder (b): amortised, deep and linear, with an input-dependent diagonal variance.

    h = A_L(⋯(A_1 (x − μ) + b_1)⋯) + b_L (no activations), μ(x) = B h + b,
    log s²(x) = C h + c. The mean is affine in x, so this family contains encoder (a)
    (C = 0, c = log D) as soon as every width is ≥ q; the variance may depend on x.

    Parameters
    ----------
    d, q : int
    hidden : sequence of int, default (64,)
        Widths of the linear hidden layers (at least one).
    centre : array of shape (d,), optional
    init_scale : float, default 0.01
        Standard deviation of the mean head B; hidden layers start N(0, 1/fan_in), the
        log-variance head at zero (s² = 1, the prior's), biases at zero.
    generator : torch.Generator, optional
    """

    kind = "deep-linear"
    gain = 1.0
    default_hidden = (64,)


class MLPEncoder(_LayeredEncoder):
    """Encoder (c): a ReLU network, μ(x) and log s²(x) linear in its last hidden layer.

    h_0 = x − μ, h_k = ReLU(A_k h_{k−1} + b_k), μ(x) = B h_L + b, log s²(x) = C h_L + c.
    With every width ≥ 2q it can represent encoder (a) exactly, since ReLU(u) − ReLU(−u) = u.

    Parameters
    ----------
    d, q : int
    hidden : sequence of int, default (128, 64)
        ReLU layer widths (reproductions of the paper use (1024, 512)).
    centre : array of shape (d,), optional
    init_scale : float, default 0.01
        Standard deviation of the mean head; hidden layers start N(0, 2/fan_in) (He), the
        log-variance head at zero, biases at zero.
    generator : torch.Generator, optional
    """

    kind = "mlp"
    gain = 2.0
    default_hidden = (128, 64)

    @staticmethod
    def activation(h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h)


def _width(d: int, hidden: Sequence[int]) -> int:
    return int(hidden[-1]) if len(hidden) else d


def _layers(d: int, hidden: Sequence[int], generator, gain: float) -> nn.ModuleList:
    hidden = [int(h) for h in hidden]
    if not hidden or any(h < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty sequence of positive widths, got {hidden}")
    generator = generator or torch.Generator().manual_seed(0)
    layers, fan_in = nn.ModuleList(), d
    for width in hidden:
        layer = nn.Linear(fan_in, width, dtype=DTYPE)
        with torch.no_grad():
            layer.weight.copy_(_gaussian(generator, width, fan_in, scale=math.sqrt(gain / fan_in)))
            layer.bias.zero_()
        layers.append(layer)
        fan_in = width
    return layers


def _heads(width: int, q: int, generator, init_scale: float) -> tuple[nn.Linear, nn.Linear]:
    generator = generator or torch.Generator().manual_seed(0)
    mean_head, log_variance_head = (
        nn.Linear(width, q, dtype=DTYPE),
        nn.Linear(width, q, dtype=DTYPE),
    )
    with torch.no_grad():
        mean_head.weight.copy_(_gaussian(generator, q, width, scale=init_scale))
        for parameter in (mean_head.bias, log_variance_head.weight, log_variance_head.bias):
            parameter.zero_()
    return mean_head, log_variance_head


def make_encoder(
    kind: str,
    d: int,
    q: int,
    *,
    hidden: Sequence[int] | None = None,
    centre: np.ndarray | torch.Tensor | None = None,
    init_scale: float = 1e-2,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """An encoder of ``kind`` in :data:`ENCODER_KINDS` (``hidden`` ignored by ``"linear"``)."""
    validation.check_choice(kind, ENCODER_KINDS, "encoder kind")
    options = dict(centre=centre, init_scale=init_scale, generator=generator)
    if kind == "linear":
        return LinearEncoder(d, q, **options)
    cls = DeepLinearEncoder if kind == "deep-linear" else MLPEncoder
    return cls(d, q, **options) if hidden is None else cls(d, q, hidden=hidden, **options)


# --------------------------------------------------------------------------------------------
# The encoder-agnostic ELBO
# --------------------------------------------------------------------------------------------


def reconstruction_analytic(
    x: torch.Tensor,
    means: torch.Tensor,
    variances: torch.Tensor,
    decoder: LinearDecoder,
) -> torch.Tensor:
    """E_q log p(x | z) for each image, in closed form (differentiable).

    Equation (lvae-recon) with V x̃ → μ(x) and D → diag s²(x):

        −(1/(2σ²)) [‖x̃ − W μ(x)‖² + Σ_i s_i²(x) ‖w_i‖²] − (d/2) log 2πσ²,

    since z = μ + s ⊙ ξ gives E‖x̃ − Wz‖² = ‖x̃ − Wμ‖² + E‖W(s ⊙ ξ)‖² and the last term is
    Σ_i s_i² ‖w_i‖² (the ξ_i are independent with unit variance).

    Parameters
    ----------
    x : Tensor of shape (n, d)
    means, variances : Tensor of shape (n, q)
        The encoder's output for ``x``.
    decoder : LinearDecoder

    Returns
    -------
    Tensor of shape (n,)
    """
    x = as_points(x, decoder.d)
    _check_posterior(means, variances, decoder.q)
    return _reconstruction_analytic(x, means, variances, decoder)


def _reconstruction_analytic(x, means, variances, decoder: LinearDecoder) -> torch.Tensor:
    residual = x - decoder.centre - means @ decoder.W.T
    spread = variances @ decoder.W.square().sum(dim=0)  # Σ_i s_i² ‖w_i‖²
    return _log_gaussian(residual.square().sum(dim=1) + spread, decoder)  # (lvae-recon)


def reconstruction_sample(
    x: torch.Tensor,
    means: torch.Tensor,
    variances: torch.Tensor,
    decoder: LinearDecoder,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Single-sample reparameterised estimate of E_q log p(x | z), for each image.

    z = μ(x) + s(x) ⊙ ξ with one ξ ~ N(0, I_q) per image (drawn from ``generator``), and
    log p(x | z) = −‖x̃ − W z‖² / (2σ²) − (d/2) log 2πσ². Its expectation over ξ is
    :func:`reconstruction_analytic`; it is differentiable in every parameter.

    Returns
    -------
    Tensor of shape (n,)
    """
    x = as_points(x, decoder.d)
    _check_posterior(means, variances, decoder.q)
    return _reconstruction_sample(x, means, variances, decoder, generator)


def _reconstruction_sample(x, means, variances, decoder: LinearDecoder, generator) -> torch.Tensor:
    noise = torch.randn(means.shape, generator=generator, dtype=means.dtype)
    z = means + torch.sqrt(variances) * noise
    residual = x - decoder.centre - z @ decoder.W.T
    return _log_gaussian(residual.square().sum(dim=1), decoder)


def _log_gaussian(squared_error: torch.Tensor, decoder: LinearDecoder) -> torch.Tensor:
    return gaussian.log_likelihood(squared_error, decoder.d, decoder.log_sigma2, decoder.sigma2)


def kl_per_image(means: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag s²) ‖ N(0, I)) for each row, equation (lvae-kl) with a per-image variance.

    ½ Σ_i [μ_i² + s_i² − 1 − log s_i²].

    Returns
    -------
    Tensor of shape (n,)
    """
    _check_posterior(means, variances)
    return gaussian.kl_to_prior(means, variances).sum(dim=1)


def elbo(
    x: torch.Tensor,
    encoder: nn.Module,
    decoder: LinearDecoder,
    *,
    estimator: str = "analytic",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The ELBO averaged over the rows of ``x`` (nats per image), KL analytic.

    ``estimator="analytic"``: :func:`reconstruction_analytic`; ``"sample"``:
    :func:`reconstruction_sample` (one ξ per image). With the linear encoder and
    ``"analytic"`` this is the linear VAE's closed form (lvae-elbo) on the data.
    """
    check_estimator(estimator)
    x = as_points(x, decoder.d)
    means, variances = encoder.encode(x)
    _check_posterior(means, variances, decoder.q)
    return _elbo_from(x, means, variances, decoder, estimator, generator)


def _elbo(x, encoder, decoder, estimator, generator) -> torch.Tensor:
    """:func:`elbo` without checks (the training loop's objective)."""
    means, variances = encoder.encode(x)
    return _elbo_from(x, means, variances, decoder, estimator, generator)


def _elbo_from(x, means, variances, decoder, estimator, generator) -> torch.Tensor:
    if estimator == "analytic":
        reconstruction = _reconstruction_analytic(x, means, variances, decoder)
    else:
        reconstruction = _reconstruction_sample(x, means, variances, decoder, generator)
    return (reconstruction - gaussian.kl_to_prior(means, variances).sum(dim=1)).mean()


def check_estimator(estimator: str) -> None:
    """Raise unless ``estimator`` is one of :data:`ESTIMATORS` (the error names them)."""
    validation.check_choice(estimator, ESTIMATORS, "estimator")


class LinearDecoderVAE(nn.Module):
    """A linear Gaussian decoder with any encoder of :data:`ENCODER_KINDS`.

    Attributes
    ----------
    encoder : nn.Module
        Maps x (n, d) to (means (n, q), variances (n, q)).
    decoder : LinearDecoder
    """

    def __init__(self, encoder: nn.Module, decoder: LinearDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def elbo(
        self,
        x: torch.Tensor,
        estimator: str = "analytic",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """:func:`elbo` of this model on ``x``."""
        return elbo(x, self.encoder, self.decoder, estimator=estimator, generator=generator)

    def objective(
        self, x: torch.Tensor, estimator: str, generator: torch.Generator | None
    ) -> torch.Tensor:
        """:meth:`elbo` without its checks: the objective of a training loop, whose data and
        estimator were checked once before it."""
        return _elbo(x, self.encoder, self.decoder, estimator, generator)

    def gram(self) -> np.ndarray:
        """WᵀW (q, q) as a float64 array: diagonal at the ELBO's global maximum."""
        W = self.decoder.W.detach()
        return (W.T @ W).numpy().copy()


def make_vae(
    kind: str,
    x: np.ndarray | torch.Tensor,
    q: int,
    *,
    seed: int = 0,
    hidden: Sequence[int] | None = None,
    sigma2: float = 1.0,
    learn_sigma2: bool = True,
    init_scale: float = 1e-2,
) -> LinearDecoderVAE:
    """A seeded linear-decoder VAE for data ``x`` (μ = its sample mean).

    W ~ N(0, init_scale²) is drawn first from ``torch.Generator().manual_seed(seed)`` and the
    encoder's parameters next, so every encoder kind gets the **same decoder initialisation**
    for a given seed; for ``"linear"`` the draw order is that of
    :class:`lincollapse.linear_vae.LinearVAE` (W, then V), so both start identical.
    """
    x = as_points(x)
    d = x.shape[1]
    validation.check_dimensions(d, q, min_q=1)
    generator = torch.Generator().manual_seed(int(seed))
    centre = x.mean(dim=0)
    W = _gaussian(generator, d, q, scale=init_scale)
    encoder = make_encoder(
        kind, d, q, hidden=hidden, centre=centre, init_scale=init_scale, generator=generator
    )
    decoder = LinearDecoder(W, centre=centre, sigma2=sigma2, learn_sigma2=learn_sigma2)
    return LinearDecoderVAE(encoder, decoder)
