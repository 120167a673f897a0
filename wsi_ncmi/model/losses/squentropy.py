"""Squentropy: L. Hui, M. Belkin, S. Wright, "Cut your Losses with Squentropy", ICML 2023
(arXiv 2302.03952).

The sum of the cross-entropy and the average square loss over the incorrect classes, on the
logits f = W z + b (B×C) of a linear classifier over z:

    ℓ_i = −log softmax(f_i)_{y_i} + 1/(C−1) · Σ_{j≠y_i} f_ij²,     L = mean_i ℓ_i

The paper's point is that it has no parameter to tune (nor has this loss any setting), and that
it trains with cross-entropy's optimiser settings. Choices the paper leaves open, as made here:
the batch reduction is the mean (as for CE), and p for the heads is softmax(f), the
distribution the cross-entropy term fits.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import LossOutput, register
from .ce import LinearHeadLoss


def incorrect_class_square(logits: Tensor, y: Tensor) -> Tensor:
    """Mean over the batch of 1/(C−1)·Σ_{j≠y_i} f_ij² for logits (B×C) and labels (B,)."""
    wrong = F.one_hot(y, logits.shape[1]) == 0
    return (logits.square() * wrong).sum(1).mean() / (logits.shape[1] - 1)


@register
class SquentropyLoss(LinearHeadLoss):
    """Cross-entropy + the average square loss over the incorrect classes' logits."""

    name = "squentropy"

    def compute(self, z: Tensor, y: Tensor) -> LossOutput:
        head = self.outputs(z)
        ce = F.nll_loss(head.log_p, y)
        square = incorrect_class_square(head.logits, y)
        return LossOutput(loss=ce + square, head=head,
                          terms={"ce": ce.detach(), "square": square.detach()})
