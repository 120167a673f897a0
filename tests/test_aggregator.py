"""Gated attention-MIL: shapes, attention on the simplex, padding and tile-order invariance."""

from __future__ import annotations

import torch

from wsi_ncmi.model.aggregators import GatedABMIL
from wsi_ncmi.model.bags import collate


def make_model(d=12, m=16) -> GatedABMIL:
    torch.manual_seed(0)
    return GatedABMIL(d, embed_dim=m, attn_dim=8).eval()


def test_shapes_and_attention_sums_to_one_over_real_tiles():
    model = make_model()
    bags = [torch.randn(n, 12) for n in (5, 9, 1)]
    x, mask = collate(bags)
    z, alpha = model(x, mask)
    assert z.shape == (3, 16) and alpha.shape == (3, 9)
    torch.testing.assert_close(alpha.sum(1), torch.ones(3))
    assert (alpha[~mask] == 0).all() and (alpha[mask] > 0).all()
    assert alpha[2, 0].item() == 1.0  # a one-tile bag puts all attention on it


def test_padding_does_not_change_a_bags_output():
    model = make_model()
    bag = torch.randn(7, 12)
    z_alone, a_alone = model(*collate([bag]))
    x, mask = collate([bag, torch.randn(40, 12)])
    x[0, 7:] = torch.randn(33, 12) * 100  # whatever sits in the padding is ignored
    z_batched, a_batched = model(x, mask)
    torch.testing.assert_close(z_batched[0], z_alone[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a_batched[0, :7], a_alone[0], rtol=1e-6, atol=1e-7)


def test_embedding_is_invariant_to_tile_order_and_attention_follows_tiles():
    model = make_model()
    bag = torch.randn(10, 12)
    perm = torch.randperm(10)
    z, alpha = model(*collate([bag]))
    z_p, alpha_p = model(*collate([bag[perm]]))
    torch.testing.assert_close(z_p, z, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alpha_p[0], alpha[0, perm], rtol=1e-5, atol=1e-7)


def test_embedding_is_the_attention_weighted_mean_of_tile_embeddings():
    model = make_model()
    bag = torch.randn(6, 12)
    z, alpha = model(*collate([bag]))
    h = model.embed(bag)
    torch.testing.assert_close(z[0], (alpha[0, :, None] * h).sum(0), rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter_and_none_flow_from_padding():
    model = make_model().train()
    x, mask = collate([torch.randn(4, 12), torch.randn(9, 12)])
    x.requires_grad_(True)
    z, _ = model(x, mask)
    z.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert (x.grad[0, 4:] == 0).all()


def test_collate_pads_with_zeros_and_marks_real_tiles():
    a, b = torch.randn(2, 3).half(), torch.randn(4, 3).half()  # bags as cached
    x, mask = collate([a, b])
    assert x.dtype == torch.float16 and x.shape == (2, 4, 3)
    torch.testing.assert_close(x[0, :2], a)
    assert (x[0, 2:] == 0).all()
    assert mask.tolist() == [[True, True, False, False], [True] * 4]
