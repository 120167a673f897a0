"""Slide-level losses selected by name: ``ncmi`` and the baselines ``ce``,
``label_smoothing``, ``focal``, ``cmi_ce``, ``opl``, ``squentropy``, ``square``, ``supcon``.

Every loss is a :class:`~wsi_ncmi.model.losses.base.SlideLoss`: a module that maps slide embeddings
z (B×m) to simplex outputs and a training loss, owning its head's parameters. Adding a loss is
one file in this package holding a ``@register``-ed subclass; modules here are imported on
package import. :class:`NCMILoss` works standalone as a drop-in criterion (see its docstring).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from ...errors import InputError
from .base import LOSSES, HeadOutput, LossOutput, SlideLoss, register
from .ncmi import NCMILoss

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["HeadOutput", "LossOutput", "NCMILoss", "SlideLoss", "get_loss", "loss_names",
           "register"]


def loss_names() -> list[str]:
    """Names :func:`get_loss` accepts, sorted."""
    return sorted(LOSSES)


def get_loss(name: str, n_classes: int, embed_dim: int, **params: Any) -> SlideLoss:
    """Build the loss registered as ``name`` for C = ``n_classes`` and embeddings of size
    ``embed_dim``; ``params`` are its keyword settings (unknown ones raise :class:`InputError`).
    """
    if name not in LOSSES:
        raise InputError(f"unknown loss {name!r}; choose one of {', '.join(loss_names())}")
    cls = LOSSES[name]
    accepted = {p.name for p in inspect.signature(cls.__init__).parameters.values()
                if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(params) - accepted)
    if unknown:
        allowed = ", ".join(sorted(accepted)) or "none"
        raise InputError(f"loss {name}: unknown setting(s) {', '.join(unknown)} "
                         f"(allowed: {allowed})")
    return cls(n_classes, embed_dim, **params)
