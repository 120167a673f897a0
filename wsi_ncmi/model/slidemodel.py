"""The trained slide model: the attention-MIL aggregator and its loss head in one module.

``SlideModel.head`` is the *loss head*, a :class:`~wsi_ncmi.model.losses.SlideLoss`: it maps a
slide embedding z to a point p of a simplex and computes the training loss (NCMI or a
baseline). It is not one of the *prediction heads* (linear probe, centroid, classifier) of
:mod:`wsi_ncmi.model.heads`, which turn a frozen model's outputs into class probabilities.
"""

from __future__ import annotations

from torch import Tensor, nn

from .aggregators import GatedABMIL
from .losses import get_loss


class SlideModel(nn.Module):
    """An aggregator and a loss head (:class:`~wsi_ncmi.model.losses.SlideLoss`) in one module, so
    one ``state_dict`` holds the aggregator's weights and the head's state (classifier, or the
    NCMI centre μ and centroid parameters w)."""

    def __init__(self, aggregator: GatedABMIL, head: nn.Module) -> None:
        super().__init__()
        self.aggregator = aggregator
        self.head = head

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Slide embeddings z (B×m) and attention α (B×N) of padded bags x (B×N×D)."""
        return self.aggregator(x, mask)


def build_model(meta: dict) -> SlideModel:
    """An untrained model shaped as ``meta`` (``model.json`` contents) describes."""
    aggregator = GatedABMIL(meta["feature_dim"], meta["embed_dim"], meta["attn_dim"],
                            meta["dropout"])
    head = get_loss(meta["loss"], len(meta["classes"]), meta["embed_dim"],
                    **meta["loss_settings"])
    return SlideModel(aggregator, head)
