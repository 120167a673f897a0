"""The NCMI surrogate loss (Ye, Chi, Plataniotis, Yang 2026), see ``docs/ncmi.md``.

Head: z (B×m) → centre with an EMA μ → z̃ = normalize(z − μ) / T → p = NSF(z̃) = σ(z̃)/Σσ(z̃),
a point of the m-simplex. Centroids q_c = NSF(w_c) or softmax(w_c), w_c ∈ R^m. Loss per batch:

    D_i = KL(p_i ‖ q_{y_i}),   G_i = 1/(C−1) Σ_{c≠y_i} KL(q_c ‖ p_i),
    L = mean_i D_i / (G_i + ε)          (ratio="sample", the reference)
    L = Σ_i D_i / (Σ_i G_i + ε)         (ratio="batch")

Choices the paper leaves open, as made here:

- μ is updated with the detached batch mean *before* centring; the first training batch sets it
  (so it must hold ≥ 2 samples, else every z − μ is 0). μ is frozen in eval mode.
- The q-step reuses the θ-step's outputs p of the same batch (held fixed) instead of
  recomputing them after the θ update. Then ∂L/∂w at fixed p is the w-part of the gradient of
  the θ-step's own loss, so one backward pass yields both: the θ-step's backward fills the
  network's gradients (used by its optimiser; q never changes in it) and w's (used only by
  :meth:`NCMILoss.centroid_step`). No second forward or backward pass.
- ε = 1e-6 by default (``epsilon``).
- The q-step is SGD with momentum in PyTorch's convention (v ← μ·v + ∂L/∂w; w ← w − lr·v),
  written out on a momentum buffer that is not saved with the model.
- Default centroid map ``nsf`` with w_c = 10·e_c + 1e-6: NSF(10·e_c) lies inside the region
  NSF outputs can reach, softmax(10·e_c) does not (the loss then stays flat). ``centroid_init
  ="data"`` replaces w by the class means of p once (see :meth:`NCMILoss.set_centroids`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError
from .base import HeadOutput, LossOutput, SlideLoss, check_choice, check_range, kl_matrix, register
from .ncmi_fused import FusedOptions, fused_ncmi_loss

CENTROID_MAPS = ("nsf", "softmax")
CENTROID_MODES = ("learned", "fixed")
CENTROID_INITS = ("onehot", "data")
RATIOS = ("sample", "batch")
ONEHOT_SCALE = 10.0
ONEHOT_OFFSET = 1e-6


def log_nsf(x: Tensor) -> Tensor:
    """log NSF(x) = log σ(x) − log Σ_k σ(x_k) over the last axis, in log space
    (= log-softmax of log σ(x))."""
    return F.log_softmax(F.logsigmoid(x), dim=-1)


@register
class NCMILoss(SlideLoss):
    """NCMI loss with its head: a drop-in replacement for cross-entropy.

    Args:
        n_classes: C ≥ 2.
        embed_dim: m, the size of the embeddings ``z`` it receives (C ≤ m).
        temperature: T > 0 dividing the unit vector normalize(z − μ).
        ema_decay: β ∈ [0, 1] of μ ← β·μ + (1−β)·mean_batch(z).
        centroid_map: ``"nsf"`` (q_c = NSF(w_c), the reference code) or ``"softmax"`` (the text).
        centroid_init: ``"onehot"`` (w_c = 10·e_c + 1e-6) or ``"data"`` (the trainer calls
            :meth:`set_centroids` with the class means of p when the warm-up ends).
        centroid_mode: ``"learned"`` (q-steps move w) or ``"fixed"`` (w never moves; what the
            paper's published numbers used, since its code never moved them).
        ratio: ``"sample"`` (mean of per-sample ratios) or ``"batch"`` (ratio of sums).
        epsilon: ε added to the separation in the denominator.
        centroid_lr, centroid_momentum: the q-step's SGD settings.
        centroid_warmup: share of the epochs (in [0, 1)) a trainer runs before the first q-step.

    Example — replace ``nn.CrossEntropyLoss`` in any classifier whose backbone emits z (B×m)::

        criterion = NCMILoss(n_classes=3, embed_dim=128, temperature=0.5)
        opt = torch.optim.AdamW(backbone.parameters(), lr=1e-4)  # not the criterion's w
        for x, y in loader:
            loss = criterion(backbone(x), y)      # θ-step loss; centroids held fixed
            opt.zero_grad()
            loss.backward()
            opt.step()
            criterion.centroid_step()             # q-step on the same batch, p held fixed
                                                  # (uses w's gradient from that backward)
        criterion.eval()                          # freezes μ
        p = criterion.outputs(backbone(x_new)).p  # (B×m) simplex points

    The criterion's state (μ, w) is in its ``state_dict``; save it with the backbone.
    """

    name = "ncmi"

    def __init__(self, n_classes: int, embed_dim: int, *, temperature: float = 0.25,
                 ema_decay: float = 0.99, centroid_map: str = "nsf",
                 centroid_init: str = "onehot", centroid_mode: str = "learned",
                 ratio: str = "sample", epsilon: float = 1e-6, centroid_lr: float = 0.5,
                 centroid_momentum: float = 0.9, centroid_warmup: float = 0.1) -> None:
        super().__init__(n_classes, embed_dim)
        check_range(self.name, "temperature", temperature, 0.0, float("inf"), low_open=True)
        check_range(self.name, "ema_decay", ema_decay, 0.0, 1.0)
        check_choice(self.name, "centroid_map", centroid_map, CENTROID_MAPS)
        check_choice(self.name, "centroid_init", centroid_init, CENTROID_INITS)
        check_choice(self.name, "centroid_mode", centroid_mode, CENTROID_MODES)
        check_choice(self.name, "ratio", ratio, RATIOS)
        check_range(self.name, "epsilon", epsilon, 0.0, 1.0, low_open=True)
        check_range(self.name, "centroid_lr", centroid_lr, 0.0, float("inf"), low_open=True)
        check_range(self.name, "centroid_momentum", centroid_momentum, 0.0, 1.0, high_open=True)
        check_range(self.name, "centroid_warmup", centroid_warmup, 0.0, 1.0, high_open=True)
        if n_classes > embed_dim:
            raise InputError(f"loss ncmi: {n_classes} classes need embed_dim ≥ {n_classes}, "
                             f"got {embed_dim}")
        self.temperature = float(temperature)
        self.ema_decay = float(ema_decay)
        self.centroid_map = centroid_map
        self.centroid_init = centroid_init
        self.centroid_mode = centroid_mode
        self.ratio = ratio
        self.epsilon = float(epsilon)
        self.centroid_lr = float(centroid_lr)
        self.centroid_momentum = float(centroid_momentum)
        self.centroid_warmup = float(centroid_warmup)
        self.register_buffer("mu", torch.zeros(embed_dim))
        self.register_buffer("mu_set", torch.zeros((), dtype=torch.bool))
        w0 = ONEHOT_SCALE * torch.eye(n_classes, embed_dim) + ONEHOT_OFFSET
        self.w = nn.Parameter(w0, requires_grad=centroid_mode == "learned")
        self.register_buffer("w_velocity", torch.zeros_like(w0), persistent=False)
        self._last: tuple[Tensor, Tensor, Tensor] | None = None

    def log_centroids(self) -> Tensor:
        """log q (C×m) from w, with gradient to w."""
        return log_nsf(self.w) if self.centroid_map == "nsf" else F.log_softmax(self.w, dim=-1)

    def centroids(self) -> Tensor:
        return self.log_centroids().detach().exp()

    def centroid_parameters(self) -> list[nn.Parameter]:
        return [self.w] if self.centroid_mode == "learned" else []

    def outputs(self, z: Tensor) -> HeadOutput:
        zc = z.float() - self.mu
        z_tilde = zc / (zc.norm(dim=-1, keepdim=True).clamp_min(1e-12) * self.temperature)
        log_p = log_nsf(z_tilde)
        return HeadOutput(p=log_p.exp(), log_p=log_p, z_tilde=z_tilde)

    def terms(self, log_p: Tensor, log_q: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Concentration D (B,) and separation G (B,) in nats from log p (B×m), log q (C×m)
        and labels y (B,), with autograd through both (the plain-formula reference of the
        fused training loss, used by the q-step when no backward ran)."""
        yi = y[:, None]
        d = kl_matrix(log_p, log_q).gather(1, yi).squeeze(1)
        kl_q_p = kl_matrix(log_q, log_p).transpose(0, 1)  # (B×C): KL(q_c ‖ p_i)
        g = (kl_q_p.sum(1) - kl_q_p.gather(1, yi).squeeze(1)) / (self.n_classes - 1)
        return d, g

    def ratio_loss(self, d: Tensor, g: Tensor) -> Tensor:
        """L from per-sample D and G according to ``ratio``."""
        if self.ratio == "sample":
            return (d / (g + self.epsilon)).mean()
        return d.sum() / (g.sum() + self.epsilon)

    def compute(self, z: Tensor, y: Tensor) -> LossOutput:
        """θ-step loss; in training mode μ is updated with the batch mean first.

        Backward fills the network's gradients and, in ``learned`` mode, w's gradient at fixed
        p, which only :meth:`centroid_step` applies (any stale one is dropped here).
        """
        z = z.float()
        if self.training and z.shape[0] < 2 and not bool(self.mu_set):
            raise ValueError("ncmi: the first training batch sets the centre μ and needs "
                             "at least 2 samples (one sample would be centred to 0)")
        if self.w.requires_grad:
            self.w.grad = None
        options = FusedOptions(self.temperature, self.epsilon, self.centroid_map == "nsf",
                               self.ratio == "sample",
                               self.ema_decay if self.training else None)
        loss, log_p, p, z_tilde, mu, concentration, separation = fused_ncmi_loss(
            z, self.mu, self.mu_set, self.w, y, options)
        if self.training:
            self.mu.copy_(mu)
            self.mu_set.fill_(True)
        self._last = (log_p, y.detach(), loss.detach())
        return LossOutput(loss=loss, head=HeadOutput(p=p, log_p=log_p, z_tilde=z_tilde),
                          terms={"concentration": concentration, "separation": separation})

    @torch.no_grad()
    def _sgd_step(self) -> None:
        torch.add(self.w.grad, self.w_velocity, alpha=self.centroid_momentum,
                  out=self.w_velocity)
        self.w.sub_(self.w_velocity, alpha=self.centroid_lr)
        self.w.grad = None

    def centroid_step(self) -> Tensor | None:
        """q-step: one SGD-with-momentum step on w with the last :meth:`compute` batch's p
        held fixed.

        Uses w's gradient from the backward pass through that loss when there was one, else
        computes it from the stored (detached) log p.
        """
        if self.centroid_mode != "learned" or self._last is None:
            return None
        log_p, y, loss = self._last
        if self.w.grad is None:
            loss = self.ratio_loss(*self.terms(log_p, self.log_centroids(), y))
            loss.backward()
        self._sgd_step()
        return loss.detach()

    def wants_data_centroids(self) -> bool:
        return self.centroid_init == "data"

    @torch.no_grad()
    def set_centroids(self, q: Tensor) -> None:
        """Set w so that the centroids equal ``q`` (C×m, rows on the simplex, > 0).

        NSF map: σ(w_c) = a·q_c with a = 0.5 / max_k q_ck, i.e. w_c = logit(a·q_c);
        softmax map: w_c = log q_c. Resets the q-step's momentum.
        """
        q = q.to(self.w.dtype).clamp_min(torch.finfo(self.w.dtype).tiny)
        if self.centroid_map == "nsf":
            w = torch.logit(q * (0.5 / q.amax(dim=1, keepdim=True)))
        else:
            w = q.log()
        self.w.copy_(w)
        self.w_velocity.zero_()
