r"""Deep Gaussian VAE with a scalar observation noise σ², fixed or learned.

The model (the paper's §6 experiment) is

.. math::

    q_φ(z \mid x) = N\bigl(μ_φ(x), \operatorname{diag} s^2_φ(x)\bigr), \qquad
    p(z) = N(0, I_q), \qquad p_θ(x \mid z) = N\bigl(f_θ(z), σ^2 I_d\bigr),

with MLP encoder and decoder (ReLU hidden layers, linear outputs; the encoder has a mean head
and a log-variance head). The objective is the ELBO, in **nats per image**,

.. math::

    \mathrm{ELBO}(x) = E_{q(z|x)}[\log N(x; f(z), σ^2 I)] − KL(q(z|x) \,\|\, N(0, I))
    = −\frac{\|x − f(z)\|^2}{2σ^2} − \frac d2 \log(2πσ^2) − KL,

with the expectation estimated by **one** reparameterised sample z = μ + s·ε per image and the
KL in closed form, ½ Σ_i (μ_i² + s_i² − 1 − log s_i²). Loss convention: the reconstruction
term is *summed* over the d pixels, the ELBO is *averaged* over the images of the (full) batch,
and :func:`lincollapse.training.maximise` maximises it (the loss is its negative). For fixed σ²
the ELBO equals, up to a constant, −(1/(2σ²))·(‖x − f‖² + 2σ²·KL): σ² is the weight of the KL
against the squared reconstruction error, which is why it controls posterior collapse. With σ²
learned (as log σ²) and f fixed, the optimum is σ²* = mean‖x − f‖²/d (:func:`optimal_sigma2`).

:class:`GaussianVAE` is one run. R runs (one per σ²) train together in one of two layouts
with the same interface: :class:`BatchedGaussianVAE` (stacked weights, one ``torch.baddbmm``
per layer: best on a GPU and on one CPU thread) and :class:`LoopedGaussianVAE` (R ordinary
modules in turn: best on a multi-threaded CPU); :func:`choose_layout` picks one. Given the same
seeds all of them compute the same numbers up to float round-off (checked in the tests).
Each run owns three ``torch.Generator`` streams derived from its seed: initialisation,
training noise, and evaluation noise (used when gradients are off, so that recording
progress does not change the training trajectory).

Collapse is measured from the encoder's (mean, log-variance): see :func:`kl_from_logvar` and
:func:`lincollapse.collapse.collapse_thresholds`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lincollapse import gaussian, validation
from lincollapse.collapse import collapse_thresholds, collapsed_fraction_from_thresholds
from lincollapse.training import Recorder
from lincollapse.training_state import CHECKPOINT_EVERY, load_state, maximise_in_chunks

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


class UnknownDeviceError(ValueError):
    """A device name that is not one of :data:`DEVICE_CHOICES`, or is not available here."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` → ``cuda`` if available else ``cpu``; otherwise validate the name."""
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str):
        raise UnknownDeviceError(f"device must be a string, got {device!r}")
    name = device.strip().lower()
    valid = ", ".join(DEVICE_CHOICES)
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UnknownDeviceError(
                f"device {device!r} asked for, but CUDA is not available on this machine; "
                f"use device='cpu' or 'auto' (valid devices: {valid})"
            )
        if ":" in name and int(name[5:]) >= torch.cuda.device_count():
            raise UnknownDeviceError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
        return torch.device(name)
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UnknownDeviceError(f"device 'mps' is not available here (valid: {valid})")
        return torch.device("mps")
    raise UnknownDeviceError(f"unknown device {device!r}; valid devices are {valid}")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Layer widths: encoder d → hidden… → (mean, log-variance) of size q; decoder q → … → d."""

    data_dim: int = 784
    latent: int = 200
    encoder_hidden: tuple[int, ...] = (1024, 512)
    decoder_hidden: tuple[int, ...] = (512, 1024)

    @property
    def encoder_shapes(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of each encoder layer; the last is the joint (mean, logvar) head."""
        widths = [self.data_dim, *self.encoder_hidden]
        shapes = list(zip(widths[:-1], widths[1:], strict=True))
        return shapes + [(widths[-1], 2 * self.latent)]

    @property
    def decoder_shapes(self) -> list[tuple[int, int]]:
        widths = [self.latent, *self.decoder_hidden, self.data_dim]
        return list(zip(widths[:-1], widths[1:], strict=True))

    def forward_flops(self, n: int) -> int:
        """Multiply-add flops (2 per MAC) of the GEMMs of one forward pass on ``n`` images."""
        macs = sum(a * b for a, b in self.encoder_shapes + self.decoder_shapes)
        return 2 * n * macs

    def step_flops(self, n: int) -> int:
        """Flops of one training step ≈ 3 × forward (forward, grad wrt inputs, grad wrt weights).

        The first layer needs no gradient with respect to the data, so this overcounts by
        2·n·d·h₁ (≈ 9 % at the paper's widths); elementwise work is ignored.
        """
        return 3 * self.forward_flops(n)


def _uniform_init(
    fan_in: int, fan_out: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's default ``nn.Linear`` initialisation, U(−1/√fan_in, 1/√fan_in), as (in, out)."""
    bound = 1.0 / math.sqrt(fan_in)
    weight = (torch.rand(fan_in, fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    bias = (torch.rand(fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return weight, bias


def _initial_weights(arch: Architecture, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Initial (weight (in, out), bias (out,)) of every layer, encoder then decoder, float64."""
    generator = torch.Generator().manual_seed(int(seed))
    return [_uniform_init(a, b, generator) for a, b in arch.encoder_shapes + arch.decoder_shapes]


def _log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, σ² I) summed over the pixels; ``log_sigma2`` broadcasts against
    ``x.shape[:-1]`` (a scalar, or one value per run (R, 1))."""
    return gaussian.log_likelihood((x - mean).pow(2).sum(-1), x.shape[-1], log_sigma2)


def kl_from_logvar(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ_i, s_i²) ‖ N(0, 1)) per latent from the encoder's (mean, log-variance)."""
    return gaussian.kl_to_prior(mean, torch.exp(logvar), logvar)


def optimal_sigma2(
    x: torch.Tensor | np.ndarray, reconstruction: torch.Tensor | np.ndarray
) -> float:
    """The σ² maximising the Gaussian likelihood for a fixed decoder output: mean‖x − x̂‖²/d."""
    x = torch.as_tensor(x, dtype=torch.float64)
    reconstruction = torch.as_tensor(reconstruction, dtype=torch.float64)
    return float((x - reconstruction).pow(2).sum(-1).mean() / x.shape[-1])


class GaussianVAE(nn.Module):
    """One deep Gaussian VAE (see the module docstring for the model and the loss convention).

    Parameters
    ----------
    arch : Architecture
        Widths.
    sigma2 : float
        Observation noise σ² (initial value when learned).
    learn_sigma2 : bool
        Learn log σ² with the network weights.
    seed : int
        Seeds the initialisation (``seed``), training noise (``seed + 1``) and evaluation noise
        (``seed + 2``) generators, exactly as run r of :class:`BatchedGaussianVAE`.
    dtype, device
        Parameter dtype (float32 by default) and device (``"auto"``: cuda if available).
    """

    def __init__(
        self,
        arch: Architecture = Architecture(),
        sigma2: float = 1.0,
        learn_sigma2: bool = False,
        seed: int = 0,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = "auto",
    ) -> None:
        validation.check_positive(sigma2, "sigma2")
        super().__init__()
        if not sigma2 > 0:
            raise ValueError(f"sigma2 must be positive, got {sigma2}")
        self.arch = arch
        self.device_ = resolve_device(device)
        init = _initial_weights(arch, seed)
        n_enc = len(arch.encoder_shapes)
        self.encoder = nn.ModuleList(self._linear(w, b, dtype) for w, b in init[:n_enc])
        self.decoder = nn.ModuleList(self._linear(w, b, dtype) for w, b in init[n_enc:])
        log_sigma2 = torch.tensor(math.log(sigma2), dtype=dtype, device=self.device_)
        if learn_sigma2:
            self.log_sigma2 = nn.Parameter(log_sigma2)
        else:
            self.register_buffer("log_sigma2", log_sigma2)
        self.learn_sigma2 = learn_sigma2
        self._noise = torch.Generator(self.device_).manual_seed(int(seed) + 1)
        self._eval_noise = torch.Generator(self.device_).manual_seed(int(seed) + 2)

    def _linear(self, weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> nn.Linear:
        layer = nn.Linear(weight.shape[0], weight.shape[1], device=self.device_, dtype=dtype)
        with torch.no_grad():
            layer.weight.copy_(weight.T)
            layer.bias.copy_(bias)
        return layer

    @property
    def sigma2(self) -> float:
        return float(torch.exp(self.log_sigma2.detach()))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder mean and log-variance, each (n, q)."""
        h = x
        for layer in self.encoder[:-1]:
            h = torch.relu(layer(h))
        out = self.encoder[-1](h)
        return out[..., : self.arch.latent], out[..., self.arch.latent :]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder mean f(z), (n, d)."""
        h = z
        for layer in self.decoder[:-1]:
            h = torch.relu(layer(h))
        return self.decoder[-1](h)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder (mean, variance) of q(z|x), each (n, q): what the collapse metric needs."""
        mean, logvar = self.encode(x)
        return mean, torch.exp(logvar)

    def elbo(self, x: torch.Tensor, *, sample: bool = True) -> torch.Tensor:
        """Single-sample ELBO in nats per image, averaged over the n images of ``x`` (scalar).

        ``sample=False`` decodes the mean (z = μ): a deterministic objective, used in tests.
        """
        mean, logvar = self.encode(x)
        z = mean
        if sample:
            noise = self._noise if torch.is_grad_enabled() else self._eval_noise
            eps = torch.randn(mean.shape, generator=noise, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * eps
        log_lik = _log_likelihood(x, self.decode(z), self.log_sigma2)
        kl = kl_from_logvar(mean, logvar).sum(-1)
        return (log_lik - kl).mean()


def run_settings(
    sigma2s: Sequence[float], learned: Sequence[bool] | bool, seeds: Sequence[int] | int
) -> tuple[list[float], list[bool], list[int]]:
    """Validated per-run (σ², learned, seed) lists of R runs; a single bool or int is broadcast."""
    sigma2s = [float(s) for s in sigma2s]
    runs = len(sigma2s)
    if runs == 0 or any(not s > 0 for s in sigma2s):
        raise ValueError(f"need at least one positive sigma2, got {sigma2s}")
    learned = [bool(learned)] * runs if isinstance(learned, bool) else [bool(v) for v in learned]
    seeds = [int(seeds)] * runs if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(learned) != runs or len(seeds) != runs:
        raise ValueError("sigma2s, learned and seeds must have the same length")
    return sigma2s, learned, seeds


class BatchedGaussianVAE(nn.Module):
    """R deep Gaussian VAEs with stacked weights, trained together (one per σ²).

    Run r is the :class:`GaussianVAE` with ``sigma2=sigma2s[r]``, ``learn_sigma2=learned[r]``
    and ``seed=seeds[r]``: same initial weights, same noise, same ELBO (to float tolerance).
    Layer l holds ``weight`` (R, in, out) and ``bias`` (R, 1, out); a forward pass is one
    ``torch.baddbmm`` per layer. :meth:`elbo` returns the (R,) vector of per-run ELBOs, which
    :func:`lincollapse.training.maximise` trains as R independent runs (their gradients do not
    mix because the sum's gradient with respect to run r's weights is run r's gradient).

    Fixed and learned σ² may be mixed: log σ² is a parameter of shape (R,) whose gradient is
    masked to zero for the fixed runs, so Adam leaves them unchanged.
    """

    def __init__(
        self,
        arch: Architecture,
        sigma2s: Sequence[float],
        learned: Sequence[bool] | bool = False,
        seeds: Sequence[int] | int = 0,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = "auto",
    ) -> None:
        validation.check_positive_each(sigma2s, "sigma2s")
        super().__init__()
        sigma2s, learned, seeds = run_settings(sigma2s, learned, seeds)
        runs = len(sigma2s)
        self.arch, self.runs = arch, runs
        self.sigma2_init, self.learned, self.seeds = sigma2s, learned, seeds
        self.device_ = resolve_device(device)
        per_run = [_initial_weights(arch, seed) for seed in seeds]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer in range(len(per_run[0])):
            w = torch.stack([p[layer][0] for p in per_run]).to(self.device_, dtype)
            b = torch.stack([p[layer][1] for p in per_run])[:, None, :].to(self.device_, dtype)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))
        self.n_encoder = len(arch.encoder_shapes)
        self.log_sigma2 = nn.Parameter(
            torch.log(torch.tensor(sigma2s, dtype=torch.float64)).to(self.device_, dtype)
        )
        mask = torch.tensor(learned, dtype=dtype, device=self.device_)
        self.register_buffer("learn_mask", mask)
        if any(learned):
            self.log_sigma2.register_hook(lambda grad: grad * self.learn_mask)
        else:
            self.log_sigma2.requires_grad_(False)
        self._noise = [torch.Generator(self.device_).manual_seed(s + 1) for s in seeds]
        self._eval_noise = [torch.Generator(self.device_).manual_seed(s + 2) for s in seeds]

    @property
    def sigma2(self) -> np.ndarray:
        """Current σ² of each run, (R,)."""
        return torch.exp(self.log_sigma2.detach()).double().cpu().numpy()

    def _mlp(self, h: torch.Tensor, layers: range) -> torch.Tensor:
        last = layers[-1]
        for layer in layers:
            h = torch.baddbmm(self.biases[layer], h, self.weights[layer])
            if layer != last:
                h = torch.relu(h)
        return h

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance, each (R, n, q), of data ``x`` of shape (n, d) or (R, n, d)."""
        if x.ndim == 2:
            x = x.expand(self.runs, *x.shape)
        out = self._mlp(x, range(self.n_encoder))
        q = self.arch.latent
        return out[..., :q], out[..., q:]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means (R, n, d) of latents (R, n, q)."""
        return self._mlp(z, range(self.n_encoder, len(self.weights)))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder (mean, variance), each (R, n, q)."""
        mean, logvar = self.encode(x)
        return mean, torch.exp(logvar)

    def draw_noise(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        streams = self._noise if torch.is_grad_enabled() else self._eval_noise
        return torch.stack(
            [
                torch.randn(shape[1:], generator=g, device=like.device, dtype=like.dtype)
                for g in streams
            ]
        )

    def elbo_terms(
        self, x: torch.Tensor, *, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-run ELBO (R,), and the encoder mean and log-variance (R, n, q) it used."""
        mean, logvar = self.encode(x)
        z = mean
        if sample:
            z = mean + torch.exp(0.5 * logvar) * self.draw_noise(mean.shape, mean)
        log_lik = _log_likelihood(x, self.decode(z), self.log_sigma2[:, None])
        kl = kl_from_logvar(mean, logvar).sum(-1)
        return (log_lik - kl).mean(-1), mean, logvar

    def elbo(self, x: torch.Tensor, *, sample: bool = True) -> torch.Tensor:
        """Single-sample ELBO of each run in nats per image, averaged over the images: (R,)."""
        return self.elbo_terms(x, sample=sample)[0]


LAYOUTS = ("auto", "loop", "batched")


class LoopedGaussianVAE(nn.Module):
    """R deep Gaussian VAEs held as R ordinary :class:`GaussianVAE` modules, evaluated in turn.

    The same runs, interface and numbers (to float round-off) as :class:`BatchedGaussianVAE`;
    each layer is one ``addmm`` per run instead of one ``baddbmm`` for all runs. On a CPU with
    several threads this is the faster layout (``python -m lincollapse bench deep`` measures
    both): a threaded GEMM per run keeps every core busy, where ``bmm`` splits the R runs
    between the threads unevenly when R is not a multiple of their number.
    """

    def __init__(
        self,
        arch: Architecture,
        sigma2s: Sequence[float],
        learned: Sequence[bool] | bool = False,
        seeds: Sequence[int] | int = 0,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = "auto",
    ) -> None:
        super().__init__()
        sigma2s, learned, seeds = run_settings(sigma2s, learned, seeds)
        self.arch, self.runs = arch, len(sigma2s)
        self.sigma2_init, self.learned, self.seeds = sigma2s, learned, seeds
        self.device_ = resolve_device(device)
        self.members = nn.ModuleList(
            GaussianVAE(arch, s, v, seed, dtype=dtype, device=self.device_)
            for s, v, seed in zip(sigma2s, learned, seeds, strict=True)
        )

    @property
    def sigma2(self) -> np.ndarray:
        """Current σ² of each run, (R,)."""
        return np.array([member.sigma2 for member in self.members])

    def _per_run(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x] * self.runs if x.ndim == 2 else list(x)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance, each (R, n, q), of data ``x`` of shape (n, d) or (R, n, d)."""
        pairs = [m.encode(xr) for m, xr in zip(self.members, self._per_run(x), strict=True)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means (R, n, d) of latents (R, n, q)."""
        return torch.stack([m.decode(zr) for m, zr in zip(self.members, z, strict=True)])

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder (mean, variance), each (R, n, q)."""
        mean, logvar = self.encode(x)
        return mean, torch.exp(logvar)

    def elbo(self, x: torch.Tensor, *, sample: bool = True) -> torch.Tensor:
        """Single-sample ELBO of each run in nats per image, averaged over the images: (R,)."""
        per_run = zip(self.members, self._per_run(x), strict=True)
        return torch.stack([m.elbo(xr, sample=sample) for m, xr in per_run])


def choose_layout(
    layout: str = "auto", device: str | torch.device | None = "auto", load: float | None = None
) -> str:
    """``"loop"`` or ``"batched"``: the layout that trains R runs fastest here.

    ``"auto"`` picks ``batched`` on an accelerator, on a CPU with one torch thread, and on a
    busy CPU (1-minute load average ``load``, default :func:`os.getloadavg`, above the number of
    cores), and ``loop`` on an otherwise idle CPU with several threads. Measured by ``python -m
    lincollapse bench deep`` on 2 cores, and not yet settled: one idle measurement had the loop
    ≈ 1.1–1.2× faster with 2 threads and the batched model faster with 1; a later idle one had
    the two tied at the book's widths and the loop 1.3× faster at the paper's with 1 or 2
    threads; at load 6–7 the batched model was faster with 2 threads (1.06× at the book's
    widths, 1.36× at the paper's). The choice changes speed only: both layouts compute the
    same numbers, and no cache key depends on it.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout != "auto":
        return layout
    if resolve_device(device).type != "cpu" or torch.get_num_threads() == 1:
        return "batched"
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return "batched" if load > (os.cpu_count() or 1) else "loop"


def build_runs(
    arch: Architecture,
    sigma2s: Sequence[float],
    learned: Sequence[bool] | bool = False,
    seeds: Sequence[int] | int = 0,
    *,
    layout: str = "auto",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = "auto",
) -> BatchedGaussianVAE | LoopedGaussianVAE:
    """R runs in the layout :func:`choose_layout` picks (or ``layout``); same numbers either way."""
    model_class = {"loop": LoopedGaussianVAE, "batched": BatchedGaussianVAE}
    chosen = choose_layout(layout, device)
    return model_class[chosen](arch, sigma2s, learned, seeds, dtype=dtype, device=device)


@dataclasses.dataclass
class TrainedRuns:
    """What training R runs together recorded.

    Attributes
    ----------
    sigma2_init : ndarray (R,)
        Initial (or fixed) σ² of each run.
    learned : ndarray (R,) of bool
        Whether σ² was learned.
    steps : ndarray (k,)
        Record steps (0 = initialisation).
    elbo : ndarray (k, R)
        Single-sample ELBO (nats per image, evaluation noise) at the record steps.
    sigma2 : ndarray (k, R)
        σ² at the record steps (constant for fixed runs).
    thresholds : ndarray (k, R, q)
        Per latent, the (1 − δ) order statistic of KL over the images
        (:func:`~lincollapse.collapse.collapse_thresholds`); collapsed fraction at ε =
        ``mean(thresholds < ε)``.
    kl_mean : ndarray (k, R, q)
        KL per latent averaged over the images, at the record steps.
    seconds : float
        Wall time of the training loop.
    delta : float
        δ of the collapse metric.
    """

    sigma2_init: np.ndarray
    learned: np.ndarray
    steps: np.ndarray
    elbo: np.ndarray
    sigma2: np.ndarray
    thresholds: np.ndarray
    kl_mean: np.ndarray
    seconds: float
    delta: float
    layout: str = "batched"

    def collapsed_fraction(self, epsilons, step_index: int = -1) -> np.ndarray:
        """Collapsed fraction (R, len(eps)) at record ``step_index`` (default: the end)."""
        return collapsed_fraction_from_thresholds(self.thresholds[step_index], epsilons)

    def run(self, r: int) -> TrainedRuns:
        """Run r alone, as a one-run :class:`TrainedRuns`."""
        return TrainedRuns(
            self.sigma2_init[r : r + 1],
            self.learned[r : r + 1],
            self.steps,
            self.elbo[:, r : r + 1],
            self.sigma2[:, r : r + 1],
            self.thresholds[:, r : r + 1],
            self.kl_mean[:, r : r + 1],
            self.seconds,
            self.delta,
            self.layout,
        )


LR_DECAYS = ("none", "cosine")
LR_FLOOR = 0.01


def lr_multiplier(decay: str, steps: int, floor: float = LR_FLOOR):
    """Adam learning-rate multiplier per 1-based step, or ``None`` for a constant rate.

    ``"cosine"``: 1 at step 1 falling along a half cosine to ``floor`` at step ``steps``,
    m(t) = floor + (1 − floor)·½(1 + cos(π (t − 1)/(steps − 1))). With a decay, a run of S steps
    is *not* the first S steps of a longer run (its rate depends on S).
    """
    if decay not in LR_DECAYS:
        raise ValueError(f"unknown lr_decay {decay!r}; choose one of {', '.join(LR_DECAYS)}")
    if decay == "none":
        return None
    span = max(1, steps - 1)

    def cosine(step: int) -> float:
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / span))

    return cosine


def train_batched(
    x: np.ndarray | torch.Tensor,
    arch: Architecture,
    sigma2s: Sequence[float],
    learned: Sequence[bool] | bool = False,
    *,
    steps: int,
    lr: float = 5e-4,
    lr_decay: str = "none",
    seed: int = 0,
    record_every: int = 100,
    delta: float = 0.01,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = "auto",
    progress: bool | None = None,
    layout: str = "auto",
    schedule_steps: int | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> TrainedRuns:
    """Train one run per σ² together with Adam on the full batch ``x`` (n, d) and record collapse.

    Every run starts from the same initial weights and sees the same noise (seed ``seed``), so
    runs differ only in σ² (and whether it is learned). The learning rate is ``lr`` times
    :func:`lr_multiplier` (``lr_decay``). At each record step (every ``record_every`` steps, and
    step 0 and the last) the ELBO, σ² and the collapse thresholds are recorded; the thresholds
    come from the encoder's outputs, computed in :func:`maximise`'s ``on_record`` callback
    (gradients off; the encoder is deterministic, so recording never changes training).
    ``layout`` (:func:`choose_layout`) decides how the runs are evaluated, not what they compute.
    ``schedule_steps`` (default ``steps``) is the length the learning-rate decay spans: a run's
    first ``steps`` steps of a longer decayed schedule.

    With ``checkpoint`` (a file path) the runs train in chunks of about ``checkpoint_every``
    steps (a multiple of ``record_every``) and the state after each chunk (weights, noise
    streams, Adam's moments, records) is saved there atomically; a call that finds the file
    resumes from it, in the layout it was saved in. Chunks take exactly the steps, records and
    updates of one uninterrupted call (:func:`maximise`), so an interrupted run, resumed, ends
    with the same numbers. The file is removed when the runs finish.
    """
    validation.check_training_data(x, arch.data_dim)
    saved = load_state(checkpoint, steps) if checkpoint is not None else None
    layout = saved["layout"] if saved is not None else choose_layout(layout, device)
    model = build_runs(arch, sigma2s, learned, seed, layout=layout, dtype=dtype, device=device)
    data = torch.tensor(np.asarray(x), dtype=dtype, device=model.device_)
    names = [
        f"sigma2={s:g} ({'learned' if v else 'fixed'})"
        for s, v in zip(model.sigma2_init, model.learned, strict=True)
    ]

    def measure(step: int) -> dict[str, np.ndarray]:
        mean, logvar = model.encode(data)
        kl = kl_from_logvar(mean, logvar)
        kl_mean = kl.mean(-2).double().cpu().numpy()
        thresholds = collapse_thresholds(kl, delta)
        return {"thresholds": thresholds, "kl_mean": kl_mean, "sigma2": model.sigma2}

    recorder = Recorder(measure)
    steps_done, values, seconds = maximise_in_chunks(
        lambda: model.elbo(data),
        model,
        recorder,
        steps=steps,
        record_every=record_every,
        checkpoint=checkpoint,
        saved=saved,
        checkpoint_every=checkpoint_every,
        metadata={"layout": layout},
        lr=lr,
        name="deep VAE",
        run_names=names,
        progress=progress,
        lr_schedule=lr_multiplier(lr_decay, schedule_steps or steps),
    )
    return TrainedRuns(
        sigma2_init=np.asarray(model.sigma2_init),
        learned=np.asarray(model.learned),
        steps=steps_done,
        elbo=values,
        sigma2=recorder.stack("sigma2"),
        thresholds=recorder.stack("thresholds"),
        kl_mean=recorder.stack("kl_mean"),
        seconds=seconds,
        delta=delta,
        layout=layout,
    )
