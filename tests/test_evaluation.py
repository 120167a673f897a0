"""End to end: train tiny NCMI and CE runs on synthetic feature files, evaluate, compare."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml
from cli import run_cli
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from wsi_ncmi.errors import InputError
from wsi_ncmi.model.inference import load_fold, run_model
from wsi_ncmi.stages.compare import compare_runs
from wsi_ncmi.stages.evaluate import evaluate_run
from wsi_ncmi.stages.train import train_run
from wsi_ncmi.stages.verify import verify_record
from wsi_ncmi.stats.simplex import ncmi_measure

CLASSES = ["a", "b", "c"]
N_SLIDES, DIM = 60, 16
N_BOOT = 200


def write_cohort(root: Path) -> tuple[Path, Path]:
    """60 bags of 12–30 tiles (D = 16); a quarter of each bag's tiles carry its class's
    prototype. Slides 0–29 come in pairs per patient. Parts (train / val / test) go by blocks
    of 6 slides, and class c is never in val (an absent class to handle)."""
    rng = np.random.default_rng(0)
    features = root / "features"
    features.mkdir(parents=True)
    protos = rng.normal(size=(len(CLASSES), DIM)) * 1.5
    rows = []
    for i in range(N_SLIDES):
        c = i % len(CLASSES)
        n = int(rng.integers(12, 31))
        x = rng.normal(size=(n, DIM)).astype(np.float32)
        x[: n // 4 + 1] += protos[c]
        sid = f"S{i:03d}"
        with h5py.File(features / f"{sid}.h5", "w") as f:
            f["features"] = x
            f["coords"] = np.stack([np.arange(n) * 224, np.zeros(n)], 1).astype(np.int64)
            f.attrs["encoder"] = "synthetic"
        # slides i and i + 3 of the first 30 share a patient (same class, same part)
        patient = f"P{i // 6:02d}{i % 3}" if i < 30 else f"Q{i:03d}"
        part = ("train", "train", "val", "test", "test")[(i // 6) % 5]
        if part == "val" and CLASSES[c] == "c":
            part = "train"
        rows.append({"slide_id": sid, "path": f"{sid}.svs", "label": CLASSES[c],
                     "patient_id": patient, "split": part})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return features, manifest


def config(loss: str, **split) -> dict:
    return {"task": {"name": "synthetic", "label_column": "label", "classes": CLASSES},
            "split": split or {"method": "column", "column": "split"},
            "model": {"embed_dim": 16, "attn_dim": 8},
            "loss": {"name": loss},
            "optim": {"epochs": 5, "batch_size": 8, "lr": 3e-3},
            "data": {"eval_batch_size": 16}, "device": "cpu", "seed": 0}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    features, manifest = write_cohort(root)
    runs = {loss: train_run(config(loss), root / f"run_{loss}", features, manifest)
            for loss in ("ncmi", "ce")}
    evals = {loss: evaluate_run(run, "test", features, manifest, n_boot=N_BOOT, seed=0,
                                device="cpu") for loss, run in runs.items()}
    return {"root": root, "features": features, "manifest": manifest, "runs": runs,
            "evals": evals}


def load(out: Path) -> tuple[dict, pd.DataFrame]:
    pred = pd.read_csv(out / "predictions.csv", dtype={"slide_id": str}, keep_default_na=False)
    return json.loads((out / "metrics.json").read_text()), pred


@pytest.mark.parametrize(("loss", "heads"), [("ncmi", ["linear_probe", "centroid"]),
                                             ("ce", ["linear_probe", "centroid", "classifier"])])
def test_eval_writes_the_contract_files(cohort, loss, heads):
    out = cohort["evals"][loss]
    assert out == cohort["runs"][loss] / "eval" / "test"
    metrics, pred = load(out)
    assert metrics["split"] == "test" and metrics["classes"] == CLASSES
    assert metrics["n_slides"] == 24 and list(metrics["heads"]) == heads
    assert set(metrics["ncmi"]) == {"ncmi", "cmi", "gamma"}
    assert metrics["bootstrap"]["unit"] == "patient" and metrics["bootstrap"]["seed"] == 0
    for head in heads:
        m = metrics["heads"][head]
        for key in ("macro_f1", "auc_macro", "balanced_accuracy", "accuracy", "ece"):
            lo, hi = m[key]["ci95"]
            assert lo <= m[key]["value"] <= hi or key == "ece"
        assert set(m["per_class"]) == set(CLASSES)
        assert np.array(m["confusion"]).sum() == 24
        image = matplotlib.image.imread(out / f"confusion_{head}.png")
        assert image.ndim == 3 and image.shape[0] > 100
        assert matplotlib.image.imread(out / f"roc_{head}.png").shape[0] > 100
    assert list(pred.columns) == ["slide_id", "patient_id", "fold", "true_label", "head",
                                  "predicted_label", "score_a", "score_b", "score_c"]
    assert len(pred) == 24 * len(heads)
    report = (out / "report.md").read_text()
    assert "# Evaluation on the test split" in report
    assert f"{metrics['heads']['linear_probe']['macro_f1']['value']:.3f}" in report
    assert verify_record(out / "provenance.json").problems == []


@pytest.mark.parametrize("loss", ["ncmi", "ce"])
def test_metrics_json_agrees_with_sklearn_on_the_predictions(cohort, loss):
    metrics, pred = load(cohort["evals"][loss])
    for head, m in metrics["heads"].items():
        rows = pred[pred["head"] == head]
        y = rows["true_label"].map(CLASSES.index).to_numpy()
        scores = rows[[f"score_{c}" for c in CLASSES]].to_numpy()
        yhat = rows["predicted_label"].map(CLASSES.index).to_numpy()
        np.testing.assert_array_equal(yhat, scores.argmax(1))
        np.testing.assert_allclose(scores.sum(1), 1.0)
        assert m["macro_f1"]["value"] == pytest.approx(f1_score(y, yhat, average="macro"))
        assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, yhat))
        assert m["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, yhat))
        assert m["auc_macro"]["value"] == pytest.approx(
            roc_auc_score(y, scores, multi_class="ovr"))
        assert m["confusion"] == confusion_matrix(y, yhat).tolist()


@pytest.mark.parametrize("loss", ["ncmi", "ce"])
def test_heads_match_an_independent_recomputation(cohort, loss):
    """Centroid head from class means of the training outputs, classifier from the logits,
    NCMI from ncmi_measure on the test outputs."""
    run = cohort["runs"][loss]
    splits = json.loads((run / "splits.json").read_text())["folds"][0]
    labels = pd.read_csv(cohort["manifest"]).set_index("slide_id")["label"]
    loaded = load_fold(run / "fold_0")
    train = run_model(loaded, cohort["features"], splits["train"])
    test = run_model(loaded, cohort["features"], splits["test"])
    y_train = labels[splits["train"]].map(CLASSES.index).to_numpy()
    y_test = labels[splits["test"]].map(CLASSES.index).to_numpy()
    means = np.stack([train["p"][y_train == c].astype(np.float64).mean(0) for c in range(3)])
    kl = np.array([[np.sum(p * np.log(p / s)) for s in means] for p in
                   test["p"].astype(np.float64)])
    metrics, pred = load(cohort["evals"][loss])
    centroid = pred[pred["head"] == "centroid"].set_index("slide_id").loc[splits["test"]]
    np.testing.assert_array_equal(centroid["predicted_label"],
                                  np.array(CLASSES)[kl.argmin(1)])
    if loss == "ce":
        own = pred[pred["head"] == "classifier"].set_index("slide_id").loc[splits["test"]]
        np.testing.assert_array_equal(own["predicted_label"],
                                      np.array(CLASSES)[test["logits"].argmax(1)])
    expected = ncmi_measure(test["p"], y_test, 3)
    for key in ("ncmi", "cmi", "gamma"):
        assert metrics["ncmi"][key] == pytest.approx(expected[key], rel=1e-6)


def test_a_class_absent_from_the_split_is_reported_not_fatal(cohort):
    out = evaluate_run(cohort["runs"]["ce"], "val", cohort["features"], cohort["manifest"],
                       n_boot=50, device="cpu")
    metrics, _ = load(out)
    for m in metrics["heads"].values():
        assert m["per_class"]["c"]["auc"]["value"] is None
        assert m["per_class"]["c"]["support"] == 0
        assert "absent" in m["notes"]["c"]
        assert m["auc_macro"]["value"] is not None
    assert "NaN" not in (out / "metrics.json").read_text()
    assert "c: class absent" in (out / "report.md").read_text()


def test_eval_is_deterministic(cohort):
    out = cohort["evals"]["ncmi"]
    before = (out / "metrics.json").read_bytes(), (out / "predictions.csv").read_bytes()
    evaluate_run(cohort["runs"]["ncmi"], "test", cohort["features"], cohort["manifest"],
                 n_boot=N_BOOT, seed=0, device="cpu")
    assert (out / "metrics.json").read_bytes() == before[0]
    assert (out / "predictions.csv").read_bytes() == before[1]


def test_eval_reads_the_data_paths_from_the_run_config(cohort, tmp_path):
    cfg = yaml.safe_load((cohort["runs"]["ce"] / "config.yaml").read_text())
    assert Path(cfg["data"]["features_dir"]) == cohort["features"].resolve()
    out = evaluate_run(cohort["runs"]["ce"], "test", n_boot=N_BOOT, device="cpu")
    assert load(out)[0] == load(cohort["evals"]["ce"])[0]
    bare = tmp_path / "run"
    shutil.copytree(cohort["runs"]["ce"], bare, ignore=shutil.ignore_patterns("eval"))
    cfg["data"]["features_dir"] = None
    (bare / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(InputError, match="no data.features_dir recorded.*--features-dir"):
        evaluate_run(bare)
    assert evaluate_run(bare, "test", cohort["features"], n_boot=10, device="cpu").is_dir()


def test_compare_reports_paired_differences(cohort, tmp_path):
    runs = [cohort["runs"]["ncmi"], cohort["runs"]["ce"]]
    result = compare_runs(runs, tmp_path / "cmp", n_boot=N_BOOT, seed=0)
    (ncmi, _), (ce, _) = load(cohort["evals"]["ncmi"]), load(cohort["evals"]["ce"])
    pair = result.pairs[0]
    assert (pair["a"], pair["b"]) == ("run_ncmi", "run_ce")
    for key in ("macro_f1", "auc_macro"):
        a = ncmi["heads"]["linear_probe"][key]["value"]
        b = ce["heads"]["linear_probe"][key]["value"]
        assert pair[key]["diff"] == pytest.approx(b - a, abs=1e-12)
        lo, hi = pair[key]["ci95"]
        assert lo <= pair[key]["diff"] <= hi
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert table["run"].tolist() == ["run_ncmi", "run_ce"]
    diffs = pd.read_csv(tmp_path / "cmp" / "differences.csv")
    assert set(diffs["metric"]) >= {"macro_f1", "auc_macro"}
    assert "Paired differences" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert verify_record(tmp_path / "cmp" / "provenance.json").problems == []


def test_compare_refuses_runs_on_different_slides(cohort, tmp_path):
    other = tmp_path / "run_other"
    shutil.copytree(cohort["evals"]["ce"], other / "eval" / "test")
    pred_path = other / "eval" / "test" / "predictions.csv"
    pred = pd.read_csv(pred_path, dtype=str, keep_default_na=False)
    pred[pred["slide_id"] != "S018"].to_csv(pred_path, index=False)
    with pytest.raises(InputError, match=r"evaluated slides differ: 1 \(S018\) only in "
                                         "run_ncmi"):
        compare_runs([cohort["runs"]["ncmi"], other], tmp_path / "cmp")
    pred.loc[pred["slide_id"] == "S018", "true_label"] = "b"
    pred.to_csv(pred_path, index=False)
    with pytest.raises(InputError, match="disagree on the true label of 1 slide"):
        compare_runs([cohort["runs"]["ncmi"], other], tmp_path / "cmp")
    with pytest.raises(InputError, match="no classifier head"):
        compare_runs([cohort["runs"]["ncmi"], cohort["runs"]["ce"]], tmp_path / "cmp",
                     head="classifier")


def test_cli_compare_prints_the_table_and_eval_fails_in_one_line(cohort, tmp_path):
    result = run_cli("compare", cohort["runs"]["ncmi"], cohort["runs"]["ce"], "--head",
                     "centroid", "--n-boot", "50", "--out", tmp_path / "c")
    assert "| run_ncmi | ncmi |" in result.output and "run_ce − run_ncmi" in result.output
    bad = run_cli("eval", tmp_path / "nowhere", check=False)
    assert bad.returncode == 2
    assert bad.output.strip().count("\n") == 0 and "not found" in bad.output


def test_kfold_run_reports_folds_and_pooled_out_of_fold(cohort):
    run = train_run(config("ce", method="kfold", k=3, val_fraction=0.2),
                    cohort["root"] / "run_kfold", cohort["features"], cohort["manifest"])
    metrics, pred = load(evaluate_run(run, "test", cohort["features"], cohort["manifest"],
                                      n_boot=50, device="cpu"))
    assert metrics["n_folds"] == 3 and metrics["n_slides"] == N_SLIDES
    rows = pred[pred["head"] == "classifier"]
    assert sorted(rows["slide_id"]) == [f"S{i:03d}" for i in range(N_SLIDES)]
    per_fold = [f["heads"]["classifier"]["macro_f1"] for f in metrics["folds"]]
    summary = metrics["fold_summary"]["classifier"]["macro_f1"]
    assert summary["mean"] == pytest.approx(np.mean(per_fold))
    assert summary["sd"] == pytest.approx(np.std(per_fold, ddof=1))
    assert metrics["ncmi"]["ncmi"] == pytest.approx(np.mean([f["ncmi"]["ncmi"]
                                                             for f in metrics["folds"]]))
