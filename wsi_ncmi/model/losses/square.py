"""The square loss for classification: L. Hui, M. Belkin, "Evaluation of Neural Architectures
Trained with Square Loss vs Cross-Entropy in Classification Tasks", ICLR 2021
(arXiv 2006.07322).

On the logits f = W z + b (B×C) of a linear classifier over z, with no softmax:

    ℓ_i = 1/C · [ k·(f_{i,y_i} − M)² + Σ_{j≠y_i} f_ij² ],     L = mean_i ℓ_i

With k = M = 1 this is the mean squared error between the logits and one-hot targets. The
paper rescales for many classes (k > 1 weights the true class, M > 1 is its target value) and
keeps k = M = 1 below 42 classes — the default here (settings ``correct_weight`` = k,
``correct_target`` = M; slide tasks have 2–7 classes). Choices the paper leaves open, as made
here: the batch reduction is the mean; p for the heads is softmax(f). The paper predicts with
argmax_j f_j, which softmax keeps, so the ``classifier`` head predicts as the paper does;
softmax(f) as class scores (AUC, calibration) and as the centroid head's simplex point is this
project's choice, since square-loss logits are not probabilities (they need not be positive nor
sum to 1).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import LossOutput, check_range, register
from .ce import LinearHeadLoss


def rescaled_square(logits: Tensor, y: Tensor, correct_weight: float = 1.0,
                    correct_target: float = 1.0) -> Tensor:
    """Mean over the batch of 1/C·[k(f_y − M)² + Σ_{j≠y} f_j²] for logits (B×C), labels (B,),
    k = ``correct_weight`` and M = ``correct_target``."""
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    weight = 1.0 + (correct_weight - 1.0) * onehot
    return (weight * (logits - correct_target * onehot).square()).mean()


@register
class SquareLoss(LinearHeadLoss):
    """Hui & Belkin's (rescaled) square loss on the classifier's logits; see the module
    docstring."""

    name = "square"

    def __init__(self, n_classes: int, embed_dim: int, *, correct_weight: float = 1.0,
                 correct_target: float = 1.0) -> None:
        super().__init__(n_classes, embed_dim)
        check_range(self.name, "correct_weight", correct_weight, 0.0, float("inf"),
                    low_open=True)
        check_range(self.name, "correct_target", correct_target, 0.0, float("inf"),
                    low_open=True)
        self.correct_weight = float(correct_weight)
        self.correct_target = float(correct_target)

    def compute(self, z: Tensor, y: Tensor) -> LossOutput:
        head = self.outputs(z)
        loss = rescaled_square(head.logits, y, self.correct_weight, self.correct_target)
        return LossOutput(loss=loss, head=head, terms={"square": loss.detach()})
