"""CMI, Γ and NCMI as measures of a trained model's outputs on a labelled set (Yang et al.).

With s_c the class means of the outputs p (softmax for the CE family, NSF for NCMI):
CMI = mean_i KL(p_i ‖ s_{y_i}), Γ = mean_i mean_{c≠y_i} KL(s_c ‖ p_i), NCMI = CMI / Γ (nats).
Lower NCMI is better: outputs cluster tightly around their own class mean and far from others.
"""

from __future__ import annotations

import numpy as np

#: outputs are clipped to this floor before logs, so an output that underflowed to exactly 0
#: gives a large finite divergence instead of an infinite one
P_FLOOR = 1e-12


def ncmi_measure(p: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, float]:
    """CMI, Γ and NCMI (nats, floats) of outputs ``p`` (n×k, rows on a simplex) with labels
    ``y`` (n,) in ``0..n_classes-1``.

    Classes absent from ``y`` have no mean and are left out of Γ; Γ (and NCMI) is NaN when
    fewer than two classes are present. Computed in float64.
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"ncmi_measure: p must be (n, k) and y (n,), got {p.shape}, {y.shape}")
    if p.shape[0] == 0:
        return {"cmi": float("nan"), "gamma": float("nan"), "ncmi": float("nan")}
    present = np.bincount(y, minlength=n_classes) > 0
    s = np.zeros((n_classes, p.shape[1]))
    for c in np.flatnonzero(present):
        s[c] = p[y == c].mean(0)
    log_p = np.log(np.clip(p, P_FLOOR, None))
    log_s = np.log(np.clip(s, P_FLOOR, None))
    cmi = float(np.mean(np.sum(p * (log_p - log_s[y]), axis=1)))
    kl_s_p = np.sum(s * log_s, axis=1)[None, :] - log_p @ s.T
    others = present[None, :] & (np.arange(n_classes)[None, :] != y[:, None])
    n_others = others.sum(1)
    if present.sum() < 2:
        return {"cmi": cmi, "gamma": float("nan"), "ncmi": float("nan")}
    gamma = float(np.mean(np.where(others, kl_s_p, 0.0).sum(1) / n_others))
    return {"cmi": cmi, "gamma": gamma, "ncmi": cmi / gamma if gamma > 0 else float("nan")}
