"""Several training seeds: the seed-paired bootstrap against hand computations and an
independent NumPy loop, and `train --seeds` → `eval` → `compare` on synthetic bags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cli import run_cli
from sklearn.metrics import accuracy_score, f1_score
from toy_bags import write_toy_bags

from wsi_ncmi.errors import InputError
from wsi_ncmi.stages.compare import compare_runs
from wsi_ncmi.stats.bootstrap import (
    resampling_units,
    seed_mean_metrics,
    seed_paired_difference,
)
from wsi_ncmi.stats.metrics import SCALARS


def one_hot(pred: list[int], n_classes: int = 2, p: float = 0.8) -> np.ndarray:
    """Scores with ``p`` on the predicted class, the rest spread evenly."""
    out = np.full((len(pred), n_classes), (1 - p) / (n_classes - 1))
    out[np.arange(len(pred)), pred] = p
    return out


def test_seed_paired_point_estimates_by_hand():
    y = np.array([0, 0, 1, 1])
    units = resampling_units(["a", "b", "c", "d"], ["p1", "p2", "p3", "p4"])
    right = one_hot([0, 0, 1, 1])
    a = [one_hot([0, 0, 1, 0]), right]  # seed 0: A misses slide d; seed 1: A is right
    b = [right, right]
    diff = seed_paired_difference(y, a, b, units, 200, seed=0)
    # seed 0: A's macro-F1 = (F1 class 0 = 4/5 + F1 class 1 = 2/3) / 2 = 11/15, B's = 1
    assert diff["macro_f1"]["per_seed"] == pytest.approx([4 / 15, 0.0], abs=1e-12)
    assert diff["macro_f1"]["diff"] == pytest.approx(2 / 15, abs=1e-12)
    assert diff["macro_f1"]["a"] == pytest.approx((11 / 15 + 1) / 2, abs=1e-12)
    assert diff["accuracy"]["diff"] == pytest.approx((0.25 + 0) / 2, abs=1e-12)
    entry = diff["accuracy"]
    assert (entry["n_seeds"], entry["b_better"], entry["ties"]) == (2, 1, 1)
    # a replicate's accuracy difference is (draws of patient d) / 4 / 2: no d in a draw has
    # probability (3/4)^4 = 0.32 (so the 2.5th percentile is 0), three or four d's 0.051
    lo, hi = entry["ci95"]
    assert lo == 0 and 0.25 <= hi <= 0.5


def test_one_patient_draw_per_replicate_is_shared_by_every_seed():
    """Seed 1 swaps the runs of seed 0: B − A is +d in one seed and −d in the other on every
    draw, so the mean over seeds is exactly 0 in every replicate when the draw is shared
    (the documented choice); independent draws per seed would give a wide interval."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    x = rng.dirichlet(np.ones(3), 60)
    z = rng.dirichlet(np.ones(3), 60)
    units = resampling_units([f"s{i}" for i in range(60)], [f"p{i // 2}" for i in range(60)])
    diff = seed_paired_difference(y, [x, z], [z, x], units, 300, seed=1)
    for name in SCALARS:
        d = diff[name]["per_seed"]
        assert d[0] == -d[1] and diff[name]["diff"] == 0
        assert diff[name]["ci95"] == [0, 0]
        assert diff[name]["b_better"] == (1 if d[0] != 0 else 0)
    independent = [seed_paired_difference(y, [x], [z], units, 300, seed=s)["macro_f1"]
                   for s in (1, 2)]
    assert all(e["ci95"][1] - e["ci95"][0] > 0.05 for e in independent)
    assert all(e["ci95_seeds"] is None for e in independent)  # one seed: nothing to resample
    # resampling the seeds as well draws seed 0 twice or seed 1 twice in half the replicates:
    # the recipes' interval spans the seeds' disagreement, ±|d| around 0
    d = abs(diff["macro_f1"]["per_seed"][0])
    lo, hi = diff["macro_f1"]["ci95_seeds"]
    assert d > 0 and lo < 0 < hi


def test_seeds_interval_equals_the_patient_interval_when_the_seeds_agree():
    """Seeds that are copies of one another: drawing seeds changes no replicate's mean."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 40)
    x, z = rng.dirichlet(np.ones(3), 40), rng.dirichlet(np.ones(3), 40)
    units = resampling_units([f"s{i}" for i in range(40)], None)
    diff = seed_paired_difference(y, [x, x, x], [z, z, z], units, 200, seed=2)
    for name in SCALARS:
        assert diff[name]["ci95_seeds"] == pytest.approx(diff[name]["ci95"], abs=1e-12)


def numpy_macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean of 2·tp / (2·tp + fp + fn) over the classes present in ``y`` or ``pred``."""
    f1 = [2 * np.sum((y == c) & (pred == c))
          / (2 * np.sum((y == c) & (pred == c)) + np.sum((y != c) & (pred == c))
             + np.sum((y == c) & (pred != c)))
          for c in np.union1d(y, pred)]
    return float(np.mean(f1))


def test_seed_paired_interval_matches_an_independent_numpy_loop():
    rng = np.random.default_rng(11)
    n, n_seeds, n_boot, seed = 45, 3, 200, 5
    y = rng.integers(0, 3, n)
    patients = [f"p{i // 3:02d}" for i in range(n)]
    signal = np.eye(3)[y]

    def run(skill: float) -> np.ndarray:
        logits = skill * signal + rng.normal(size=(n, 3))
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    a = [run(0.5) for _ in range(n_seeds)]
    b = [run(1.5) for _ in range(n_seeds)]
    got = seed_paired_difference(y, a, b, resampling_units([f"s{i}" for i in range(n)],
                                                           patients), n_boot, seed)
    # the documented draw: per replicate, default_rng(seed).integers(0, U, U) patients (sorted
    # patient ids as unit numbers), each with all its slides, shared by every seed
    # and, for the interval over seeds too, per replicate default_rng([seed, 1]).integers(0,
    # S, S) seed pairs, after that replicate's patients
    names = sorted(set(patients))
    slides_of = [np.flatnonzero(np.array(patients) == p) for p in names]
    draws, seed_draws = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    means = {"macro_f1": [], "accuracy": []}
    seeds_means = {"macro_f1": [], "accuracy": []}
    for _ in range(n_boot):
        idx = np.concatenate([slides_of[u] for u in draws.integers(0, len(names), len(names))])
        drawn = seed_draws.integers(0, n_seeds, n_seeds)
        for name, metric in (("accuracy", lambda t, p: float(np.mean(t == p))),
                             ("macro_f1", numpy_macro_f1)):
            per_seed = np.array([metric(y[idx], sb[idx].argmax(1))
                                 - metric(y[idx], sa[idx].argmax(1))
                                 for sa, sb in zip(a, b, strict=True)])
            means[name].append(per_seed.mean())
            seeds_means[name].append(per_seed[drawn].mean())
    assert numpy_macro_f1(y, a[0].argmax(1)) == pytest.approx(
        f1_score(y, a[0].argmax(1), average="macro"), abs=1e-12)
    for name, values in means.items():
        assert got[name]["ci95"] == pytest.approx(np.percentile(values, [2.5, 97.5]),
                                                  abs=1e-12)
        assert got[name]["ci95_seeds"] == pytest.approx(
            np.percentile(seeds_means[name], [2.5, 97.5]), abs=1e-12)
        per_seed = [f1_score(y, sb.argmax(1), average="macro")
                    - f1_score(y, sa.argmax(1), average="macro") if name == "macro_f1" else
                    accuracy_score(y, sb.argmax(1)) - accuracy_score(y, sa.argmax(1))
                    for sa, sb in zip(a, b, strict=True)]
        assert got[name]["per_seed"] == pytest.approx(per_seed, abs=1e-12)
        assert got[name]["b_better"] == sum(d > 0 for d in per_seed)
    means_b = seed_mean_metrics(y, b, resampling_units([f"s{i}" for i in range(n)], patients),
                                n_boot, seed)
    assert means_b["macro_f1"]["value"] == pytest.approx(
        np.mean([f1_score(y, s.argmax(1), average="macro") for s in b]), abs=1e-12)
    assert means_b["macro_f1"]["seed_sd"] == pytest.approx(
        np.std([f1_score(y, s.argmax(1), average="macro") for s in b], ddof=1), abs=1e-12)


def write_cohort(root: Path, per_class: int = 12, dim: int = 6) -> tuple[Path, Path]:
    """Two classes of 8–16-tile bags (class 1: a third of its tiles shifted along axis 0),
    two slides per patient, no split column (the runs use k-fold splits)."""
    features = root / "features"
    rows = [{"slide_id": sid, "label": f"c{c}", "patient_id": f"p{c}_{j // 2}"}
            for sid, c, j in write_toy_bags(features, per_class, dim, 2.0, seed=2)]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return features, root / "manifest.csv"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """CE and NCMI trained with seeds 0 and 1 on 2 patient-grouped folds, evaluated."""
    root = tmp_path_factory.mktemp("seeds")
    features, manifest = write_cohort(root)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"embed_dim": 8, "attn_dim": 8},
        "optim": {"epochs": 2, "batch_size": 4, "lr": 5e-3},
        "split": {"method": "kfold", "k": 2, "val_fraction": 0.25},
        "data": {"eval_batch_size": 32}, "device": "cpu", "seed": 4}))
    runs = {}
    for loss in ("ce", "ncmi"):
        runs[loss] = root / loss
        run_cli("train", "--features", features, "--manifest", manifest, "--loss", loss,
                "--config", config, "--seeds", "0,1", "--out", runs[loss])
        run_cli("eval", runs[loss], "--n-boot", 20, "--device", "cpu")
    return {"root": root, "runs": runs, "features": features, "manifest": manifest,
            "config": config}


def test_seeds_share_their_splits_and_differ_in_training(seeded):
    run = seeded["runs"]["ce"]
    assert json.loads((run / "seeds.json").read_text())["seeds"] == [0, 1]
    splits = [json.loads((run / f"seed_{s}" / "splits.json").read_text()) for s in (0, 1)]
    assert splits[0] == splits[1] and splits[0]["seed"] == 4  # the config's seed splits
    cfgs = [yaml.safe_load((run / f"seed_{s}" / "config.yaml").read_text()) for s in (0, 1)]
    assert [c["seed"] for c in cfgs] == [0, 1] and all(c["split"]["seed"] == 4 for c in cfgs)
    histories = [pd.read_csv(run / f"seed_{s}" / "fold_0" / "history.csv") for s in (0, 1)]
    assert not np.allclose(histories[0]["train_loss"], histories[1]["train_loss"])
    table = pd.read_csv(run / "eval" / "test" / "seeds.csv")
    for s in (0, 1):
        metrics = json.loads((run / f"seed_{s}" / "eval" / "test" / "metrics.json").read_text())
        for head, entry in metrics["heads"].items():
            row = table[(table["seed"] == s) & (table["head"] == head)]
            assert row["macro_f1"].item() == pytest.approx(entry["macro_f1"]["value"])
    assert "2 seeds" in (run / "eval" / "test" / "report.md").read_text()


def test_compare_pairs_multi_seed_runs_by_seed(seeded, tmp_path):
    ce, ncmi = seeded["runs"]["ce"], seeded["runs"]["ncmi"]
    result = compare_runs([ce, ncmi], tmp_path / "cmp", head="centroid", n_boot=50)
    pair = result.pairs[0]

    def f1(run: Path, s: int) -> float:
        metrics = json.loads((run / f"seed_{s}" / "eval" / "test" / "metrics.json").read_text())
        return metrics["heads"]["centroid"]["macro_f1"]["value"]

    per_seed = [f1(ncmi, s) - f1(ce, s) for s in (0, 1)]
    assert pair["macro_f1"]["per_seed"] == pytest.approx(per_seed, abs=1e-12)
    assert pair["macro_f1"]["diff"] == pytest.approx(np.mean(per_seed), abs=1e-12)
    by_seed = pd.read_csv(tmp_path / "cmp" / "differences_by_seed.csv")
    rows = by_seed[by_seed["metric"] == "macro_f1"]
    assert rows["seed"].tolist() == [0, 1]
    assert rows["diff_b_minus_a"].tolist() == pytest.approx(per_seed, abs=1e-12)
    diffs = pd.read_csv(tmp_path / "cmp" / "differences.csv")
    row = diffs[diffs["metric"] == "macro_f1"]
    assert row["n_seeds"].item() == 2
    assert row["b_better_seeds"].item() == sum(d > 0 for d in per_seed)
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert table["n_seeds"].tolist() == [2, 2]
    assert table.loc[1, "macro_f1"] == pytest.approx(np.mean([f1(ncmi, s) for s in (0, 1)]))
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "**2 seeds** (0, 1)" in text and "One seed" not in text


def test_single_runs_say_one_seed_and_mixed_inputs_are_refused(seeded, tmp_path):
    ce, ncmi = seeded["runs"]["ce"], seeded["runs"]["ncmi"]
    single = compare_runs([ce / "seed_0", ncmi / "seed_0"], tmp_path / "one", n_boot=20)
    assert "**One seed.**" in single.text
    assert pd.read_csv(tmp_path / "one" / "differences.csv")["n_seeds"].eq(1).all()
    with pytest.raises(InputError, match="cannot pair multi-seed folders with single runs"):
        compare_runs([ce, ncmi / "seed_0"], tmp_path / "mixed")
    bad = run_cli("train", "--features", seeded["features"], "--manifest", seeded["manifest"],
                  "--out", tmp_path / "x", "--seed", 1, "--seeds", "0,1", check=False)
    assert bad.returncode == 2 and "choose --seed or --seeds" in bad.output
    bad = run_cli("train", "--features", seeded["features"], "--manifest", seeded["manifest"],
                  "--out", tmp_path / "x", "--seeds", "0,0", check=False)
    assert bad.returncode == 2 and "distinct integers" in bad.output
