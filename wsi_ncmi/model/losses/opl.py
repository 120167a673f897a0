"""Orthogonal projection loss (OPL): K. Ranasinghe, M. Naseer, M. Hayat, S. Khan,
F. S. Khan, "Orthogonal Projection Loss", ICCV 2021 (arXiv 2103.14021).

Cross-entropy on the linear classifier over z plus a batch term on the features the classifier
reads (here the slide embeddings z, B×m), L2-normalised to f_i = z_i/‖z_i‖:

    s = mean over ordered pairs (i, j), i ≠ j, y_i = y_j of ⟨f_i, f_j⟩
    d = mean over ordered pairs (i, j),        y_i ≠ y_j of ⟨f_i, f_j⟩
    OPL = (1 − s) + γ·|d|
    L   = CE + λ·OPL                              (nats + a dimensionless term)

Defaults λ = 1 (``opl_weight``), γ = 0.5 (``gamma``): the defaults the authors' public code
(github.com/kahnchana/opl) recommends. Choices the paper leaves open, as made here:

- |d| as in the paper's formula; the authors' code drops the absolute value. The gated-ABMIL z
  is an attention-weighted mean of ReLU features, so z ≥ 0, d ≥ 0 and the two agree.
- A sample is not its own pair (the diagonal is excluded, as in the authors' code); the mean
  over ordered pairs equals the mean over unordered ones.
- A batch without a same-class pair has s = 0, and one without a different-class pair d = 0
  (the code's empty means): that part is then a constant without gradient, so a single-sample
  batch trains on CE alone.
- f = z/max(‖z‖, 1e-12), so z = 0 gives f = 0 instead of NaN.

p for the heads is the classifier's softmax, as for CE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LossOutput, check_range, register
from .ce import LinearHeadLoss


def orthogonal_projection(z: Tensor, y: Tensor, gamma: float) -> Tensor:
    """OPL term (1 − s) + γ·|d| of embeddings ``z`` (B×m) with labels ``y`` (B,); a scalar
    that ignores the norm of each z_i."""
    f = F.normalize(z, dim=1)
    cos = f @ f.transpose(0, 1)
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
    pos = (same & ~eye).to(cos.dtype)
    neg = (~same).to(cos.dtype)
    s = (cos * pos).sum() / pos.sum().clamp_min(1.0)
    d = (cos * neg).sum() / neg.sum().clamp_min(1.0)
    return (1.0 - s) + gamma * d.abs()


@register
class OrthogonalProjectionLoss(LinearHeadLoss):
    """CE + ``opl_weight``·OPL(z) with OPL's ``gamma`` weighting the different-class term;
    see the module docstring."""

    name = "opl"

    def __init__(self, n_classes: int, embed_dim: int, *, opl_weight: float = 1.0,
                 gamma: float = 0.5) -> None:
        super().__init__(n_classes, embed_dim)
        check_range(self.name, "opl_weight", opl_weight, 0.0, float("inf"))
        check_range(self.name, "gamma", gamma, 0.0, float("inf"))
        self.opl_weight = float(opl_weight)
        self.gamma = float(gamma)

    def compute(self, z: Tensor, y: Tensor) -> LossOutput:
        head = self.outputs(z)
        ce = F.nll_loss(head.log_p, y)
        opl = orthogonal_projection(z.to(torch.promote_types(z.dtype, torch.float32)), y,
                                    self.gamma)
        loss = ce + self.opl_weight * opl
        return LossOutput(loss=loss, head=head, terms={"ce": ce.detach(), "opl": opl.detach()})
