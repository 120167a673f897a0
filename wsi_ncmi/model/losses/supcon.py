"""Supervised contrastive loss (SupCon): P. Khosla, P. Teterwak, C. Wang, A. Sarna, Y. Tian,
P. Isola, A. Maschinot, C. Liu, D. Krishnan, "Supervised Contrastive Learning", NeurIPS 2020
(arXiv 2004.11362).

The paper's representation r = normalize(z) (it normalises the encoder output to the unit
sphere), a projection network v = normalize(Proj(r)) with Proj an MLP (Linear m→m, ReLU,
Linear m→``proj_dim``), and its preferred L_out^sup on the batch's v (B×``proj_dim``):

    A(i) = {a ≠ i},   P(i) = {p ∈ A(i): y_p = y_i}
    ℓ_i = −1/|P(i)| · Σ_{p∈P(i)} log [ exp(v_i·v_p/τ) / Σ_{a∈A(i)} exp(v_i·v_a/τ) ]
    L   = mean of ℓ_i over the anchors i with |P(i)| ≥ 1

No classifier. Defaults: a 128-d projection output (``proj_dim``, the paper's) and τ = 0.5
(``temperature``). The paper trains with τ = 0.1 (its public code's default is 0.07), on
batches of thousands of images; with batches of 8 bags, τ 0.1 / 0.3 / 0.5 / 1.0 gave a mean
validation macro-F1 of 0.858 / 0.876 / 0.889 / 0.878 over the defaults study's three learnable
cohorts (3 seeds, lr 1e-3; docs/training.md). The paper's hidden layer has the size of the
representation (2048 for ResNet-50), here m. Choices the paper leaves open, as made here:

- One view per bag. The paper contrasts two augmentations of every image, so every anchor has a
  positive; with B bags (8 by default) some anchors have no same-class bag in the batch. They
  are left out, and L averages over the remaining anchors (the public code counts them as 0 in
  its mean). A batch without any positive pair — e.g. one bag, or all labels different — has
  L = 0 built from the batch's outputs, so backward runs and gives zero gradients.
- The mean over anchors instead of the paper's sum, so the step size does not grow with B;
  the public code's extra factor τ/0.07 is left out.
- Heads: the linear probe reads z (the paper evaluates a linear classifier on r; the probe
  standardises its inputs, which makes z and r nearly equivalent there). The centroid head
  needs a point of a simplex: p = softmax(v/τ) over the ``proj_dim`` coordinates, i.e. the
  space SupCon shapes, at the temperature it shapes it with. NSF would borrow NCMI's head and
  its temperature; softmax(v/τ) keeps SupCon's own geometry and adds no setting. p ignores
  the scale of z, as the loss does.

A trainer validates a loss without logits with the centroid head (see
:mod:`wsi_ncmi.training`); the projection is trained with the network's optimiser.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError
from .base import HeadOutput, LossOutput, SlideLoss, check_range, register


def supervised_contrastive(v: Tensor, y: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """L_out^sup of unit vectors ``v`` (B×d) with labels ``y`` (B,) at temperature τ, and the
    share of anchors that have a positive (both scalars). Zero loss when none has one."""
    logits = v @ v.transpose(0, 1) / temperature
    eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
    log_norm = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    positive = (y[:, None] == y[None, :]) & ~eye
    n_pos = positive.sum(1)
    has_pos = (n_pos > 0).to(logits.dtype)
    log_prob = torch.where(positive, logits - log_norm, torch.zeros_like(logits))
    per_anchor = -log_prob.sum(1) / n_pos.clamp_min(1)
    loss = (per_anchor * has_pos).sum() / has_pos.sum().clamp_min(1.0)
    return loss, has_pos.mean()


@register
class SupConLoss(SlideLoss):
    """Supervised contrastive loss on a projection of normalize(z); no classifier. See the
    module docstring."""

    name = "supcon"

    def __init__(self, n_classes: int, embed_dim: int, *, temperature: float = 0.5,
                 proj_dim: int = 128) -> None:
        super().__init__(n_classes, embed_dim)
        check_range(self.name, "temperature", temperature, 0.0, float("inf"), low_open=True)
        if isinstance(proj_dim, bool) or not isinstance(proj_dim, int) or proj_dim < 2:
            raise InputError(f"loss {self.name}: proj_dim must be an integer ≥ 2, "
                             f"got {proj_dim!r}")
        self.temperature = float(temperature)
        self.proj_dim = int(proj_dim)
        self.projection = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(),
                                        nn.Linear(embed_dim, self.proj_dim))

    def project(self, z: Tensor) -> Tensor:
        """v = normalize(Proj(normalize(z))) (B×``proj_dim``), unit rows."""
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        return F.normalize(self.projection(F.normalize(z, dim=1)), dim=1)

    def _head(self, v: Tensor) -> HeadOutput:
        log_p = F.log_softmax(v / self.temperature, dim=1)
        return HeadOutput(p=log_p.exp(), log_p=log_p)

    def outputs(self, z: Tensor) -> HeadOutput:
        return self._head(self.project(z))

    def compute(self, z: Tensor, y: Tensor) -> LossOutput:
        v = self.project(z)
        loss, share = supervised_contrastive(v, y, self.temperature)
        return LossOutput(loss=loss, head=self._head(v),
                          terms={"supcon": loss.detach(), "anchors_with_positive": share.detach()})
