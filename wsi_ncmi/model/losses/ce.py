"""Cross-entropy on a linear classifier over z, plain (``ce``) and with label smoothing."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import HeadOutput, LossOutput, SlideLoss, check_range, register


class LinearHeadLoss(SlideLoss):
    """Base of the CE family: logits = W z + b (C classes), p = softmax(logits)."""

    def __init__(self, n_classes: int, embed_dim: int) -> None:
        super().__init__(n_classes, embed_dim)
        self.classifier = nn.Linear(embed_dim, n_classes)

    def outputs(self, z: Tensor) -> HeadOutput:
        logits = self.classifier(z).float()
        log_p = F.log_softmax(logits, dim=-1)
        return HeadOutput(p=log_p.exp(), log_p=log_p, logits=logits)


@register
class CELoss(LinearHeadLoss):
    """Cross-entropy, mean over the batch (nats)."""

    name = "ce"

    def compute(self, z: Tensor, y: Tensor) -> LossOutput:
        head = self.outputs(z)
        loss = F.nll_loss(head.log_p, y)
        return LossOutput(loss=loss, head=head, terms={"ce": loss.detach()})


@register
class LabelSmoothingLoss(LinearHeadLoss):
    """Cross-entropy against (1 − smoothing)·one-hot + smoothing/C (nats)."""

    name = "label_smoothing"

    def __init__(self, n_classes: int, embed_dim: int, *, smoothing: float = 0.1) -> None:
        super().__init__(n_classes, embed_dim)
        check_range(self.name, "smoothing", smoothing, 0.0, 1.0, high_open=True)
        self.smoothing = float(smoothing)

    def compute(self, z: Tensor, y: Tensor) -> LossOutput:
        head = self.outputs(z)
        loss = F.cross_entropy(head.logits, y, label_smoothing=self.smoothing)
        return LossOutput(loss=loss, head=head, terms={"ce_smoothed": loss.detach()})
