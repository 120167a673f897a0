"""The NCMI training loss as one autograd node with an analytic backward.

Same numbers as :meth:`NCMILoss.outputs` + :meth:`NCMILoss.terms` + ``ratio_loss`` (the tests
hold it to them and to finite differences), in about 30 tensor operations each way where
autograd through the plain formulas records ~100: on a GPU a training step is launch-bound,
so each operation saved is a kernel saved. Products that end in a sum or a difference are fused
(``addmm``, ``addcmul``), the quantities the backward reuses (p ⊙ (log p − log q_y), 1/(G + ε),
D/(G + ε), the other-class weights) are kept from the forward, D and G are written into one
2×B tensor so one reduction gives both logged means, and no zero gradients are materialised
for the outputs that carry none.

Notation: x = z̃ = (z − μ)/(‖z − μ‖·T), a = log σ(x), p = softmax(a), b = log σ(w) (NSF map) or
w, q = softmax(b), K_ic = KL(q_c‖p_i), α_i = ∂L/∂D_i, β_i = ∂L/∂G_i = −ρ_i·α_i (ρ_i = D_i/(G_i+ε)
for the per-sample ratio, L for the batch ratio), ω_ic = [c≠y_i]/(C−1), γ_ic = β_i·ω_ic,
q̄_i = Σ_c ω_ic q_c:

    ∂L/∂a_i = α_i·(p_i ⊙ (log p_i − log q_{y_i} − D_i) − ρ_i·(p_i − q̄_i))
    ∂L/∂b_c = q_c ⊙ (Σ_{i: y_i=c} α_i − Σ_i γ_ic K_ic + (Σ_i γ_ic)·log q_c − Σ_i γ_ic log p_i)
              − Σ_{i: y_i=c} α_i p_i
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
    (or set to it when ``mu_set`` is False) when ``ema_decay`` is given.

    Returns (L, log p, p, x, the μ used, mean D, mean G) and the tensors the backward keeps
    (x, T‖z − μ‖, log p, p, w, log q, q, y, ω, p ⊙ (log p − log q_y), D, K, B·α, ρ)."""
    n, n_classes = z.shape[0], w.shape[0]
    if ema_decay is not None:
        batch_mean = z.mean(0)
        mu = torch.where(mu_set, torch.lerp(batch_mean.to(mu.dtype), mu, ema_decay), batch_mean)
    zc = z - mu
    scale = zc.norm(dim=1, keepdim=True).clamp_min(1e-12).mul(temperature)  # T‖z − μ‖
    x = zc / scale
    log_p = F.log_softmax(F.logsigmoid(x), dim=1)
    p = log_p.exp()
    log_q = F.log_softmax(F.logsigmoid(w) if nsf_map else w, dim=1)
    q = log_q.exp()
    yi = y[:, None]
    others = torch.full((n, n_classes), 1.0 / (n_classes - 1), dtype=z.dtype,
                        device=z.device).scatter_(1, yi, 0.0)  # ω (B×C)
    p_shift = p * (log_p - log_q[y])  # p_i ⊙ (log p_i − log q_{y_i})
    k_qp = torch.addmm((q * log_q).sum(1), log_p, q.T, alpha=-1)  # (B×C): KL(q_c ‖ p_i)
    dg = torch.empty(2, n, dtype=z.dtype, device=z.device)
    torch.sum(p_shift, 1, out=dg[0])
    torch.sum(k_qp * others, 1, out=dg[1])
    d, g = dg[0], dg[1]
    means = dg.mean(1)
    if sample_ratio:
        factor = (g + epsilon).reciprocal_()  # B·α_i per unit upstream gradient
        rho = d * factor
        loss = rho.mean()
    else:
        den = means[1] + epsilon / n  # (Σ G + ε) / B
        loss = means[0] / den
        factor, rho = den.reciprocal(), loss
    saved = (x, scale, log_p, p, w, log_q, q, y, others, p_shift, d, k_qp, factor, rho)
    return (loss, log_p, p, x, mu, means[0], means[1]), saved


def backward_math(grad_loss: Tensor, x: Tensor, scale: Tensor, log_p: Tensor, p: Tensor,
                  w: Tensor, log_q: Tensor, q: Tensor, y: Tensor, others: Tensor,
                  p_shift: Tensor, d: Tensor, k_qp: Tensor, factor: Tensor, rho: Tensor,
                  temperature: float, nsf_map: bool, need_z: bool, need_w: bool
                  ) -> tuple[Tensor | None, Tensor | None]:
    """∂L/∂z and ∂L/∂w (each None when not needed); formulas in the module docstring."""
    n = x.shape[0]
    alpha = factor * (grad_loss / n)  # (B,) per-sample ratio, () batch ratio
    alpha_col = alpha[:, None] if alpha.dim() else alpha
    rho_col = rho[:, None] if rho.dim() else rho
    grad_z = grad_w = None
    if need_z:
        own_part = torch.addcmul(p_shift, p, d[:, None], value=-1)
        ga = torch.addcmul(own_part, rho_col, p - others @ q, value=-1).mul_(alpha_col)
        gx = ga.mul_(torch.sigmoid(-x))
        radial = (x * gx).sum(1, keepdim=True)
        grad_z = torch.addcmul(gx, x, radial, value=-temperature * temperature).div_(scale)
    if need_w:
        a_own = torch.zeros_like(others).scatter_(1, y[:, None], alpha_col.expand(n, 1))
        neg_gamma = others * (rho_col * alpha_col)  # −γ
        inner = torch.addcmul(a_own, neg_gamma, k_qp).sum(0)[:, None]
        inner = torch.addcmul(inner, neg_gamma.sum(0)[:, None], log_q, value=-1)
        inner = torch.addmm(inner, neg_gamma.T, log_p)
        gb = torch.addmm(q * inner, a_own.T, p, alpha=-1)
        grad_w = gb.mul_(torch.sigmoid(-w)) if nsf_map else gb
    return grad_z, grad_w


class FusedNCMI(torch.autograd.Function):
    """Apply with ``(z, μ, mu_set, w, y, FusedOptions)``; gradients flow to z and w only."""

    @staticmethod
    def forward(ctx, z, mu, mu_set, w, y, options: FusedOptions):
        outputs, saved = forward_math(z, mu, mu_set, w, y, options.temperature,
                                      options.epsilon, options.nsf_map, options.sample_ratio,
                                      options.ema_decay)
        ctx.save_for_backward(*saved)
        ctx.options = options
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*outputs[1:])
        return outputs

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if grad_loss is None:
            return None, None, None, None, None, None
        o = ctx.options
        grad_z, grad_w = backward_math(grad_loss, *ctx.saved_tensors, o.temperature,
                                       o.nsf_map, ctx.needs_input_grad[0],
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
