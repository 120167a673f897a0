"""Focal loss (Lin et al. 2017): −(1 − p_y)^γ · log p_y, mean over the batch (nats)."""

from __future__ import annotations

from torch import Tensor

from .base import LossOutput, check_range, register
from .ce import LinearHeadLoss


@register
class FocalLoss(LinearHeadLoss):
    """Focal loss on the linear head's softmax; ``focusing`` is γ ≥ 0 (γ = 0 is CE)."""

    name = "focal"

    def __init__(self, n_classes: int, embed_dim: int, *, focusing: float = 2.0) -> None:
        super().__init__(n_classes, embed_dim)
        check_range(self.name, "focusing", focusing, 0.0, float("inf"))
        self.focusing = float(focusing)

    def compute(self, z: Tensor, y: Tensor) -> LossOutput:
        head = self.outputs(z)
        log_py = head.log_p.gather(1, y[:, None]).squeeze(1)
        loss = (-(-log_py.expm1()).pow(self.focusing) * log_py).mean()
        return LossOutput(loss=loss, head=head, terms={"focal": loss.detach()})
