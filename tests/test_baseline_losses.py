"""The NCMI paper's other baselines — OPL, squentropy, the square loss, SupCon — against NumPy
loops written from each paper's formula, their gradients, invariances and edge cases, and
each one learning through the real trainer and evaluated with the heads that fit it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from wsi_ncmi.errors import InputError
from wsi_ncmi.formats.config import LOSS_LR, load_config, resolve_config, single_lr
from wsi_ncmi.model.losses import get_loss
from wsi_ncmi.model.losses.opl import orthogonal_projection
from wsi_ncmi.model.losses.square import rescaled_square
from wsi_ncmi.model.losses.squentropy import incorrect_class_square
from wsi_ncmi.model.losses.supcon import supervised_contrastive
from wsi_ncmi.model.lossnames import LOSS_NAMES
from wsi_ncmi.stages.evaluate import evaluate_run
from wsi_ncmi.stages.train import resolved_loss_section, train_run
from wsi_ncmi.stats.simplex import centroid_scores as centroid_head_scores

REPO = Path(__file__).resolve().parents[1]
NEW = ["opl", "squentropy", "square", "supcon"]
WITH_CLASSIFIER = ["opl", "squentropy", "square"]


# --- NumPy references, written from the papers' formulas -------------------------------------

def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def np_ce(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([-np_log_softmax(logits)[i, y[i]] for i in range(len(y))]))


def np_opl(z: np.ndarray, y: np.ndarray, gamma: float) -> float:
    """Ranasinghe et al. (1 − s) + γ|d|: s, d = mean cosine over same-/different-class pairs."""
    f = [zi / np.linalg.norm(zi) for zi in z]
    same, diff = [], []
    for i in range(len(y)):
        for j in range(len(y)):
            if i == j:
                continue
            (same if y[i] == y[j] else diff).append(float(f[i] @ f[j]))
    s = np.mean(same) if same else 0.0
    d = np.mean(diff) if diff else 0.0
    return (1 - s) + gamma * abs(d)


def np_squentropy(logits: np.ndarray, y: np.ndarray) -> float:
    """Hui et al. 2023: CE + 1/(C−1) Σ_{j≠y} f_j², averaged over samples."""
    n_classes = logits.shape[1]
    sq = [sum(logits[i, j] ** 2 for j in range(n_classes) if j != y[i]) / (n_classes - 1)
          for i in range(len(y))]
    return np_ce(logits, y) + float(np.mean(sq))


def np_square(logits: np.ndarray, y: np.ndarray, k: float, m: float) -> float:
    """Hui & Belkin 2021: 1/C [k (f_y − M)² + Σ_{j≠y} f_j²], averaged over samples."""
    n_classes = logits.shape[1]
    per = [(k * (logits[i, y[i]] - m) ** 2
            + sum(logits[i, j] ** 2 for j in range(n_classes) if j != y[i])) / n_classes
           for i in range(len(y))]
    return float(np.mean(per))


def np_supcon(v: np.ndarray, y: np.ndarray, tau: float) -> float:
    """Khosla et al. L_out: −1/|P(i)| Σ_p log(exp(v_i·v_p/τ) / Σ_{a≠i} exp(v_i·v_a/τ)),
    averaged over the anchors that have a positive."""
    losses = []
    for i in range(len(y)):
        others = [a for a in range(len(y)) if a != i]
        positives = [p for p in others if y[p] == y[i]]
        if not positives:
            continue
        denom = sum(np.exp(v[i] @ v[a] / tau) for a in others)
        losses.append(-np.mean([np.log(np.exp(v[i] @ v[p] / tau) / denom)
                                for p in positives]))
    return float(np.mean(losses)) if losses else 0.0


def np_logits(loss, z: np.ndarray) -> np.ndarray:
    w = loss.classifier.weight.detach().double().numpy()
    b = loss.classifier.bias.detach().double().numpy()
    return z @ w.T + b


def np_projection(loss, z: np.ndarray) -> np.ndarray:
    """v = normalize(W2 relu(W1 normalize(z) + b1) + b2) from the SupCon module's weights."""
    lin1, lin2 = loss.projection[0], loss.projection[2]
    r = z / np.linalg.norm(z, axis=1, keepdims=True)
    h = np.maximum(r @ lin1.weight.detach().double().numpy().T
                   + lin1.bias.detach().double().numpy(), 0)
    u = h @ lin2.weight.detach().double().numpy().T + lin2.bias.detach().double().numpy()
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def reference(name: str, loss, z: np.ndarray, y: np.ndarray) -> float:
    """The whole training loss of ``loss`` (built as ``name``) in float64 NumPy."""
    if name == "supcon":
        return np_supcon(np_projection(loss, z), y, loss.temperature)
    logits = np_logits(loss, z)
    if name == "opl":
        return np_ce(logits, y) + loss.opl_weight * np_opl(z, y, loss.gamma)
    if name == "squentropy":
        return np_squentropy(logits, y)
    return np_square(logits, y, loss.correct_weight, loss.correct_target)


SETTINGS = {"opl": {"opl_weight": 0.7, "gamma": 0.3}, "squentropy": {},
            "square": {"correct_weight": 3.0, "correct_target": 2.0},
            "supcon": {"temperature": 0.2, "proj_dim": 5}}
BATCHES = {
    "mixed, a class absent, anchors without positives": [0, 0, 1, 3, 3, 3, 1, 2, 0],
    "two classes of four present": [1, 1, 1, 2, 2],
    "all labels different": [0, 1, 2, 3],
}


def batch(labels: list[int], m: int = 6, seed: int = 0, negative: bool = True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(labels), m, generator=g) * 2
    if not negative:
        z = z.abs()
    return z, torch.tensor(labels)


# --- values --------------------------------------------------------------------------------

@pytest.mark.parametrize("labels", list(BATCHES.values()), ids=list(BATCHES))
@pytest.mark.parametrize("name", NEW)
def test_loss_matches_the_papers_formula(name, labels):
    torch.manual_seed(1)
    loss = get_loss(name, 4, 6, **SETTINGS[name])
    z, y = batch(labels)
    got = loss(z, y).item()
    want = reference(name, loss, z.double().numpy(), y.numpy())
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", NEW)
def test_defaults_match_the_papers_formula_on_nonnegative_embeddings(name):
    """At the defaults and on z ≥ 0, as the gated-ABMIL aggregator produces."""
    torch.manual_seed(2)
    loss = get_loss(name, 3, 8)
    z, y = batch([0, 1, 2, 0, 1, 2, 2, 0], m=8, negative=False)
    assert loss(z, y).item() == pytest.approx(reference(name, loss, z.double().numpy(),
                                                        y.numpy()), rel=1e-5)


def test_defaults_are_the_papers_but_supcons_temperature():
    assert get_loss("opl", 3, 8).settings() == {"opl_weight": 1.0, "gamma": 0.5}
    assert get_loss("squentropy", 3, 8).settings() == {}
    assert get_loss("square", 3, 8).settings() == {"correct_weight": 1.0,
                                                   "correct_target": 1.0}
    assert get_loss("supcon", 3, 8).settings() == {"temperature": 0.5, "proj_dim": 128}


def test_square_loss_at_k_m_one_is_mse_against_one_hot():
    logits = torch.randn(7, 4)
    y = torch.tensor([0, 1, 2, 3, 3, 2, 0])
    torch.testing.assert_close(rescaled_square(logits, y),
                               F.mse_loss(logits, F.one_hot(y, 4).float()))


def test_opl_absolute_value_matters_only_for_negative_similarities():
    """z ≥ 0 (ABMIL) gives d ≥ 0; with d < 0 the term is (1 − s) + γ·|d|, not γ·d."""
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.9, 0.1]])
    y = torch.tensor([0, 1, 0])
    f = F.normalize(z, dim=1)
    s, d = float(f[0] @ f[2]), float((f[0] @ f[1] + f[2] @ f[1]) / 2)
    assert d < 0
    assert orthogonal_projection(z, y, 0.5).item() == pytest.approx((1 - s) + 0.5 * abs(d),
                                                                      rel=1e-6)


# --- gradients -----------------------------------------------------------------------------

def test_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(5)
    y = torch.tensor([0, 2, 2, 1, 0, 2])
    z = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: orthogonal_projection(t, y, 0.5), (z,))
    assert torch.autograd.gradcheck(
        lambda t: F.cross_entropy(t, y) + incorrect_class_square(t, y), (logits,))
    assert torch.autograd.gradcheck(lambda t: rescaled_square(t, y, 3.0, 2.0), (logits,))
    supcon = get_loss("supcon", 3, 5, temperature=0.3, proj_dim=4).double()
    assert torch.autograd.gradcheck(lambda t: supcon(t, y), (z,))
    params = tuple(supcon.parameters())
    assert torch.autograd.gradcheck(
        lambda *p: torch.func.functional_call(
            supcon, dict(zip([n for n, _ in supcon.named_parameters()], p, strict=True)),
            (z.detach(), y)), params)


@pytest.mark.parametrize("name", NEW)
def test_finite_gradients_at_extreme_embeddings(name):
    loss = get_loss(name, 3, 8)
    z = (torch.randn(6, 8) * 1e4).requires_grad_(True)
    out = loss.compute(z, torch.tensor([0, 1, 2, 0, 1, 2]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(z.grad).all()


# --- invariances ---------------------------------------------------------------------------

def test_opl_term_and_supcon_ignore_the_scale_of_each_embedding():
    torch.manual_seed(0)
    z, y = batch([0, 0, 1, 1, 2, 0])
    scale = torch.tensor([0.01, 3.0, 1.0, 50.0, 0.2, 7.0])[:, None]
    torch.testing.assert_close(orthogonal_projection(z * scale, y, 0.5),
                               orthogonal_projection(z, y, 0.5))
    supcon = get_loss("supcon", 3, 6)
    torch.testing.assert_close(supcon(z * scale, y), supcon(z, y))
    torch.testing.assert_close(supcon.outputs(z * scale).p, supcon.outputs(z).p)


@pytest.mark.parametrize("name", NEW)
def test_loss_is_invariant_to_the_order_of_the_batch(name):
    torch.manual_seed(0)
    loss = get_loss(name, 3, 6)
    z, y = batch([0, 0, 1, 1, 2, 0, 2])
    perm = torch.randperm(len(y))
    torch.testing.assert_close(loss(z[perm], y[perm]), loss(z, y))


# --- edge cases ----------------------------------------------------------------------------

def test_a_single_sample():
    torch.manual_seed(0)
    z, y = batch([2])
    opl = get_loss("opl", 3, 6, opl_weight=0.7)
    ce = F.cross_entropy(opl.classifier(z), y)
    torch.testing.assert_close(opl(z, y), ce + 0.7)  # s = d = 0: constant 1, no gradient
    for name in ("squentropy", "square"):
        loss = get_loss(name, 3, 6)
        assert loss(z, y).item() == pytest.approx(reference(name, loss, z.double().numpy(),
                                                            y.numpy()), rel=1e-5)
    supcon = get_loss("supcon", 3, 6)
    zg = z.clone().requires_grad_(True)
    out = supcon.compute(zg, y)
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.terms["anchors_with_positive"].item() == 0.0
    assert torch.equal(zg.grad, torch.zeros_like(zg))
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in supcon.parameters())


def test_supcon_without_positive_pairs_is_zero_with_a_usable_graph():
    z, y = batch([0, 1, 2])
    z.requires_grad_(True)
    supcon = get_loss("supcon", 3, 6)
    out = supcon.compute(z, y)
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_supcon_leaves_out_anchors_without_positives():
    """Bag 4 is alone in its class: it is no anchor, but a negative for every other bag."""
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 1, 1, 2])
    loss, share = supervised_contrastive(v, y, 0.5)
    assert share.item() == pytest.approx(0.8)
    sim = (v @ v.T / 0.5).numpy()

    def anchor(i: int, p: int) -> float:
        return -(sim[i, p] - np.log(sum(np.exp(sim[i, a]) for a in range(5) if a != i)))

    want = np.mean([anchor(0, 1), anchor(1, 0), anchor(2, 3), anchor(3, 2)])
    assert loss.item() == pytest.approx(want, rel=1e-10)
    without, _ = supervised_contrastive(v[:4], y[:4], 0.5)
    assert without.item() < loss.item()  # one negative fewer in every denominator


# --- interface and settings ----------------------------------------------------------------

@pytest.mark.parametrize("name", NEW)
def test_heads_and_settings(name):
    loss = get_loss(name, 3, 8)
    z, y = batch([0, 1, 2, 0, 1, 2], m=8)
    head = loss.compute(z, y).head
    torch.testing.assert_close(head.p.sum(1), torch.ones(6))
    torch.testing.assert_close(head.log_p.exp(), head.p)
    if name in WITH_CLASSIFIER:
        assert head.logits.shape == (6, 3) and head.p.shape == (6, 3)
        torch.testing.assert_close(head.p, torch.softmax(head.logits, 1))
    else:
        assert head.logits is None and head.p.shape == (6, 128)
        assert loss.temperature == 0.5
        v = loss.project(z)
        torch.testing.assert_close(head.p, torch.softmax(v / loss.temperature, 1))
    torch.testing.assert_close(loss.outputs(z).p, head.p)
    assert get_loss(name, 3, 8, **loss.settings()).settings() == loss.settings()


@pytest.mark.parametrize(("name", "settings", "match"), [
    ("opl", {"gamma": -0.1}, "gamma"), ("opl", {"opl_weight": "1"}, "opl_weight"),
    ("square", {"correct_weight": 0.0}, "correct_weight"),
    ("square", {"correct_target": -1.0}, "correct_target"),
    ("supcon", {"temperature": 0.0}, "temperature"), ("supcon", {"proj_dim": 1}, "proj_dim"),
    ("supcon", {"proj_dim": 2.5}, "proj_dim"), ("squentropy", {"gamma": 1.0}, "unknown")])
def test_bad_settings_are_refused(name, settings, match):
    with pytest.raises(InputError, match=match):
        get_loss(name, 3, 8, **settings)


@pytest.mark.parametrize("name", NEW)
def test_training_config_resolves(name):
    cfg = resolve_config(load_config([REPO / "configs" / f"train_{name}.yaml"]))
    section = resolved_loss_section(cfg, 3)
    assert section == {"name": name, name: get_loss(name, 3, 128).settings()}


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_training_config_spells_out_the_code_defaults(name):
    spelled = resolve_config(load_config([REPO / "configs" / f"train_{name}.yaml"]))
    default = resolve_config({"loss": {"name": name}})
    assert spelled["optim"] == default["optim"]
    assert spelled["model"] == default["model"]


def test_default_lr_is_chosen_on_validation_unless_the_config_sets_one():
    assert set(LOSS_LR) == set(LOSS_NAMES)
    default = resolve_config({"loss": {"name": "ce"}})["optim"]
    assert default["lr"] == "auto" and default["lr_grid"] == [3e-4, 1e-3, 3e-3, 1e-2, 2e-2]
    assert single_lr(resolve_config({"loss": {"name": "ncmi"}})) == 1e-2
    unset = {"loss": {"name": "supcon"}, "optim": {"lr": None}}
    assert resolve_config(unset)["optim"]["lr"] == 1e-3
    assert resolve_config({"loss": {"name": "ncmi"}, "optim": {"lr": None}})["optim"]["lr"] == 1e-2
    assert resolve_config({"loss": {"name": "ce"}, "optim": {"lr": None}})["optim"]["lr"] == 3e-4
    assert resolve_config({"loss": {"name": "ce"}, "optim": {"lr": 5e-4}})["optim"]["lr"] == 5e-4
    for bad in (0, "fast"):
        with pytest.raises(InputError, match="optim.lr must be > 0, null or auto"):
            resolve_config({"loss": {"name": "ce"}, "optim": {"lr": bad}})
    for grid in ([], [1e-3, 1e-3], [1e-3, -1.0], 1e-3):
        with pytest.raises(InputError, match="optim.lr_grid must be a list of distinct lrs"):
            resolve_config({"optim": {"lr_grid": grid}})


def test_the_square_loss_has_its_own_dropout_and_weight_decay(tmp_path, caplog):
    square = resolve_config({"loss": {"name": "square"}})
    assert (square["model"]["dropout"], square["optim"]["weight_decay"]) == (0.4, 0.025)
    for other in ({"loss": {"name": "ce"}}, {}):
        cfg = resolve_config(other)
        assert (cfg["model"]["dropout"], cfg["optim"]["weight_decay"]) == (0.1, 1e-3)
    mine = resolve_config({"loss": {"name": "square"}, "model": {"dropout": 0.2}})
    assert (mine["model"]["dropout"], mine["optim"]["weight_decay"]) == (0.2, 0.025)
    run_config = tmp_path / "config.yaml"
    run_config.write_text("loss: {name: square}\nmodel: {dropout: 0.4}\n"
                          "optim: {lr: auto, weight_decay: 0.025}\n")
    with caplog.at_level("WARNING", logger="wsi_ncmi.formats.config"):
        raw = load_config([run_config], {"loss": {"name": "ce"}})
    assert resolve_config(raw)["optim"]["weight_decay"] == 0.025
    assert "optim.weight_decay 0.025 (loss square's default); loss ce trains with it, not " \
        "with its default 0.001" in caplog.text
    assert "model.dropout 0.4 (loss square's default)" in caplog.text


def test_another_losses_lr_is_kept_with_a_warning(tmp_path, caplog):
    run_config = tmp_path / "config.yaml"
    run_config.write_text("loss: {name: ncmi}\noptim: {lr: 0.003}\n")
    with caplog.at_level("WARNING", logger="wsi_ncmi.formats.config"):
        raw = load_config([run_config], {"loss": {"name": "ce"}})
    assert resolve_config(raw)["optim"]["lr"] == 0.003
    assert "optim.lr 0.003 (loss ncmi); loss ce trains with it, not with its default 0.0003" \
        in caplog.text
    caplog.clear()
    assert resolve_config(load_config([REPO / "configs" / "train_ncmi.yaml"],
                                      {"loss": {"name": "ce"}}))["optim"]["lr"] == "auto"
    assert not caplog.text


def test_supcon_refuses_one_bag_per_step():
    cfg = resolve_config({"loss": {"name": "supcon"}, "optim": {"batch_size": 1}})
    with pytest.raises(InputError, match="batch_size must be ≥ 2 for the supcon loss"):
        resolved_loss_section(cfg, 3)


# --- learning through the trainer, and evaluation -----------------------------------------

D = 8


def write_cohort(root: Path, per_class: int = 15, n_classes: int = 3) -> Path:
    """Bags of 10–30 tiles of N(0, I_D) noise; in a bag of class c half of the tiles are
    shifted by 4 along axis c (an easy set). One slide per patient; by index, 3 of every 5
    slides of a class train, 1 validates, 1 tests."""
    rng = np.random.default_rng(0)
    (root / "features").mkdir(parents=True)
    rows = []
    for c in range(n_classes):
        for j in range(per_class):
            n = int(rng.integers(10, 31))
            x = rng.standard_normal((n, D))
            x[rng.choice(n, n // 2, replace=False), c] += 4.0
            sid = f"slide_{c}_{j:02d}"
            with h5py.File(root / "features" / f"{sid}.h5", "w") as f:
                f["features"] = x.astype(np.float32)
                f["coords"] = np.arange(2 * n, dtype=np.int64).reshape(-1, 2) * 224
                f.attrs["encoder"] = "toy"
            rows.append({"slide_id": sid, "path": f"{sid}.svs", "label": f"type{c}",
                         "patient_id": f"pt_{c}_{j}",
                         "split": ("train", "train", "train", "val", "test")[j % 5]})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("baselines")
    manifest = write_cohort(root)
    cfg = {"model": {"embed_dim": 16, "attn_dim": 8},
           "optim": {"epochs": 8, "lr": 1e-2, "batch_size": 8, "max_tiles": 24},
           "data": {"eval_batch_size": 16}, "device": "cpu"}
    return {"features": root / "features", "manifest": manifest,
            "runs": {name: train_run({**cfg, "loss": {"name": name}}, root / name,
                                     root / "features", manifest) for name in NEW}}


@pytest.mark.parametrize("name", NEW)
def test_each_loss_learns_through_the_trainer(runs, name):
    """The training loss falls, and the validation head (own classifier, else the centroid
    head) separates the held-out slides."""
    fold = runs["runs"][name] / "fold_0"
    with (fold / "history.csv").open() as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert np.mean(losses[-3:]) < 0.8 * losses[0]
    meta = json.loads((fold / "model.json").read_text())
    assert meta["validation_head"] == ("centroid" if name == "supcon" else "classifier")
    emb = np.load(fold / "embeddings.npz")
    df = pd.read_csv(runs["manifest"]).set_index("slide_id")
    test = [i for i, s in enumerate(emb["slide_id"]) if df.loc[s, "split"] == "test"]
    y = np.array([meta["classes"].index(df.loc[emb["slide_id"][i], "label"]) for i in test])
    if "logits" in emb.files:
        pred = emb["logits"][test].argmax(1)
    else:
        pred = centroid_head_scores(emb["p"][test], np.array(meta["centroid_head_means"]))
        pred = pred.argmax(1)
    assert len(y) == 9
    assert f1_score(y, pred, average="macro") >= 0.8  # chance: 1/3
    assert meta["best_val_macro_f1"] >= 0.8


@pytest.mark.parametrize("name", NEW)
def test_evaluation_scores_the_heads_that_fit(runs, name):
    out = evaluate_run(runs["runs"][name], "test", runs["features"], runs["manifest"],
                       n_boot=20, seed=0, device="cpu")
    metrics = json.loads((out / "metrics.json").read_text())
    want = ["linear_probe", "centroid"] + (["classifier"] if name in WITH_CLASSIFIER else [])
    assert list(metrics["heads"]) == want
    assert metrics["loss"] == name
    assert metrics["heads"]["linear_probe"]["macro_f1"]["value"] >= 0.8
    k = 128 if name == "supcon" else 3
    assert metrics["folds"][0]["fit"]["centroid"]["outputs"] == f"p ({k}-simplex)"
