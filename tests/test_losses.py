"""The NCMI loss against a plain NumPy implementation, its gradients, centroid steps and
invariances; the baselines' interface; NCMI as a measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_ncmi.errors import InputError
from wsi_ncmi.model.aggregators import GatedABMIL
from wsi_ncmi.model.losses import NCMILoss, get_loss, loss_names
from wsi_ncmi.model.losses.ncmi import log_nsf
from wsi_ncmi.model.losses.ncmi_fused import FusedOptions, fused_ncmi_loss
from wsi_ncmi.stats.simplex import ncmi_measure


def np_log_nsf(x: np.ndarray) -> np.ndarray:
    s = 1.0 / (1.0 + np.exp(-x))
    return np.log(s / s.sum(-1, keepdims=True))


def np_ncmi_loss(z, y, w, mu, temperature, centroid_map, ratio, eps, n_classes):
    """The loss of docs/ncmi.md written out directly, in float64."""
    zc = z - mu
    zt = zc / np.linalg.norm(zc, axis=1, keepdims=True) / temperature
    log_p = np_log_nsf(zt)
    if centroid_map == "nsf":
        log_q = np_log_nsf(w)
    else:
        log_q = w - np.log(np.exp(w).sum(1, keepdims=True))
    p, q = np.exp(log_p), np.exp(log_q)
    d = np.array([np.sum(p[i] * (log_p[i] - log_q[y[i]])) for i in range(len(y))])
    g = np.array([np.mean([np.sum(q[c] * (log_q[c] - log_p[i]))
                           for c in range(n_classes) if c != y[i]]) for i in range(len(y))])
    if ratio == "sample":
        return np.mean(d / (g + eps))
    return d.sum() / (g.sum() + eps)


@pytest.mark.parametrize("centroid_map", ["nsf", "softmax"])
@pytest.mark.parametrize("ratio", ["sample", "batch"])
def test_ncmi_loss_matches_numpy(centroid_map, ratio):
    rng = np.random.default_rng(0)
    n_classes, m = 4, 12
    loss = NCMILoss(n_classes, m, temperature=0.3, centroid_map=centroid_map, ratio=ratio,
                    ema_decay=0.9)
    w = rng.normal(0, 2, (n_classes, m))
    with torch.no_grad():
        loss.w.copy_(torch.from_numpy(w))
    z1, z2 = rng.normal(size=(7, m)), rng.normal(2.0, 3.0, size=(5, m))
    y1, y2 = rng.integers(0, n_classes, 7), rng.integers(0, n_classes, 5)
    w32 = loss.w.detach().double().numpy()

    got1 = loss(torch.tensor(z1, dtype=torch.float32), torch.tensor(y1)).item()
    mu1 = z1.mean(0)  # the first batch sets μ, before centring
    want1 = np_ncmi_loss(z1, y1, w32, mu1, 0.3, centroid_map, ratio, 1e-6, n_classes)
    assert got1 == pytest.approx(want1, rel=1e-4)

    got2 = loss(torch.tensor(z2, dtype=torch.float32), torch.tensor(y2)).item()
    mu2 = 0.9 * mu1 + 0.1 * z2.mean(0)  # EMA update with the batch mean, then centring
    want2 = np_ncmi_loss(z2, y2, w32, mu2, 0.3, centroid_map, ratio, 1e-6, n_classes)
    assert got2 == pytest.approx(want2, rel=1e-4)
    np.testing.assert_allclose(loss.mu.numpy(), mu2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("centroid_map", ["nsf", "softmax"])
@pytest.mark.parametrize("ratio", ["sample", "batch"])
def test_fused_training_loss_has_the_reference_values_and_gradients(centroid_map, ratio):
    """The analytic backward of the training loss against autograd through the plain
    formulas, and against finite differences (float64)."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(3, 8, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    mu = torch.randn(8, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    ref = NCMILoss(3, 8, temperature=0.4, centroid_map=centroid_map, ratio=ratio).double()
    ref.mu.copy_(mu)
    with torch.no_grad():
        ref.w.copy_(w)
    log_q = ref.log_centroids()
    want = ref.ratio_loss(*ref.terms(ref.outputs(z).log_p, log_q, y))
    want_gz, want_gw = torch.autograd.grad(want, (z, ref.w))
    options = FusedOptions(0.4, 1e-6, centroid_map == "nsf", ratio == "sample", None)
    mu_set = torch.tensor(True)
    got = fused_ncmi_loss(z, mu, mu_set, w, y, options)[0]
    got_gz, got_gw = torch.autograd.grad(got, (z, w))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_gz, want_gz)
    torch.testing.assert_close(got_gw, want_gw)
    assert torch.autograd.gradcheck(
        lambda z_, w_: fused_ncmi_loss(z_, mu, mu_set, w_, y, options)[0], (z, w))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_step_on_gpu_matches_cpu():
    z, y = fixed_batch()
    results = []
    for device in ("cpu", "cuda"):
        loss = NCMILoss(3, 16).to(device)
        zd = z.detach().to(device).clone().requires_grad_(True)
        out = loss.compute(zd, y.to(device))
        out.loss.backward()
        loss.centroid_step()
        results.append([t.detach().cpu() for t in (out.loss, zd.grad, loss.w, loss.mu)])
    for cpu, gpu in zip(*results, strict=True):
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-6)


def test_outputs_are_simplex_points_and_default_centroids_are_nsf_of_onehot():
    loss = NCMILoss(3, 16)
    out = loss.outputs(torch.randn(5, 16))
    assert out.p.shape == (5, 16)
    torch.testing.assert_close(out.p.sum(1), torch.ones(5))
    q = loss.centroids()
    sig = torch.sigmoid(10 * torch.eye(3, 16) + 1e-6)
    torch.testing.assert_close(q, sig / sig.sum(1, keepdim=True))


def test_eval_mode_freezes_centre():
    loss = NCMILoss(3, 8)
    loss(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
    mu = loss.mu.clone()
    loss.eval()
    loss(torch.randn(4, 8) + 5, torch.tensor([0, 1, 2, 0]))
    torch.testing.assert_close(loss.mu, mu)
    assert bool(loss.mu_set)


def test_first_batch_of_one_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        NCMILoss(2, 8)(torch.randn(1, 8), torch.tensor([0]))


@pytest.mark.parametrize("centroid_map", ["nsf", "softmax"])
def test_finite_gradients_at_extreme_inputs(centroid_map):
    n_classes, m = 3, 16
    loss = NCMILoss(n_classes, m, temperature=0.01, centroid_map=centroid_map)
    with torch.no_grad():
        loss.w.copy_(torch.randn(n_classes, m) * 60)
    loss.eval()  # keep μ = 0, so z̃ = ±25 on every coordinate
    z = -1e4 * torch.ones(6, m)
    z[torch.arange(6), torch.arange(6)] = 1e4  # p_k = σ(25) / (σ(25) + 15·σ(−25)) ≈ 1
    z.requires_grad_(True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out = loss.compute(z, y)
    assert out.head.p.max(1).values.min() > 1 - 1e-6
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(z.grad).all()
    assert loss.centroid_step() is not None
    assert torch.isfinite(loss.w).all()


@pytest.mark.parametrize("name", ["ce", "label_smoothing", "focal", "cmi_ce"])
def test_baselines_finite_gradients_at_extreme_logits(name):
    loss = get_loss(name, 3, 8)
    with torch.no_grad():
        loss.classifier.weight.mul_(1e4)
    z = (torch.randn(6, 8) * 100).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(2):  # the second call uses cmi_ce's running centroids
        out = loss.compute(z, y)
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(z.grad).all()


def fixed_batch(n_classes=3, m=16, b=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, m, generator=g)
    y = torch.arange(b) % n_classes
    z[torch.arange(b), y] += 2.0  # some class structure
    return z, y


def test_q_step_really_moves_centroids_and_lowers_the_fixed_batch_loss():
    z, y = fixed_batch()
    loss = NCMILoss(3, 16, centroid_mode="learned", centroid_lr=0.5)
    out = loss.compute(z, y)
    log_p = out.head.log_p.detach()
    w0, q0 = loss.w.detach().clone(), loss.centroids()
    before = loss.ratio_loss(*loss.terms(log_p, loss.log_centroids().detach(), y)).item()
    for _ in range(20):
        loss.centroid_step()
    after = loss.ratio_loss(*loss.terms(log_p, loss.log_centroids().detach(), y)).item()
    assert after < before
    assert not torch.equal(loss.w.detach(), w0)
    assert (loss.centroids() - q0).abs().sum() > 1e-4


def test_theta_step_leaves_centroids_alone_and_its_backward_gives_the_q_step_gradient():
    z, y = fixed_batch()
    z.requires_grad_(True)
    learned = NCMILoss(3, 16, centroid_mode="learned")
    w0 = learned.w.detach().clone()
    out = learned.compute(z, y)
    out.loss.backward()
    torch.testing.assert_close(learned.w.detach(), w0)  # the θ-step does not move q
    joint = learned.w.grad.clone()
    learned.w.grad = None
    q_loss = learned.ratio_loss(*learned.terms(out.head.log_p.detach(), learned.log_centroids(),
                                               y))
    (q_only,) = torch.autograd.grad(q_loss, learned.w)  # ∂L/∂w with p held fixed
    torch.testing.assert_close(joint, q_only)
    # z's gradient is ∂L/∂z at fixed q: the same as with q detached (same μ, eval mode)
    z_grad, z.grad = z.grad.clone(), None
    learned.eval()
    learned.ratio_loss(*learned.terms(learned.outputs(z).log_p, learned.log_centroids().detach(),
                                      y)).backward()
    torch.testing.assert_close(z.grad, z_grad)


def test_fixed_mode_never_moves_centroids():
    z, y = fixed_batch()
    fixed = NCMILoss(3, 16, centroid_mode="fixed")
    w0 = fixed.w.detach().clone()
    fixed(z.requires_grad_(True), y).backward()
    assert fixed.w.grad is None and fixed.centroid_parameters() == []
    assert fixed.centroid_step() is None
    torch.testing.assert_close(fixed.w.detach(), w0)


def test_centroid_step_after_backward_uses_that_gradient():
    z, y = fixed_batch()
    a, b = NCMILoss(3, 16), NCMILoss(3, 16)
    a(z.clone().requires_grad_(True), y).backward()  # joint backward, then q-step
    a.centroid_step()
    b.compute(z, y)  # no backward: the q-step recomputes ∂L/∂w from the stored p
    b.centroid_step()
    torch.testing.assert_close(a.w.detach(), b.w.detach())
    assert a.w.grad is None and b.w.grad is None


def test_theta_step_lowers_the_loss_of_a_fixed_batch():
    torch.manual_seed(0)
    agg = GatedABMIL(8, embed_dim=16, attn_dim=8)
    loss = NCMILoss(3, 16)
    x = torch.randn(6, 10, 8)
    mask = torch.ones(6, 10, dtype=torch.bool)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x[torch.arange(6), 0, y] += 3.0
    loss(agg(x, mask)[0].detach(), y)  # the first batch sets μ
    loss.eval()  # μ frozen from here, so the loss is a function of θ only
    opt = torch.optim.SGD(agg.parameters(), lr=0.05)
    before = loss(agg(x, mask)[0], y)
    opt.zero_grad()
    before.backward()
    opt.step()
    after = loss(agg(x, mask)[0], y)
    assert after.item() < before.item()


def test_loss_is_invariant_to_the_scale_of_z():
    z, y = fixed_batch()
    a, b = NCMILoss(3, 16), NCMILoss(3, 16)
    first_a, first_b = a(z, y), b(37.0 * z, y)
    assert first_a.item() == pytest.approx(first_b.item(), rel=1e-5)
    z2 = torch.randn(12, 16)
    assert a(z2, y).item() == pytest.approx(b(37.0 * z2, y).item(), rel=1e-5)


@pytest.mark.parametrize("centroid_map", ["nsf", "softmax"])
def test_set_centroids_places_them_on_the_given_points(centroid_map):
    loss = NCMILoss(3, 10, centroid_map=centroid_map)
    q = torch.softmax(torch.randn(3, 10), 1)
    loss.set_centroids(q)
    torch.testing.assert_close(loss.centroids(), q, rtol=1e-4, atol=1e-6)


def test_state_dict_round_trip_reproduces_outputs():
    z, y = fixed_batch()
    a = NCMILoss(3, 16)
    a(z, y)
    a.centroid_step()
    b = NCMILoss(3, 16)
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    torch.testing.assert_close(a.outputs(z).p, b.outputs(z).p)
    torch.testing.assert_close(a.centroids(), b.centroids())


def test_standalone_drop_in_training_separates_classes():
    """The docstring's usage: NCMI in place of cross-entropy on a plain network."""
    torch.manual_seed(0)
    x = torch.randn(96, 6)
    y = torch.arange(96) % 3
    x[torch.arange(96), y] += 2.5
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    criterion = NCMILoss(n_classes=3, embed_dim=16)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = criterion(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        criterion.centroid_step()
        losses.append(loss.item())
    criterion.eval()
    p = criterion.outputs(net(x)).p.detach().numpy()
    assert losses[-1] < 0.5 * losses[0]
    assert ncmi_measure(p, y.numpy(), 3)["ncmi"] < 0.5


def test_registry_names_and_errors():
    assert set(loss_names()) >= {"ncmi", "ce", "label_smoothing", "focal", "cmi_ce"}
    with pytest.raises(InputError, match="unknown loss 'nope'"):
        get_loss("nope", 3, 8)
    with pytest.raises(InputError, match="unknown setting"):
        get_loss("ce", 3, 8, temperature=0.5)
    with pytest.raises(InputError, match="temperature"):
        get_loss("ncmi", 3, 8, temperature=0.0)
    with pytest.raises(InputError, match="embed_dim"):
        get_loss("ncmi", 9, 8)


@pytest.mark.parametrize("name", ["ncmi", "ce", "label_smoothing", "focal", "cmi_ce"])
def test_every_loss_shares_the_interface(name):
    loss = get_loss(name, 3, 8)
    z = torch.randn(6, 8, requires_grad=True)
    out = loss.compute(z, torch.tensor([0, 1, 2, 0, 1, 2]))
    out.loss.backward()
    assert out.loss.ndim == 0 and z.grad is not None
    torch.testing.assert_close(out.head.p.sum(1), torch.ones(6))
    torch.testing.assert_close(out.head.log_p.exp(), out.head.p)
    assert all(v.ndim == 0 for v in out.terms.values())
    assert get_loss(name, 3, 8, **loss.settings()).settings() == loss.settings()


def test_focal_without_focusing_is_cross_entropy():
    torch.manual_seed(0)
    focal, ce = get_loss("focal", 4, 8, focusing=0.0), get_loss("ce", 4, 8)
    ce.load_state_dict(focal.state_dict())
    z, y = torch.randn(10, 8), torch.randint(0, 4, (10,))
    torch.testing.assert_close(focal(z, y), ce(z, y))
    focusing = get_loss("focal", 4, 8, focusing=2.0)
    focusing.load_state_dict(focal.state_dict())
    assert focusing(z, y) < ce(z, y)  # (1 − p_y)^γ < 1 down-weights every sample


def test_cmi_ce_uses_running_class_means_of_softmax_outputs():
    torch.manual_seed(0)
    loss = get_loss("cmi_ce", 3, 8, cmi_weight=0.7, gamma_weight=0.2, centroid_momentum=0.5)
    z1, y1 = torch.randn(9, 8), torch.tensor([0, 1, 2] * 3)
    out1 = loss.compute(z1, y1)
    p1 = out1.head.p.detach().double().numpy()
    s = np.stack([p1[y1.numpy() == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(loss.centroids().numpy(), s, rtol=1e-5)
    measure = ncmi_measure(p1, y1.numpy(), 3)  # same definitions as the measure
    ce = torch.nn.functional.cross_entropy(loss.classifier(z1), y1).item()
    want = ce + 0.7 * measure["cmi"] - 0.2 * measure["gamma"]
    assert out1.loss.item() == pytest.approx(want, rel=1e-4)

    z2 = torch.randn(6, 8)
    y2 = torch.tensor([0, 0, 1, 1, 0, 1])
    p2 = loss.outputs(z2).p.detach().double().numpy()
    loss.compute(z2, y2)
    for c in (0, 1):  # present: averaged with momentum 0.5
        np.testing.assert_allclose(loss.centroids()[c].numpy(),
                                   0.5 * s[c] + 0.5 * p2[y2.numpy() == c].mean(0), rtol=1e-5)
    np.testing.assert_allclose(loss.centroids()[2].numpy(), s[2], rtol=1e-5)  # absent: kept


def kl(a, b):
    return float(np.sum(a * (np.log(a) - np.log(b))))


def test_ncmi_measure_matches_its_definition():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(5), size=20)
    y = rng.integers(0, 3, 20)
    s = [p[y == c].mean(0) for c in range(3)]
    cmi = np.mean([kl(p[i], s[y[i]]) for i in range(20)])
    gamma = np.mean([np.mean([kl(s[c], p[i]) for c in range(3) if c != y[i]])
                     for i in range(20)])
    got = ncmi_measure(p, y, 3)
    assert got["cmi"] == pytest.approx(cmi)
    assert got["gamma"] == pytest.approx(gamma)
    assert got["ncmi"] == pytest.approx(cmi / gamma)


def test_ncmi_measure_of_perfect_clusters_is_zero_and_absent_classes_are_skipped():
    p = np.array([[0.8, 0.1, 0.1]] * 3 + [[0.1, 0.8, 0.1]] * 3)
    y = np.array([0, 0, 0, 1, 1, 1])
    got = ncmi_measure(p, y, n_classes=3)  # class 2 absent
    assert got["cmi"] == pytest.approx(0.0, abs=1e-12)
    assert got["gamma"] == pytest.approx(kl(p[3], p[0]))
    assert got["ncmi"] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(ncmi_measure(p[:3], y[:3], 3)["gamma"])


def test_the_torch_free_list_of_loss_names_is_the_registry():
    from wsi_ncmi.model.lossnames import LOSS_NAMES

    assert loss_names() == sorted(LOSS_NAMES)


@pytest.mark.parametrize("centroid_map", ["nsf", "softmax"])
@pytest.mark.parametrize("ratio", ["sample", "batch"])
def test_fused_training_steps_equal_autograd_through_the_plain_formulas(centroid_map, ratio):
    """Three float32 training steps (EMA of μ, θ-step backward, q-step with momentum) of the
    fused loss against the same steps written with the plain formulas and autograd in
    float64: loss, logged terms, z's gradient, μ and w agree after every step to float32
    rounding."""
    g = torch.Generator().manual_seed(5)
    fused = NCMILoss(4, 12, temperature=0.3, centroid_map=centroid_map, ratio=ratio,
                     ema_decay=0.8, centroid_lr=0.5, centroid_momentum=0.9)
    ref_w = fused.w.detach().double().requires_grad_(True)
    ref_mu, ref_v = torch.zeros(12, dtype=torch.float64), torch.zeros_like(ref_w)
    close = {"rtol": 2e-5, "atol": 1e-6}
    for step in range(3):
        z = torch.randn(9, 12, generator=g) * 2
        y = torch.randint(0, 4, (9,), generator=g)
        zf = z.clone().requires_grad_(True)
        out = fused.compute(zf, y)
        out.loss.backward()
        fused.centroid_step()

        z64 = z.double()
        ref_mu = z64.mean(0) if step == 0 else 0.8 * ref_mu + 0.2 * z64.mean(0)
        zr = z64.clone().requires_grad_(True)
        zc = zr - ref_mu
        log_p = log_nsf(zc / (zc.norm(dim=1, keepdim=True) * 0.3))
        log_q = log_nsf(ref_w) if centroid_map == "nsf" else torch.log_softmax(ref_w, 1)
        d, sep = fused.terms(log_p, log_q, y)
        want = fused.ratio_loss(d, sep)
        want.backward()
        with torch.no_grad():
            ref_v.mul_(0.9).add_(ref_w.grad)
            ref_w.sub_(ref_v, alpha=0.5)
            ref_w.grad = None
        for got, ref in [(out.loss, want), (out.terms["concentration"], d.mean()),
                         (out.terms["separation"], sep.mean()), (zf.grad, zr.grad),
                         (fused.mu, ref_mu), (fused.w, ref_w)]:
            torch.testing.assert_close(got.detach().double(), ref.detach(), **close)
