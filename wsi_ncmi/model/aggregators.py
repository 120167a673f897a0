"""Slide-level aggregators over bags of tile features.

Gated attention MIL (Ilse, Tomczak, Welling 2018, "ABMIL"), batched with padding:

    h_i = ReLU(W x_i + b),  a_i = wᵀ(tanh(V h_i) ⊙ σ(U h_i)),
    α = softmax over the bag's real tiles (padding gets weight 0),  z = Σ_i α_i h_i.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GatedABMIL(nn.Module):
    """Gated attention-MIL pooling.

    Args:
        feature_dim: D, size of a tile feature.
        embed_dim: m, size of h_i and of the slide embedding z.
        attn_dim: size of the attention branches V h and U h.
        dropout: dropout probability on h (training only).
    """

    def __init__(self, feature_dim: int, embed_dim: int = 128, attn_dim: int = 128,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.embed_dim = embed_dim
        self.attn_dim = attn_dim
        self.embed = nn.Sequential(nn.Linear(feature_dim, embed_dim), nn.ReLU(),
                                   nn.Dropout(dropout))
        self.attn_v = nn.Linear(embed_dim, attn_dim)
        self.attn_u = nn.Linear(embed_dim, attn_dim)
        self.attn_w = nn.Linear(attn_dim, 1)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Pool bags ``x`` (B×N×D, padded) with ``mask`` (B×N bool, True = real tile).

        Returns the slide embeddings z (B×m) and the attention weights α (B×N), which sum to 1
        over each bag's real tiles and are 0 on padding. Every bag needs ≥ 1 real tile.
        """
        h = self.embed(x)
        scores = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h)))
        scores = scores.squeeze(-1).masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores.float(), dim=1).to(h.dtype)
        z = torch.bmm(alpha.unsqueeze(1), h).squeeze(1)
        return z, alpha
