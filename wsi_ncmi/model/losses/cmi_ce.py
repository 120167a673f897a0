"""CMI-constrained cross-entropy (Yang et al. 2023): CE + λ·CMI − β·Γ on softmax outputs.

With p_i = softmax(logits_i) and class centroids s_c:

    CMI = mean_i KL(p_i ‖ s_{y_i}),   Γ = mean_i mean_{c≠y_i} KL(s_c ‖ p_i).

Centroids here are *running class means* of the softmax outputs over training batches: for
each class present in a batch, log s_c ← log((1−r)·s_c + r·mean_{i: y_i=c} p_i) with
r = 1 − ``centroid_momentum``, kept in log space; the first batch holding a class sets its s_c.
They carry no gradient, are updated before the loss is formed and are frozen in eval mode.
Classes not seen yet are left out of Γ.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import LossOutput, check_range, kl_matrix, register
from .ce import LinearHeadLoss


@register
class CMIConstrainedCELoss(LinearHeadLoss):
    """CE + ``cmi_weight``·CMI − ``gamma_weight``·Γ (nats); see the module docstring."""

    name = "cmi_ce"

    def __init__(self, n_classes: int, embed_dim: int, *, cmi_weight: float = 0.5,
                 gamma_weight: float = 0.1, centroid_momentum: float = 0.9) -> None:
        super().__init__(n_classes, embed_dim)
        check_range(self.name, "cmi_weight", cmi_weight, 0.0, float("inf"))
        check_range(self.name, "gamma_weight", gamma_weight, 0.0, float("inf"))
        check_range(self.name, "centroid_momentum", centroid_momentum, 0.0, 1.0,
                    low_open=True, high_open=True)
        self.cmi_weight = float(cmi_weight)
        self.gamma_weight = float(gamma_weight)
        self.centroid_momentum = float(centroid_momentum)
        self.register_buffer("log_s", torch.full((n_classes, n_classes), -math.log(n_classes)))
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))

    def centroids(self) -> Tensor | None:
        return self.log_s.exp() if bool(self.seen.any()) else None

    @torch.no_grad()
    def _update_centroids(self, log_p: Tensor, y: Tensor) -> None:
        classes = torch.arange(self.n_classes, device=y.device)
        members = (classes[:, None] == y[None, :]).to(log_p.dtype)  # (C×B), no host sync
        counts = members.sum(1)
        present = counts > 0
        batch_log_mean = (torch.logsumexp(log_p[None] + members.log()[:, :, None], dim=1)
                          - counts.clamp_min(1.0).log()[:, None])
        blended = torch.logaddexp(self.log_s + math.log(self.centroid_momentum),
                                  batch_log_mean + math.log1p(-self.centroid_momentum))
        new = torch.where(self.seen[:, None], blended, batch_log_mean)
        self.log_s.copy_(torch.where(present[:, None], new, self.log_s))
        self.seen.logical_or_(present)

    def compute(self, z: Tensor, y: Tensor) -> LossOutput:
        head = self.outputs(z)
        if self.training:
            self._update_centroids(head.log_p.detach(), y)
        ce = torch.nn.functional.nll_loss(head.log_p, y)
        cmi = kl_matrix(head.log_p, self.log_s, head.p).gather(1, y[:, None]).mean()
        kl_s_p = kl_matrix(self.log_s, head.log_p).transpose(0, 1)  # (B×C): KL(s_c ‖ p_i)
        classes = torch.arange(self.n_classes, device=y.device)
        others = ((classes[None, :] != y[:, None]) & self.seen[None, :]).to(kl_s_p.dtype)
        gamma = ((kl_s_p * others).sum(1) / others.sum(1).clamp_min(1.0)).mean()
        loss = ce + self.cmi_weight * cmi - self.gamma_weight * gamma
        return LossOutput(loss=loss, head=head, terms={
            "ce": ce.detach(), "cmi": cmi.detach(), "gamma": gamma.detach()})
