"""The train stage on synthetic feature files: learning, run folder, determinism, input
checks, split reuse, inference round trip and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from cli import run_cli
from safetensors.torch import load_file
from sklearn.metrics import f1_score

from wsi_ncmi.errors import InputError
from wsi_ncmi.formats.config import load_config, resolve_config
from wsi_ncmi.model.bags import inspect_bag, read_bag
from wsi_ncmi.model.fit import epoch_order
from wsi_ncmi.model.inference import load_fold, run_model
from wsi_ncmi.stages.train import train_run
from wsi_ncmi.stages.verify import read_record, verify_record
from wsi_ncmi.stats.simplex import centroid_scores as centroid_head_scores

D = 8
FAST = {"model": {"embed_dim": 16, "attn_dim": 8},
        "optim": {"epochs": 25, "lr": 5e-3, "batch_size": 8, "max_tiles": 24, "patience": 25},
        "device": "cpu"}
CONTRACT_COLUMNS = ["epoch", "cmi", "gamma", "ncmi", "z_norm", "centre_gap", "centroid_shift",
                    "val_macro_f1", "val_auc", "lr", "seconds"]


def write_bag(path: Path, features: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f["features"] = features
        f["coords"] = np.arange(2 * len(features), dtype=np.int64).reshape(-1, 2) * 224
        f.attrs["encoder"] = "toy"


def write_cohort(root: Path, per_class: int = 24, n_classes: int = 3, seed: int = 0) -> Path:
    """Bags of 10–30 tiles of N(0, I_D) noise; in class c ≥ 1 a quarter of the tiles are
    shifted by 4 along axis c − 1. Two slides per patient; patients split 60/20/20 into
    train/val/test within each class. Returns the manifest path."""
    rng = np.random.default_rng(seed)
    (root / "features").mkdir(parents=True)
    rows = []
    for c in range(n_classes):
        for j in range(per_class):
            n = int(rng.integers(10, 31))
            x = rng.standard_normal((n, D))
            if c > 0:
                x[rng.choice(n, n // 4, replace=False), c - 1] += 4.0
            sid = f"slide_{c}_{j:02d}"
            write_bag(root / "features" / f"{sid}.h5", x.astype(np.float32))
            patient = j // 2
            part = "test" if patient % 5 == 4 else "val" if patient % 5 == 3 else "train"
            rows.append({"slide_id": sid, "path": f"{sid}.svs", "label": f"type{c}",
                         "patient_id": f"pt_{c}_{patient}", "split": part})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def read_history(run: Path, fold: int = 0) -> list[dict]:
    with (run / f"fold_{fold}" / "history.csv").open() as f:
        return list(csv.DictReader(f))


def held_out_predictions(run: Path, manifest: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predictions) of fold 0's test slides: own classifier, else centroid head."""
    emb = np.load(run / "fold_0" / "embeddings.npz")
    meta = json.loads((run / "fold_0" / "model.json").read_text())
    df = pd.read_csv(manifest)
    test_ids = set(df.loc[df["split"] == "test", "slide_id"])
    idx = [i for i, s in enumerate(emb["slide_id"]) if s in test_ids]
    label = dict(zip(df["slide_id"], df["label"], strict=True))
    y = np.array([meta["classes"].index(label[emb["slide_id"][i]]) for i in idx])
    if "logits" in emb.files:
        return y, emb["logits"][idx].argmax(1)
    means = np.array(meta["centroid_head_means"])
    return y, centroid_head_scores(emb["p"][idx], means).argmax(1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cohort")
    return root / "features", write_cohort(root)


@pytest.fixture(scope="module")
def runs(cohort, tmp_path_factory) -> dict[str, Path]:
    features, manifest = cohort
    out = tmp_path_factory.mktemp("runs")
    return {loss: train_run({**FAST, "loss": {"name": loss}}, out / loss, features, manifest)
            for loss in ("ce", "ncmi")}


@pytest.mark.parametrize("loss", ["ce", "ncmi"])
def test_both_losses_learn_the_signal_on_held_out_slides(runs, cohort, loss):
    y, pred = held_out_predictions(runs[loss], cohort[1])
    assert len(y) == 12
    assert f1_score(y, pred, average="macro") >= 0.9
    assert max(float(r["val_macro_f1"]) for r in read_history(runs[loss])) >= 0.9


def test_run_folder_holds_config_splits_model_history_embeddings(runs, cohort):
    run = runs["ncmi"]
    for name in ("config.yaml", "splits.json", "provenance.json"):
        assert (run / name).is_file()
    assert verify_record(run / "provenance.json").problems == []
    record = read_record(run / "provenance.json")
    assert len(record["inputs"]) == 1 + 72  # the manifest and every feature file
    assert any(o["path"].endswith("model.safetensors") for o in record["outputs"])
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["task"]["classes"] == ["type0", "type1", "type2"]
    assert cfg["loss"]["ncmi"]["centroid_mode"] == "learned"
    assert cfg["loss"]["ncmi"]["temperature"] == 0.25
    assert cfg["optim"]["max_tiles"] == 24 and cfg["seed"] == 0
    assert Path(cfg["data"]["features_dir"]) == cohort[0].resolve()
    assert resolve_config(load_config([run / "config.yaml"])) == cfg  # reusable as a config

    meta = json.loads((run / "fold_0" / "model.json").read_text())
    assert meta["loss"] == "ncmi" and meta["feature_dim"] == D and meta["embed_dim"] == 16
    assert meta["encoder"] == "toy"
    assert (meta["centroid_mode"], meta["centroid_map"], meta["temperature"]) == (
        "learned", "nsf", 0.25)
    assert np.array(meta["centroid_head_means"]).shape == (3, 16)

    weights = load_file(run / "fold_0" / "model.safetensors")
    assert weights["head.w"].shape == (3, 16) and weights["head.mu"].shape == (16,)
    assert bool(weights["head.mu_set"])

    history = read_history(run)
    assert all(c in history[0] for c in CONTRACT_COLUMNS)
    assert {"train_loss", "train_concentration", "train_separation"} <= set(history[0])
    assert [int(r["epoch"]) for r in history] == list(range(1, len(history) + 1))
    assert all(float(r["z_norm"]) > 0 and float(r["centre_gap"]) >= 0 for r in history)

    emb = np.load(run / "fold_0" / "embeddings.npz")
    assert sorted(emb["slide_id"]) == sorted(pd.read_csv(cohort[1])["slide_id"])
    assert emb["z"].shape == (72, 16) and emb["p"].shape == (72, 16)
    np.testing.assert_allclose(emb["p"].sum(1), 1.0, rtol=1e-5)

    ce_emb = np.load(runs["ce"] / "fold_0" / "embeddings.npz")
    assert ce_emb["p"].shape == (72, 3) and ce_emb["logits"].shape == (72, 3)
    assert read_history(runs["ce"])[0]["centre_gap"] == ""


def test_learned_centroids_move_during_training(runs):
    history = read_history(runs["ncmi"])
    warmup = 3  # ceil(0.1 · 25) epochs without q-steps
    assert all(float(r["centroid_shift"]) == 0 for r in history[:warmup])
    assert float(history[-1]["centroid_shift"]) > 0.01


@pytest.mark.parametrize("init", ["onehot", "data"])
def test_fixed_centroids_never_move_after_their_initialisation(cohort, tmp_path, init):
    features, manifest = cohort
    cfg = {**FAST, "optim": {**FAST["optim"], "epochs": 4},
           "loss": {"name": "ncmi", "ncmi": {"centroid_mode": "fixed", "centroid_init": init,
                                             "centroid_warmup": 0.5}}}
    run = train_run(cfg, tmp_path / "run", features, manifest)
    assert all(float(r["centroid_shift"]) == 0 for r in read_history(run))
    w = load_file(run / "fold_0" / "model.safetensors")["head.w"]
    onehot = 10 * torch.eye(3, 16) + 1e-6
    assert torch.equal(w, onehot) == (init == "onehot")


def test_loaded_fold_reproduces_the_training_embeddings(runs, cohort):
    features, _ = cohort
    emb = np.load(runs["ncmi"] / "fold_0" / "embeddings.npz")
    loaded = load_fold(runs["ncmi"] / "fold_0")
    ids = list(emb["slide_id"][:10])
    out = run_model(loaded, features, ids, batch_size=3)
    assert out["slide_id"] == ids
    np.testing.assert_allclose(out["z"], emb["z"][:10], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["p"], emb["p"][:10], rtol=1e-5, atol=1e-7)
    assert out["z_tilde"].shape == (10, 16) and out["logits"] is None
    for sid, att in zip(ids, out["attention"], strict=True):
        assert att.shape == (inspect_bag(features / f"{sid}.h5").n_tiles,)
        assert att.sum() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(InputError, match="nope"):
        run_model(loaded, features, ["nope"])


@pytest.mark.parametrize("loss", ["ce", "ncmi"])
def test_outputs_follow_the_given_order_whatever_the_bag_sizes(runs, cohort, loss):
    """Bags are batched by size (less padding); the outputs still come in the caller's order
    (a repeated slide included) and equal one bag at a time."""
    features, _ = cohort
    loaded = load_fold(runs[loss] / "fold_0")
    ids = sorted(p.stem for p in features.glob("*.h5"))[::-1][:12]
    ids.insert(5, ids[0])
    assert len({inspect_bag(features / f"{s}.h5").n_tiles for s in ids}) > 3
    together = run_model(loaded, features, ids, batch_size=4)
    assert together["slide_id"] == ids
    for i, sid in enumerate(ids):
        alone = run_model(loaded, features, [sid], batch_size=1)
        for key in ("z", "p", "logits", "z_tilde"):
            if alone[key] is not None:
                np.testing.assert_allclose(together[key][i], alone[key][0], rtol=1e-5,
                                           atol=1e-6)
        np.testing.assert_allclose(together["attention"][i], alone["attention"][0],
                                   rtol=1e-5, atol=1e-7)


def test_same_seed_gives_identical_history_and_weights_cached_or_streamed(cohort, tmp_path):
    features, manifest = cohort
    cfg = {**FAST, "optim": {**FAST["optim"], "epochs": 4}, "loss": {"name": "ncmi"}}
    a = train_run(cfg, tmp_path / "a", features, manifest)
    b = train_run({**cfg, "data": {"cache_max_gb": 0}}, tmp_path / "b", features, manifest)
    c = train_run({**cfg, "seed": 1}, tmp_path / "c", features, manifest)

    def numbers(run):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_history(run)]

    assert numbers(a) == numbers(b)
    assert numbers(a) != numbers(c)
    wa, wb = (load_file(r / "fold_0" / "model.safetensors") for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_every_bad_slide_is_listed_before_training(tmp_path):
    manifest = write_cohort(tmp_path, per_class=10)
    df = pd.read_csv(manifest)
    features = tmp_path / "features"
    (features / "slide_0_00.h5").unlink()
    write_bag(features / "slide_0_01.h5", np.zeros((0, D), np.float32))
    (features / "slide_0_02.h5").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    df.loc[df["slide_id"] == "slide_1_00", "label"] = "mystery"
    df.loc[(df["label"] == "type2") & (df["split"] == "train"), "split"] = "test"
    df.to_csv(manifest, index=False)
    cfg = {**FAST, "loss": {"name": "ce"}, "task": {"classes": ["type0", "type1", "type2"]}}
    with pytest.raises(InputError) as err:
        train_run(cfg, tmp_path / "run", features, manifest)
    message = str(err.value)
    assert "\n" not in message
    for expected in ("slide_0_00", "feature file not found", "slide_0_01", "empty bag",
                     "slide_0_02", "unreadable HDF5", "slide_1_00", "unknown label 'mystery'"):
        assert expected in message
    assert not (tmp_path / "run").exists()

    df.loc[df["slide_id"] == "slide_1_00", "label"] = "type1"
    df.to_csv(manifest, index=False)
    with pytest.raises(InputError, match=r"class\(es\) type2 absent from the training split"):
        train_run(cfg, tmp_path / "run", features, manifest)


def test_reused_splits_are_revalidated(runs, cohort, tmp_path):
    features, manifest = cohort
    splits = json.loads((runs["ce"] / "splits.json").read_text())
    fold = splits["folds"][0]
    moved = next(s for s in fold["test"] if s.endswith("_09"))  # patient 4's second slide
    fold["test"].remove(moved)
    fold["train"].append(moved)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(InputError, match="patient.*several parts"):
        train_run({**FAST, "loss": {"name": "ce"}}, tmp_path / "run", features, manifest)
    assert not (tmp_path / "run" / "fold_0").exists()


def test_balanced_sampling_equalises_classes():
    ids = [f"s{i}" for i in range(100)]
    y = np.array([0] * 80 + [1] * 15 + [2] * 5)
    rng = np.random.default_rng(0)
    drawn = [int(s[1:]) for _ in range(20) for s in epoch_order(ids, y, True, rng)]
    share = np.bincount(y[drawn], minlength=3) / len(drawn)
    np.testing.assert_allclose(share, 1 / 3, atol=0.03)
    assert sorted(epoch_order(ids, y, False, rng)) == sorted(ids)


def test_feature_files_with_a_batch_axis_are_read(tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 5, D)).astype(np.float32)
    with h5py.File(tmp_path / "clam.h5", "w") as f:
        f["features"] = x
        f["coords"] = np.zeros((1, 5, 2), np.int64)
    assert inspect_bag(tmp_path / "clam.h5").n_tiles == 5
    torch.testing.assert_close(read_bag(tmp_path / "clam.h5"),
                               torch.from_numpy(x[0]).half())


def test_cli_trains_k_folds_and_writes_the_run_folder(cohort, tmp_path):
    features, manifest = cohort
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({**FAST, "optim": {**FAST["optim"], "epochs": 3}}))
    run = tmp_path / "run"
    args = ["train", "--features", str(features), "--manifest", str(manifest), "--loss", "ncmi",
            "--out", str(run), "--config", str(config), "--folds", "2", "--seed", "3"]
    run_cli(*args)
    splits = json.loads((run / "splits.json").read_text())
    assert splits["method"] == "kfold" and splits["seed"] == 3 and len(splits["folds"]) == 2
    for k in (0, 1):
        for name in ("model.safetensors", "model.json", "history.csv", "embeddings.npz"):
            assert (run / f"fold_{k}" / name).is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["split"]["k"] == 2

    bad = run_cli(*args[:-4], "--folds", "2", "--group-column", "centre", check=False)
    assert bad.returncode == 2 and "choose one split" in bad.output
