"""The linear VAE's ELBO with the optimal encoder, ELBO*(W, σ²), and its gradient by hand.

Equation (lvae-elbo-gap) of the chapter *The linear VAE*, as a :class:`torch.autograd.Function`
that both trainers of :mod:`lincollapse.linear_vae_training` maximise: it needs a Cholesky factor
of M = WᵀW + σ²I only, and returns the gradient it computed on the way. Everything is float64.
"""

from __future__ import annotations

import torch

from lincollapse import gaussian
from lincollapse.gaussian import LOG_2PI

__all__ = ["ProfiledELBO"]


class ProfiledELBO(torch.autograd.Function):
    """ELBO*(W, σ²) for W = A Ŵ (A a fixed linear map), and its gradient by hand.

    ``apply(W_hat, log_sigma2, metric, projected, trace_S, d)`` with G = AᵀA (``metric``) and
    P = AᵀSA (``projected``), each a (k,) diagonal, a (k, k) matrix, or ``None`` for G = I.
    With M = WᵀW + σ²I = ŴᵀGŴ + σ²I and B = WᵀSW = ŴᵀPŴ, equation (lvae-elbo-gap) with log p
    from (ppca-loglik) via the determinant lemma and Woodbury; log det M cancels:

        ELBO* = −½ [d log 2π + (d − q) log σ² + (tr S − tr M⁻¹B)/σ² + Σ_i log M_ii],
        ∂ELBO*/∂W = SW M⁻¹/σ² − W (M⁻¹BM⁻¹/σ² + diag(M)⁻¹),       so ∂ELBO*/∂Ŵ = Aᵀ ∂ELBO*/∂W
                  = PŴ M⁻¹/σ² − GŴ (M⁻¹BM⁻¹/σ² + diag(M)⁻¹),
        ∂ELBO*/∂log σ² = −½ [(d − q) − (tr S − tr M⁻¹B)/σ² + tr(M⁻²B) + σ² Σ_i 1/M_ii].

    Two uses: the rotation fast path (eigenbasis, A = diag(row scale): G and P diagonal, each
    evaluation O(k q²)) and :func:`lincollapse.linear_vae_training.ascend_elbo` (pixel basis,
    A = I, P = S: O(k² q)). Only a Cholesky factor of M is computed. Checked against
    :func:`lincollapse.linear_vae.optimal_encoder_elbo` and finite differences in the tests.
    """

    @staticmethod
    def forward(ctx, W_hat, log_sigma2, metric, projected, trace_S, d):  # noqa: D102
        q = W_hat.shape[1]
        metric_W = W_hat if metric is None else _apply(metric, W_hat)  # GŴ
        projected_W = _apply(projected, W_hat)  # PŴ
        sigma2 = torch.exp(log_sigma2)
        gram = W_hat.T @ torch.cat([metric_W, projected_W], 1)  # [WᵀW, WᵀSW]
        M = gaussian.m_matrix(W_hat, sigma2, gram[:, :q])
        M_inv = torch.cholesky_inverse(torch.linalg.cholesky(M))
        M_inv_B = M_inv @ gram[:, q:]
        residual = trace_S - M_inv_B.diagonal().sum()
        diag_M = M.diagonal()
        value = -0.5 * (
            d * LOG_2PI + (d - q) * log_sigma2 + residual / sigma2 + torch.log(diag_M).sum()
        )
        K = (M_inv_B @ M_inv) / sigma2 + torch.diag(1.0 / diag_M)
        grad_W_hat = torch.cat([projected_W, metric_W], 1) @ torch.cat([M_inv / sigma2, -K], 0)
        trace_M2_B = (M_inv * M_inv_B.T).sum()
        grad_log_sigma2 = -0.5 * (
            (d - q) - residual / sigma2 + trace_M2_B + sigma2 * (1.0 / diag_M).sum()
        )
        ctx.save_for_backward(grad_W_hat, grad_log_sigma2)
        return value

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        grad_W_hat, grad_log_sigma2 = ctx.saved_tensors
        return grad_output * grad_W_hat, grad_output * grad_log_sigma2, None, None, None, None


def _apply(operator: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``operator @ W`` for a (k, k) matrix, ``operator[:, None] * W`` for a (k,) diagonal."""
    return operator[:, None] * W if operator.ndim == 1 else operator @ W
