"""`wsi-ncmi claim`: the best baseline is chosen on validation values only, every number of
the table agrees with a hand computation from the runs' predictions, and a k-fold claim scores
only the tuned fold's test slides."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cli import run_cli
from sklearn.metrics import f1_score
from toy_bags import write_toy_bags

from wsi_ncmi.errors import InputError
from wsi_ncmi.stages.claim import best_baseline, validation_value

D = 6
CONFIG = {"task": {"classes": ["c0", "c1"]}, "model": {"embed_dim": 8, "attn_dim": 8},
          "optim": {"epochs": 2, "batch_size": 4, "lr": 0.01}, "device": "cpu"}


def write_bags(root: Path, per_class: int = 12) -> tuple[Path, Path]:
    """Two classes of 8–16-tile bags (class 1: a third of its tiles shifted along axis 0),
    one slide per patient; per class 6 train, 3 val, 3 test slides."""
    features = root / "features"
    rows = [{"slide_id": sid, "label": f"c{c}", "patient_id": f"p{c}_{j}",
             "split": "train" if j < 6 else "val" if j < 9 else "test"}
            for sid, c, j in write_toy_bags(features, per_class, D, 2.0, seed=1)]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return features, root / "manifest.csv"


def write_trials(folder: Path, values: list[tuple[str, float | None, float | None]]) -> None:
    """A tune folder's trials.csv with (state, value, val_auc) rows."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"number": i, "state": s, "value": v, "val_auc": a, "epochs_run": 2,
                   "duration_s": 1.0, "note": None}
                  for i, (s, v, a) in enumerate(values)]).to_csv(folder / "trials.csv",
                                                                   index=False)


def train_losses(root: Path, losses: tuple[str, ...], extra: dict | None = None) -> Path:
    features, manifest = write_bags(root)
    config = root / "train.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, **(extra or {})}))
    runs = root / "runs"
    for loss in losses:
        run_cli("train", "--features", features, "--manifest", manifest, "--config", config,
                "--loss", loss, "--seeds", "0,1", "--out", runs / loss)
        run_cli("eval", runs / loss, "--n-boot", 20, "--device", "cpu")
    return runs


def seed_f1(run: Path, head: str, slides: list[str] | None = None) -> list[float]:
    """Test macro-F1 of every seed of a multi-seed run, from its predictions.csv."""
    out = []
    for s in json.loads((run / "seeds.json").read_text())["seeds"]:
        p = pd.read_csv(run / f"seed_{s}" / "eval" / "test" / "predictions.csv")
        p = p[p["head"] == head].set_index("slide_id")
        if slides is not None:
            p = p.loc[slides]
        out.append(f1_score(p["true_label"], p["predicted_label"], average="macro"))
    return out


@pytest.fixture(scope="module")
def claimed(tmp_path_factory):
    root = tmp_path_factory.mktemp("claim")
    runs = train_losses(root, ("ncmi", "ce", "focal"))
    tune = root / "tune"
    # focal has the best validation value (its test score plays no part); ce's best trial
    # was pruned, so its complete one counts
    write_trials(tune / "ncmi", [("COMPLETE", 0.7, 0.8)])
    write_trials(tune / "ce", [("PRUNED", None, None), ("COMPLETE", 0.6, 0.7)])
    write_trials(tune / "focal", [("COMPLETE", 0.9, 0.5), ("FAIL", None, None)])
    result = run_cli("claim", runs, "--tune", tune, "--loss", "ncmi", "--losses",
                     "ncmi,ce,focal", "--head", "own", "--head", "linear_probe",
                     "--n-boot", 50, "--out", root / "out")
    return root, runs, pd.read_csv(root / "out" / "claim.csv"), result


def test_claim_table_agrees_with_hand_computation(claimed):
    root, runs, table, result = claimed
    assert "Claim: ncmi against the best baseline (focal)" in result.stdout
    assert len(table) == 6
    roles = dict(zip(table["loss"], table["role"], strict=False))
    assert roles == {"ncmi": "claim", "focal": "best baseline", "ce": "baseline"}
    own = table[table["head"].str.startswith("own")].set_index("loss")
    assert own.loc["ncmi", "head"] == "own (centroid)"
    assert own.loc["ce", "head"] == own.loc["focal", "head"] == "own (classifier)"
    assert set(own["n_slides"]) == {6} and set(own["n_seeds"]) == {2}
    assert own.loc["focal", "val_macro_f1"] == pytest.approx(0.9)
    assert own.loc["ce", "val_macro_f1"] == pytest.approx(0.6)
    ncmi, focal = seed_f1(runs / "ncmi", "centroid"), seed_f1(runs / "focal", "classifier")
    assert own.loc["ncmi", "macro_f1"] == pytest.approx(np.mean(ncmi))
    assert own.loc["focal", "macro_f1"] == pytest.approx(np.mean(focal))
    diff = np.subtract(ncmi, focal)
    assert own.loc["ncmi", "diff_macro_f1"] == pytest.approx(diff.mean())
    assert own.loc["ncmi", "claim_better_seeds"] == int((diff > 0).sum())
    assert own.loc["ncmi", "diff_macro_f1_ci_low"] <= own.loc["ncmi", "diff_macro_f1_ci_high"]
    # the interval over seeds too holds the mean over any draw of the two seeds: each seed's Δ
    seeds_ci = own.loc["ncmi", ["diff_macro_f1_seeds_ci_low", "diff_macro_f1_seeds_ci_high"]]
    assert seeds_ci.iloc[0] <= diff.mean() <= seeds_ci.iloc[1] or diff.min() == diff.max()
    assert own[["diff_macro_f1_seeds_ci_low"]].drop(index="ncmi").isna().all().all()
    assert own[["diff_macro_f1"]].drop(index="ncmi").isna().all().all()
    probe = table[table["head"] == "linear_probe"].set_index("loss")
    assert probe.loc["ce", "macro_f1"] == pytest.approx(
        np.mean(seed_f1(runs / "ce", "linear_probe")))
    record = json.loads((root / "out" / "provenance.json").read_text())
    assert record["config"]["baseline"] == "focal"


def test_best_baseline_reads_complete_trials_with_auc_ties(tmp_path):
    write_trials(tmp_path / "a", [("COMPLETE", 0.8, 0.6), ("PRUNED", None, None)])
    write_trials(tmp_path / "b", [("COMPLETE", 0.8, 0.7)])
    write_trials(tmp_path / "c", [("COMPLETE", 0.95, 0.9)])
    values = {k: validation_value(tmp_path / k) for k in ("c", "a", "b")}
    assert values["a"] == (0.8, 0.6)
    assert best_baseline(values, claim="c") == "b"
    assert best_baseline({"c": values["c"]} | {"a": values["a"]}, claim="a") == "c"
    write_trials(tmp_path / "d", [("PRUNED", None, None)])
    with pytest.raises(InputError, match="no complete trial"):
        validation_value(tmp_path / "d")


def test_claim_refuses_missing_tune_and_unknown_head(claimed):
    root, runs, _, _ = claimed
    missing = run_cli("claim", runs, "--tune", root / "nowhere", "--losses", "ncmi,ce",
                      "--out", root / "x", check=False)
    assert missing.returncode == 2 and "no trials.csv" in missing.output
    bad = run_cli("claim", runs, "--tune", root / "tune", "--losses", "ncmi,ce", "--head",
                  "probe", "--out", root / "x", check=False)
    assert bad.returncode == 2 and "heads must be among" in bad.output


@pytest.mark.slow
def test_kfold_claim_scores_only_the_tuned_fold(tmp_path):
    runs = train_losses(tmp_path, ("ncmi", "ce"),
                        {"split": {"method": "kfold", "k": 3, "val_fraction": 0.25}})
    for loss, value in (("ncmi", 0.7), ("ce", 0.6)):
        write_trials(tmp_path / "tune" / loss, [("COMPLETE", value, 0.5)])
    run_cli("claim", runs, "--tune", tmp_path / "tune", "--fold", 1, "--head", "own",
            "--n-boot", 20, "--out", tmp_path / "out")
    splits = json.loads((runs / "ncmi" / "seed_0" / "splits.json").read_text())["folds"]
    fold1 = sorted(splits[1]["test"])
    table = pd.read_csv(tmp_path / "out" / "claim.csv").set_index("loss")
    assert set(table["n_slides"]) == {len(fold1)} and len(fold1) < 24
    assert table.loc["ncmi", "macro_f1"] == pytest.approx(
        np.mean(seed_f1(runs / "ncmi", "centroid", fold1)))
    assert "outer fold 1 only" in (tmp_path / "out" / "claim.md").read_text()


def test_snakemake_claim_target_plans_every_loss(tmp_path):
    pytest.importorskip("snakemake")
    from workflow import job_counts, snakemake

    (tmp_path / "manifest.csv").write_text(
        "slide_id,path,label,patient_id,split\n"
        + "".join(f"s{i},s{i}.svs,{'ab'[i % 2]},p{i},{'train' if i < 2 else 'test'}\n"
                  for i in range(4)))
    (tmp_path / "cohort.yaml").write_text(yaml.safe_dump({
        "manifest": "manifest.csv", "extract": {"encoder": "test_resnet"},
        "train": {"configs": [], "loss_config": None},
        "tune": {"trials": 2, "workers": 2, "space": "space.yaml"},
        "claim": {"loss": "ncmi", "losses": ["ncmi", "ce", "supcon"], "seeds": [0, 1, 2]}}))
    (tmp_path / "space.yaml").write_text("space: {optim.lr: {low: 0.001, high: 0.01}}\n")
    proc = snakemake(tmp_path, "claim", "-n", "-p", "--cores", "2", "--configfile", "cohort.yaml")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    out = proc.stdout + proc.stderr
    assert job_counts(out) == {"claim": 1, "claim_table": 1, "claim_eval": 3, "claim_train": 3,
                               "tune_report": 3, "tune_worker": 6, "cohort": 1,
                               "slide_row": 4, "tile": 4, "extract": 4}
    assert "--seeds 0,1,2" in out and "tune/ce/best.yaml" in out
    assert re.search(r"wsi_ncmi claim workspace/claim/runs --tune workspace/tune --losses "
                     r"ncmi,ce,supcon --split test --head own --head linear_probe --loss ncmi "
                     r"--fold 0", out)
    bad = snakemake(tmp_path, "claim", "-n", "--configfile", "cohort.yaml", "--config",
                    "claim={loss: focal, losses: [ncmi, hinge], seeds: [0, 0], heads: [x]}")
    message = bad.stdout + bad.stderr
    assert bad.returncode != 0
    for problem in ("claim.losses: unknown loss 'hinge'", "claim.loss 'focal' must be one of",
                    "claim.seeds must list distinct integers", "claim.heads must list"):
        assert problem in message


def test_claim_refuses_a_name_that_is_not_a_loss(tmp_path):
    """Loss names become folder names under RUNS and TUNE: anything but a registered loss is
    refused before a file is read."""
    (tmp_path / "runs" / "ncmi").mkdir(parents=True)
    out = run_cli("claim", tmp_path / "runs", "--tune", tmp_path / "tune", "--losses",
                  "ncmi,../../escape", "--out", tmp_path / "claim", check=False)
    assert out.returncode != 0
    assert "'../../escape' is not a loss" in out.stderr
    assert not (tmp_path / "claim").exists()
