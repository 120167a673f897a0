"""Geometry of model outputs on a probability simplex, in NumPy (float64).

Used by the centroid head, training's validation and the NCMI measure alike:

- class means s_c of outputs p (rows of a simplex), one per class;
- KL(p_i ‖ s_c) for every output and class, in nats;
- the centroid head's scores softmax_c(−KL(p_i ‖ s_c) / T), T a temperature (1 unless
  calibrated, :func:`wsi_ncmi.model.heads.fit_temperature`);
- CMI, Γ and NCMI of a model on a labelled set (Yang et al. 2023): with s_c the class means,
  CMI = mean_i KL(p_i ‖ s_{y_i}), Γ = mean_i mean_{c≠y_i} KL(s_c ‖ p_i), NCMI = CMI / Γ.
  Lower NCMI is better: outputs cluster tightly around their own class mean, far from others.
"""

from __future__ import annotations

import numpy as np

#: outputs are clipped to this floor before logs, so an output that underflowed to exactly 0
#: gives a large finite divergence instead of an infinite one
P_FLOOR = 1e-12


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (n×C) in float64, shifted by the row maximum for stability."""
    logits = np.asarray(logits, dtype=np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def class_means(p: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(C×k) mean of the outputs ``p`` (n×k) per class of ``y`` (n,), float64; NaN rows for
    classes without samples."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    means = np.full((n_classes, p.shape[1]), np.nan)
    for c in range(n_classes):
        if (y == c).any():
            means[c] = p[y == c].mean(0)
    return means


def kl_to_centroids(p: np.ndarray, means: np.ndarray) -> np.ndarray:
    """(n×C) KL(p_i ‖ s_c) in nats for outputs ``p`` (n×k) and centroids ``means`` (C×k),
    float64, with both clipped to :data:`P_FLOOR` before the logs."""
    p = np.clip(np.asarray(p, dtype=np.float64), P_FLOOR, None)
    log_s = np.log(np.clip(means, P_FLOOR, None))
    return (p * np.log(p)).sum(1, keepdims=True) - p @ log_s.T


def centroid_scores(p: np.ndarray, means: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(n×C) softmax over classes of −KL(p_i ‖ s_c) / ``temperature``: the centroid head's
    class scores (the temperature rescales confidence, never the ranking)."""
    return softmax(-kl_to_centroids(p, means) / temperature)


def ncmi_measure(p: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, float]:
    """CMI, Γ and NCMI (nats, floats) of outputs ``p`` (n×k, rows on a simplex) with labels
    ``y`` (n,) in ``0..n_classes-1``.

    Classes absent from ``y`` have no mean and are left out of Γ; Γ (and NCMI) is NaN when
    fewer than two classes are present.
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"ncmi_measure: p must be (n, k) and y (n,), got {p.shape}, {y.shape}")
    if p.shape[0] == 0:
        return {"cmi": float("nan"), "gamma": float("nan"), "ncmi": float("nan")}
    present = np.bincount(y, minlength=n_classes) > 0
    s = np.nan_to_num(class_means(p, y, n_classes))
    log_p = np.log(np.clip(p, P_FLOOR, None))
    log_s = np.log(np.clip(s, P_FLOOR, None))
    cmi = float(np.mean(np.sum(p * (log_p - log_s[y]), axis=1)))
    if present.sum() < 2:
        return {"cmi": cmi, "gamma": float("nan"), "ncmi": float("nan")}
    kl_s_p = np.sum(s * log_s, axis=1)[None, :] - log_p @ s.T
    others = present[None, :] & (np.arange(n_classes)[None, :] != y[:, None])
    gamma = float(np.mean(np.where(others, kl_s_p, 0.0).sum(1) / others.sum(1)))
    return {"cmi": cmi, "gamma": gamma, "ncmi": cmi / gamma if gamma > 0 else float("nan")}
