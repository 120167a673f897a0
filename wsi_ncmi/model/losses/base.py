"""The interface every slide-level loss implements.

A loss here is a *criterion head*: it maps the aggregator's slide embedding ``z`` (B×m) to points
``p`` on a probability simplex and to a training loss. It owns whatever parameters that needs
(a linear classifier for the CE family; the EMA centre and the class centroids for NCMI), so the
trainer, the checkpoint and the inference code treat every loss alike and adding a loss is one
file in this package (registered with :func:`register`).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from ...errors import InputError
from ..lossnames import LOSS_NAMES

LOSSES: dict[str, type[SlideLoss]] = {}


@dataclass
class HeadOutput:
    """What a loss head makes of embeddings ``z`` (B×m).

    ``p``: (B×k) points of a simplex (NCMI: NSF output, k = m; CE family: softmax, k = C).
    ``log_p``: (B×k) its logarithm, computed in log space.
    ``logits``: (B×C) the head's own classifier scores, or None (NCMI has no classifier).
    ``z_tilde``: (B×m) NCMI's centred, L2-normalised, temperature-scaled embedding, or None.
    """

    p: Tensor
    log_p: Tensor
    logits: Tensor | None = None
    z_tilde: Tensor | None = None


@dataclass
class LossOutput:
    """One mini-batch's training loss.

    ``loss``: scalar to back-propagate. ``terms``: scalar tensors (detached) logged per epoch,
    e.g. ``{"ce": ...}`` or ``{"concentration": ..., "separation": ...}``. ``head``: the
    outputs the loss was computed from.
    """

    loss: Tensor
    head: HeadOutput
    terms: dict[str, Tensor] = field(default_factory=dict)


class SlideLoss(nn.Module, ABC):
    """Base class: ``compute(z, y)`` for training, ``outputs(z)`` for inference.

    ``forward(z, y)`` returns the scalar loss, so an instance is a drop-in criterion:
    ``loss = criterion(z, y); loss.backward()``. Subclasses take ``(n_classes, embed_dim)``
    positionally and their hyperparameters as keyword arguments stored under the same
    attribute names (that is what :meth:`settings` reports).
    """

    name: ClassVar[str]
    #: share of the epochs a trainer runs before the first :meth:`centroid_step`
    centroid_warmup: float = 0.0

    def __init__(self, n_classes: int, embed_dim: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise InputError(f"loss {self.name}: needs at least 2 classes, got {n_classes}")
        if embed_dim < 1:
            raise InputError(f"loss {self.name}: embed_dim must be ≥ 1, got {embed_dim}")
        self.n_classes = n_classes
        self.embed_dim = embed_dim

    @abstractmethod
    def compute(self, z: Tensor, y: Tensor) -> LossOutput:
        """Training loss for embeddings ``z`` (B×m float) and labels ``y`` (B, int64)."""

    @abstractmethod
    def outputs(self, z: Tensor) -> HeadOutput:
        """Simplex outputs for ``z`` (B×m) without touching any running state."""

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return self.compute(z, y).loss

    def centroids(self) -> Tensor | None:
        """Class centroids (C×k) on the output simplex, detached, or None if the loss has none."""
        return None

    def centroid_parameters(self) -> list[nn.Parameter]:
        """Parameters that only :meth:`centroid_step` updates; keep them out of the network's
        optimiser. Empty when the loss learns no centroids."""
        return []

    def centroid_step(self) -> Tensor | None:
        """One optimiser step on the centroids with the last batch's outputs held fixed.

        Returns the centroid loss before the step (a detached scalar tensor, so a GPU step
        does not wait for it), or None when the loss has no learned centroids. The default
        does nothing.
        """
        return None

    def wants_data_centroids(self) -> bool:
        """Whether a trainer should call :meth:`set_centroids` with the class means of the
        outputs when the centroid warm-up ends."""
        return False

    def set_centroids(self, q: Tensor) -> None:
        """Move the centroids onto ``q`` (C×k simplex points). Losses without centroid
        parameters cannot."""
        raise NotImplementedError(f"loss {self.name} has no centroid parameters to set")

    def settings(self) -> dict[str, Any]:
        """The loss's resolved hyperparameters (keyword arguments of its constructor)."""
        params = inspect.signature(type(self).__init__).parameters.values()
        return {p.name: getattr(self, p.name) for p in params if p.kind is p.KEYWORD_ONLY}


def register(cls: type[SlideLoss]) -> type[SlideLoss]:
    """Class decorator: make a loss available to :func:`get_loss` under ``cls.name`` (a name
    of :data:`~wsi_ncmi.model.lossnames.LOSS_NAMES`)."""
    if cls.name not in LOSS_NAMES:
        raise RuntimeError(f"loss {cls.name!r} is missing from wsi_ncmi.model.lossnames")
    LOSSES[cls.name] = cls
    return cls


def check_choice(loss: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise :class:`InputError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(f"loss {loss}: {key} must be one of {', '.join(choices)}, got {value!r}")


def check_range(loss: str, key: str, value: Any, low: float, high: float,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise :class:`InputError` unless ``low ≤ value ≤ high`` (bounds optionally open)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise InputError(f"loss {loss}: {key} must lie in {lo}{low}, {high}{hi}, got {value!r}")


def kl_matrix(log_a: Tensor, log_b: Tensor, a: Tensor | None = None) -> Tensor:
    """KL(a_i‖b_j) for every pair, from log-probabilities ``log_a`` (I×k) and ``log_b`` (J×k)
    → (I×J) nats; ``a`` = exp(log_a) when already at hand.

    Σ_k a_ik (log a_ik − log b_jk) = Σ_k a_ik log a_ik − (a · log bᵀ)_ij: one matrix product
    instead of an I×J×k tensor.
    """
    a = log_a.exp() if a is None else a
    return (a * log_a).sum(-1, keepdim=True) - a @ log_b.transpose(0, 1)
