"""The NCMI training loss as one autograd node with an analytic backward.

Same numbers as :meth:`NCMILoss.outputs` + :meth:`NCMILoss.terms` + ``ratio_loss`` (the tests
hold it to them and to finite differences), in about 30 tensor operations each way instead of
~100 recorded ones, which keeps a training step's overhead near cross-entropy's.

Notation: x = z̃ = (z − μ)/(‖z − μ‖·T), a = log σ(x), p = softmax(a), b = log σ(w) (NSF map) or
w, q = softmax(b), K_ic = KL(q_c‖p_i), α_i = ∂L/∂D_i, β_i = ∂L/∂G_i,
γ_ic = β_i·[c≠y_i]/(C−1), q̄_i = mean_{c≠y_i} q_c:

    ∂L/∂a_i = α_i·(p_i ⊙ (log p_i − log q_{y_i}) − D_i·p_i) + β_i·(p_i − q̄_i)
    ∂L/∂b_c = Σ_{i: y_i=c} α_i (q_c − p_i) + q_c ⊙ Σ_i γ_ic (log q_c − log p_i)
              − q_c Σ_i γ_ic K_ic
    ∂a/∂x = σ(−x);   ∂L/∂z = (g − u (u·g)) / (T‖z − μ‖) with u = x·T, g = ∂L/∂x.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class FusedOptions(NamedTuple):
    """Constants of one call: T, ε, NSF map (else softmax), per-sample ratio (else batch) and
    the EMA decay β when μ is to be updated first (None in eval mode)."""

    temperature: float
    epsilon: float
    nsf_map: bool
    sample_ratio: bool
    ema_decay: float | None


def forward_math(z: Tensor, mu: Tensor, mu_set: Tensor, w: Tensor, y: Tensor,
                 temperature: float, epsilon: float, nsf_map: bool, sample_ratio: bool,
                 ema_decay: float | None) -> tuple[Tensor, ...]:
    """Loss and everything the backward needs; μ is first moved towards the batch mean
    (or set to it when ``mu_set`` is False) when ``ema_decay`` is given."""
    if ema_decay is not None:
        batch_mean = z.mean(0)
        mu = torch.where(mu_set, ema_decay * mu + (1.0 - ema_decay) * batch_mean, batch_mean)
    zc = z - mu
    norm = zc.norm(dim=1, keepdim=True).clamp_min(1e-12)
    x = zc / (norm * temperature)
    log_p = F.log_softmax(F.logsigmoid(x), dim=1)
    p = log_p.exp()
    log_q = F.log_softmax(F.logsigmoid(w) if nsf_map else w, dim=1)
    q = log_q.exp()
    yi = y[:, None]
    d = (p * log_p).sum(1) - (p @ log_q.T).gather(1, yi).squeeze(1)
    k_qp = (q * log_q).sum(1) - log_p @ q.T  # (B×C): KL(q_c ‖ p_i)
    g = (k_qp.sum(1) - k_qp.gather(1, yi).squeeze(1)) / (w.shape[0] - 1)
    loss = (d / (g + epsilon)).mean() if sample_ratio else d.sum() / (g.sum() + epsilon)
    return loss, d, g, log_p, p, x, norm, log_q, q, k_qp, mu, d.mean(), g.mean()


def backward_math(grad_loss: Tensor, x: Tensor, norm: Tensor, log_p: Tensor, p: Tensor,
                  w: Tensor, log_q: Tensor, q: Tensor, y: Tensor, d: Tensor, g: Tensor,
                  k_qp: Tensor, temperature: float, epsilon: float, nsf_map: bool,
                  sample_ratio: bool, need_z: bool, need_w: bool
                  ) -> tuple[Tensor | None, Tensor | None]:
    """∂L/∂z and ∂L/∂w (each None when not needed); formulas in the module docstring."""
    n, n_classes = x.shape[0], w.shape[0]
    if sample_ratio:
        r = 1.0 / (g + epsilon)
        alpha, beta = r / n, -d * r * r / n
    else:
        s = g.sum() + epsilon
        alpha, beta = (1.0 / s).expand(n), (-d.sum() / (s * s)).expand(n)
    alpha, beta = alpha * grad_loss, beta * grad_loss
    own = (torch.arange(n_classes, device=y.device) == y[:, None]).to(p.dtype)  # (B×C)
    others = 1.0 - own
    grad_z = grad_w = None
    if need_z:
        q_bar = (others @ q) / (n_classes - 1)
        ga = alpha[:, None] * p * (log_p - log_q[y] - d[:, None]) + beta[:, None] * (p - q_bar)
        gx = ga * torch.sigmoid(-x)
        u = x * temperature
        grad_z = (gx - u * (u * gx).sum(1, keepdim=True)) / (norm * temperature)
    if need_w:
        a_own = own * alpha[:, None]
        gamma = others * (beta[:, None] / (n_classes - 1))
        gb = (a_own.sum(0)[:, None] * q - a_own.T @ p
              + q * (gamma.sum(0)[:, None] * log_q - gamma.T @ log_p)
              - q * (gamma * k_qp).sum(0)[:, None])
        grad_w = gb * torch.sigmoid(-w) if nsf_map else gb
    return grad_z, grad_w


class FusedNCMI(torch.autograd.Function):
    """Apply with ``(z, μ, mu_set, w, y, FusedOptions)``; gradients flow to z and w only."""

    @staticmethod
    def forward(ctx, z, mu, mu_set, w, y, options: FusedOptions):
        (loss, d, g, log_p, p, x, norm, log_q, q, k_qp, mu_new, concentration,
         separation) = forward_math(z, mu, mu_set, w, y, options.temperature, options.epsilon,
                                    options.nsf_map, options.sample_ratio, options.ema_decay)
        ctx.save_for_backward(x, norm, log_p, p, w, log_q, q, y, d, g, k_qp)
        ctx.options = options
        ctx.mark_non_differentiable(log_p, p, x, mu_new, concentration, separation)
        return loss, log_p, p, x, mu_new, concentration, separation

    @staticmethod
    def backward(ctx, grad_loss, *_):
        o = ctx.options
        grad_z, grad_w = backward_math(grad_loss, *ctx.saved_tensors, o.temperature, o.epsilon,
                                       o.nsf_map, o.sample_ratio, ctx.needs_input_grad[0],
                                       ctx.needs_input_grad[3])
        return grad_z, None, None, grad_w, None, None


def fused_ncmi_loss(z: Tensor, mu: Tensor, mu_set: Tensor, w: Tensor, y: Tensor,
                    options: FusedOptions) -> tuple[Tensor, ...]:
    """NCMI loss of embeddings z (B×m) against centroid parameters w (C×m) with labels y (B,),
    differentiable in z and w; centred by μ (m,), updated first when ``options.ema_decay``.

    Returns (L, log p (B×m), p (B×m), z̃ (B×m), the μ used (m,), mean D, mean G); only L
    carries gradients.
    """
    return FusedNCMI.apply(z, mu, mu_set, w, y, options)
