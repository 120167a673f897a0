"""``wsi-ncmi tune`` on tiny synthetic feature bags: the test split is never read, a killed
tune resumes to exactly N trials, best.yaml trains and reproduces its trial, inner folds,
search-space files."""

from __future__ import annotations

import builtins
import io
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from cli import CLI, run_cli
from toy_bags import write_toy_bags

from wsi_ncmi.errors import InputError
from wsi_ncmi.formats.config import resolve_config
from wsi_ncmi.formats.labels import map_labels
from wsi_ncmi.formats.tunefolder import journal_path
from wsi_ncmi.formats.tunespace import load_space, overrides, parse_param
from wsi_ncmi.model.fit import TrainingDiverged
from wsi_ncmi.stages.tune import check_space, tune_study
from wsi_ncmi.stages.tunedata import TuneData, prepare
from wsi_ncmi.stages.tunestudy import STUDY_NAME
from wsi_ncmi.stages.verify import verify_record
from wsi_ncmi.stats.splits import make_splits

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
D = 6
BASE = {"model": {"embed_dim": 8, "attn_dim": 8},
        "optim": {"batch_size": 8, "max_tiles": 16, "epochs": 2, "patience": 5},
        "data": {"eval_batch_size": 32}, "device": "cpu"}
SPACE = {"space": {"optim.lr": {"low": 3.0e-4, "high": 2.0e-2, "log": True},
                   "optim.epochs": {"low": 1, "high": 2},
                   "model.dropout": {"choices": [0.0, 0.2]}},
         "tune": {"startup_trials": 2, "prune_after_trials": 2, "prune_warmup_epochs": 1,
                  "min_val_patients": 2, "inner_folds": 2}}


def write_cohort(root: Path, per_class: int = 12) -> tuple[Path, Path, list[str]]:
    """Two classes of bags of 8–16 tiles (class 1: a third of its tiles shifted by 3 along
    axis 0); two slides per patient; patients 0–1 of each class test, 2–3 val, the rest train.
    Test slides: one has no feature file, one a corrupt one, and their labels are unknown.
    Returns features, manifest and the test slide ids."""
    features = root / "features"
    rows = []
    for sid, c, j in write_toy_bags(features, per_class, D, 3.0, seed=0):
        patient = j // 2
        part = "test" if patient < 2 else "val" if patient < 4 else "train"
        rows.append({"slide_id": sid, "label": "not-a-class" if part == "test" else f"c{c}",
                     "patient_id": f"p{c}_{patient}", "split": part})
    df = pd.DataFrame(rows)
    test = df.loc[df["split"] == "test", "slide_id"].tolist()
    (features / f"{test[0]}.h5").unlink()
    (features / f"{test[1]}.h5").write_bytes(b"\x89HDF\r\n\x1a\n corrupt")
    df.to_csv(root / "manifest.csv", index=False)
    return features, root / "manifest.csv", test


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def load_study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal_path(out)))))


class OpenRecorder:
    """Every path opened through h5py, open() or io.open while active."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        h5_file, py_open, io_open = h5py.File, builtins.open, io.open

        def record(real):
            def opener(name, *args, **kwargs):
                if isinstance(name, str | Path):
                    self.paths.append(str(name))
                return real(name, *args, **kwargs)
            return opener

        monkeypatch.setattr(h5py, "File", record(h5_file))
        monkeypatch.setattr(builtins, "open", record(py_open))
        monkeypatch.setattr(io, "open", record(io_open))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A 3-trial CE tune through the CLI, recording every file it opened."""
    root = tmp_path_factory.mktemp("tune")
    features, manifest, test = write_cohort(root)
    base = write_yaml(root / "base.yaml", BASE)
    space = write_yaml(root / "space.yaml", SPACE)
    with pytest.MonkeyPatch.context() as mp:
        opened = OpenRecorder(mp)
        result = run_cli("tune", "--features", features, "--manifest", manifest, "--loss", "ce",
                         "--trials", 3, "--out", root / "study", "--config", base, "--space",
                         space, "--seed", 7)
    return {"root": root, "features": features, "manifest": manifest, "test": test,
            "base": base, "space": space, "out": root / "study", "opened": opened.paths,
            "output": result.output}


def test_tune_never_opens_or_labels_a_test_slide(tuned):
    assert "test split: 8 slides held out, never read" in tuned["output"]
    opened = [Path(p).name for p in tuned["opened"]]
    assert any(name.startswith("s0_") for name in opened)  # the recorder saw the bags
    assert not [n for n in opened if Path(n).stem in tuned["test"]]
    record = yaml.safe_load((tuned["out"] / "provenance.json").read_text())
    inputs = [Path(i["path"]).stem for i in record["inputs"]]
    assert not set(inputs) & set(tuned["test"])
    assert verify_record(tuned["out"] / "provenance.json").problems == []


def test_trials_table_plot_and_best_config(tuned):
    trials = pd.read_csv(tuned["out"] / "trials.csv")
    assert trials["number"].tolist() == [0, 1, 2]
    assert set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert {"value", "val_auc", "duration_s", "param:optim.lr", "param:optim.epochs",
            "param:model.dropout"} <= set(trials.columns)
    done = trials[trials["state"] == "COMPLETE"]
    best = done.sort_values(["value", "val_auc", "number"],
                            ascending=[False, False, True]).iloc[0]
    text = (tuned["out"] / "best.yaml").read_text()
    assert f"(trial {best['number']})" in text and "8 slides held out, never read" in text
    cfg = yaml.safe_load(text)
    assert cfg["optim"]["lr"] == pytest.approx(best["param:optim.lr"], rel=1e-12)
    assert cfg["optim"]["epochs"] == best["param:optim.epochs"]
    assert cfg["model"]["dropout"] == best["param:model.dropout"]
    assert cfg["loss"] == {"name": "ce", "ce": {}} and cfg["task"]["classes"] == ["c0", "c1"]
    # one lr per trial: no lr grid in best.yaml (nor in the study's identity, so a study made
    # before lr: auto resumes); train --config best.yaml trains once at that lr
    assert "lr_grid" not in cfg["optim"]
    assert resolve_config(cfg)["optim"]["lr"] == cfg["optim"]["lr"]
    assert (tuned["out"] / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_first_trial_is_the_base_config_where_the_space_allows(tuned):
    trials = pd.read_csv(tuned["out"] / "trials.csv")
    first = trials.iloc[0]
    # base.yaml: CE at its default lr 3e-4 (the space's low end) and 2 epochs, both in the
    # space; its dropout (the default 0.1) is not one of the space's choices, so the trial drew it
    assert first["param:optim.lr"] == pytest.approx(3e-4, rel=1e-12)
    assert first["param:optim.epochs"] == 2
    assert first["param:model.dropout"] in (0.0, 0.2)
    assert first["note"] == "the base config's values"
    assert trials["note"].iloc[1:].isna().all()
    done = trials[trials["state"] == "COMPLETE"]
    assert done["value"].max() >= first["value"]


def test_search_values_a_trial_can_draw():
    lr = parse_param("optim.lr", {"low": 1e-5, "high": 3e-2, "log": True})
    assert lr.holds(1e-2) and lr.holds(1e-5) and not lr.holds(0.1) and not lr.holds(None)
    epochs = parse_param("optim.epochs", {"low": 25, "high": 200, "step": 25})
    assert epochs.holds(100) and not epochs.holds(110) and not epochs.holds(100.5)
    tiles = parse_param("optim.max_tiles", {"choices": [256, 512, None]})
    assert tiles.holds(512) and tiles.holds(None) and not tiles.holds(1024)
    assert not parse_param("optim.balanced_sampling", {"choices": [0, 1]}).holds(True)


def test_best_yaml_trains_and_reproduces_its_validation_score(tuned, tmp_path):
    """With the given validation split as the selection fold, `train --config best.yaml`
    retrains the best trial exactly: its kept epoch's validation macro-F1 is the trial's
    value."""
    df = pd.read_csv(tuned["manifest"])
    manifest = tmp_path / "trainval.csv"  # train refuses the unreadable test slides
    df[df["split"] != "test"].to_csv(manifest, index=False)
    run_cli("train", "--features", tuned["features"], "--manifest", manifest, "--out",
            tmp_path / "run", "--config", tuned["out"] / "best.yaml")
    meta = yaml.safe_load((tmp_path / "run" / "fold_0" / "model.json").read_text())
    trials = pd.read_csv(tuned["out"] / "trials.csv")
    number = int(yaml.safe_load((tuned["out"] / "provenance.json").read_text())
                 ["config"]["best"]["number"])
    assert meta["best_val_macro_f1"] == pytest.approx(
        trials.loc[trials["number"] == number, "value"].item(), abs=1e-12)


def test_a_killed_trial_is_retried_once_and_the_study_reaches_exactly_n(tuned, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(tuned["out"], out)
    study = load_study(out)
    # the state a SIGKILLed worker leaves: a RUNNING trial whose process is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = study.ask({"optim.lr": optuna.distributions.FloatDistribution(3e-4, 2e-2, log=True),
                        "optim.epochs": optuna.distributions.IntDistribution(1, 2),
                        "model.dropout": optuna.distributions.CategoricalDistribution(
                            [0.0, 0.2])})
    killed.set_user_attr("worker_host", socket.gethostname())
    killed.set_user_attr("worker_pid", dead.pid)
    killed.report(0.5, 0)
    result = tune_study(yaml.safe_load(tuned["base"].read_text()) | {"loss": {"name": "ce"}},
                        out, tuned["features"], tuned["manifest"], tuned["space"], 5, seed=7)
    assert result.finished == 5
    trials = pd.read_csv(out / "trials.csv")
    assert trials["number"].tolist() == list(range(6))
    assert trials["state"].tolist().count("FAIL") == 1
    assert trials.loc[trials["number"] == killed.number, "state"].item() == "FAIL"
    finished = trials[trials["state"].isin(["COMPLETE", "PRUNED"])]
    assert len(finished) == 5
    keys = [tuple(r) for r in finished[["param:optim.lr", "param:optim.epochs",
                                        "param:model.dropout"]].to_numpy()]
    assert len(set(keys)) == 5  # no trial ran twice, none repeated another's draw
    retry = finished[finished["note"].fillna("").str.startswith(f"retry of trial {killed.number}")]
    assert len(retry) == 1
    assert retry["param:optim.lr"].item() == pytest.approx(killed.params["optim.lr"], rel=1e-12)
    # a call with N already reached runs nothing and rewrites the report
    again = tune_study(yaml.safe_load(tuned["base"].read_text()) | {"loss": {"name": "ce"}},
                       out, tuned["features"], tuned["manifest"], tuned["space"], 5, seed=7)
    assert again.finished == 5 and len(pd.read_csv(out / "trials.csv")) == 6


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume(tuned, tmp_path):
    """A real kill: a tune process is SIGKILLed after its first trial reported an epoch; the
    next call retries that trial and finishes with exactly N trials."""
    space = write_yaml(tmp_path / "space.yaml", {
        "space": {"optim.lr": {"low": 1.0e-3, "high": 2.0e-2, "log": True}},
        "tune": {"min_val_patients": 2}})
    base = write_yaml(tmp_path / "base.yaml", {**BASE, "optim": {**BASE["optim"],
                                                                "epochs": 40, "patience": 40}})
    out = tmp_path / "study"
    args = ["tune", "--features", tuned["features"], "--manifest", tuned["manifest"], "--loss",
            "ce", "--trials", 2, "--out", out, "--config", base, "--space", space]
    proc = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if journal_path(out).is_file() and any(
                    t.intermediate_values for t in load_study(out).trials
                    if t.state == optuna.trial.TrialState.RUNNING):
                break
        assert proc.poll() is None, "the tune ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed = [t for t in load_study(out).trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len(killed) == 1
    run_cli(*args)
    trials = pd.read_csv(out / "trials.csv")
    assert trials["state"].tolist().count("FAIL") == 1
    finished = trials[trials["state"].isin(["COMPLETE", "PRUNED"])]
    assert len(finished) == 2
    assert finished["note"].fillna("").str.startswith(
        f"retry of trial {killed[0].number}").sum() == 1


def test_a_study_refuses_another_search(tuned, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(tuned["out"], out)
    other = write_yaml(tmp_path / "other.yaml", {**SPACE, "space": {
        **SPACE["space"], "model.dropout": {"choices": [0.0, 0.5]}}})
    with pytest.raises(InputError, match="holds a study with another space"):
        tune_study({**BASE, "loss": {"name": "ce"}}, out, tuned["features"],
                   tuned["manifest"], other, 4)


def test_inner_folds_when_validation_is_small_and_the_pruner_sees_every_epoch(tuned, tmp_path,
                                                                              caplog):
    space = write_yaml(tmp_path / "space.yaml", {
        "space": {"optim.lr": {"low": 1.0e-3, "high": 2.0e-2}},
        "tune": {"min_val_patients": 3, "inner_folds": 2}})
    caplog.set_level(logging.INFO, logger="wsi_ncmi")
    tune_study({**BASE, "loss": {"name": "ncmi"}}, tmp_path / "study", tuned["features"],
               tuned["manifest"], space, 1)
    assert "2 patient-grouped inner folds over train+val" in caplog.text
    trial = load_study(tmp_path / "study").trials[0]
    folds = trial.user_attrs["fold_macro_f1"]
    assert len(folds) == 2 and trial.value == pytest.approx(np.mean(folds), abs=1e-12)
    # steps fold × E + epoch − 1 with E = 2 epochs: both folds' epochs reported
    assert sorted(trial.intermediate_values) == [0, 1, 2, 3]
    assert trial.intermediate_values[1] == pytest.approx(folds[0], abs=1e-12)
    assert trial.intermediate_values[3] == pytest.approx(folds[1], abs=1e-12)


def test_selection_folds_keep_patients_together_and_leave_the_test_split_out(tuned):
    settings = {"min_val_patients": 3, "inner_folds": 2}
    data = prepare({**BASE, "loss": {"name": "ce"}}, tuned["features"], tuned["manifest"],
                   settings, None)
    df = pd.read_csv(tuned["manifest"])
    patient = dict(zip(df["slide_id"], df["patient_id"], strict=True))
    pool = set(df.loc[df["split"] != "test", "slide_id"])
    assert sorted(data.held_out) == sorted(tuned["test"]) and set(data.labels) == pool
    assert len(data.folds) == 2
    assert sorted(s for f in data.folds for s in f["val"]) == sorted(pool)
    for fold in data.folds:
        assert set(fold["train"]) | set(fold["val"]) == pool and not fold["test"]
        assert not {patient[s] for s in fold["train"]} & {patient[s] for s in fold["val"]}
    given = prepare({**BASE, "loss": {"name": "ce"}}, tuned["features"], tuned["manifest"],
                    {**settings, "min_val_patients": 2}, None)
    assert given.folds[0]["val"] == df.loc[df["split"] == "val", "slide_id"].tolist()


def test_kfold_tunes_on_one_outer_fold_and_holds_its_test_part_out(tmp_path, caplog):
    features, manifest, _ = write_cohort(tmp_path)
    df = pd.read_csv(manifest).drop(columns="split")
    df["label"] = "c" + df["slide_id"].str[1]
    for sid in df["slide_id"]:  # every slide readable: any of them may land in the pool
        with h5py.File(features / f"{sid}.h5", "w") as f:
            f["features"] = np.ones((4, D), np.float32)
            f["coords"] = np.zeros((4, 2), np.int64)
    df.to_csv(manifest, index=False)
    raw = {**BASE, "loss": {"name": "ce"}, "seed": 3,
           "split": {"method": "kfold", "k": 3, "val_fraction": 0.25}}
    caplog.set_level(logging.INFO, logger="wsi_ncmi")
    data = prepare(raw, features, manifest, {"min_val_patients": 1, "inner_folds": 2}, 1)
    cfg = resolve_config(raw)
    _, y, _ = map_labels(df, cfg["task"])
    outer = make_splits(df, y, cfg["split"], 3)["folds"][1]  # what train makes
    assert sorted(data.held_out) == sorted(outer["test"]) and data.held_out
    assert not set(data.labels) & set(outer["test"])
    assert (data.folds[0]["train"], data.folds[0]["val"]) == (outer["train"], outer["val"])
    assert "tuning on outer fold 1 of 3" in caplog.text
    with pytest.raises(InputError, match="--fold 3: the kfold split has folds 0–2"):
        prepare(raw, features, manifest, {"min_val_patients": 1, "inner_folds": 2}, 3)


def test_a_diverged_trial_is_pruned_with_a_note(tuned, tmp_path, monkeypatch):
    def diverge(*args, **kwargs):
        raise TrainingDiverged("fold 0, epoch 1: the training loss became NaN/inf")

    monkeypatch.setattr("wsi_ncmi.stages.tune.train_fold", diverge)
    result = tune_study({**BASE, "loss": {"name": "ce"}}, tmp_path / "study",
                        tuned["features"], tuned["manifest"], tuned["space"], 1)
    trials = pd.read_csv(tmp_path / "study" / "trials.csv")
    assert result.finished == 1 and result.best is None
    assert trials["state"].tolist() == ["PRUNED"] and trials["value"].isna().all()
    assert trials["note"].item() == ("the base config's values; diverged: fold 0, epoch 1: "
                                     "the training loss became NaN/inf")
    assert not (tmp_path / "study" / "best.yaml").exists()


@pytest.mark.parametrize("loss", ["ncmi", "ce", "label_smoothing", "focal", "cmi_ce", "opl",
                                  "squentropy", "square", "supcon"])
def test_every_shipped_space_loads_and_builds_valid_configs(loss):
    space = load_space(CONFIGS / f"tune_{loss}.yaml")
    recipe = load_space(CONFIGS / "tune_recipe.yaml")
    assert set(recipe.params) <= set(space.params)  # every loss searches the shared recipe
    assert space.params["optim.epochs"].largest() == 200  # the same epoch budget for all
    data = TuneData(raw={"loss": {"name": loss}}, classes=["a", "b", "c"], labels={},
                    folds=[], selection="", held_out=[], infos={})
    check_space(space, data, loss)
    if loss != "ncmi":
        with pytest.raises(InputError, match="searches settings of loss"):
            check_space(load_space(CONFIGS / "tune_ncmi.yaml"), data, loss)


def test_space_entries_and_their_errors(tmp_path):
    assert parse_param("optim.epochs", {"low": 20, "high": 100, "step": 20}).kind == "int"
    lr = parse_param("optim.lr", {"low": "1e-5", "high": 1.0e-2, "log": True})
    assert (lr.kind, lr.low, lr.log) == ("float", 1e-5, True)
    assert parse_param("optim.epochs", {"choices": [50, 200, 100]}).largest() == 200
    assert parse_param("optim.max_tiles", {"choices": [256, None]}).corners() == [256, None]
    for name, spec, message in [
            ("optim.lr", {"low": 0.0, "high": 1.0, "log": True}, "log needs low > 0"),
            ("optim.lrr", {"low": 0.1, "high": 1.0}, "optim has no key 'lrr'"),
            ("data.prefetch", {"low": 1, "high": 2}, "must start with"),
            ("loss.temperature", {"low": 0.1, "high": 1.0}, "loss.<loss>.<setting>"),
            ("optim.lr", {"low": 1.0, "high": 0.1}, "low must be below high"),
            ("optim.name", {"choices": ["adamw", "adamw"]}, "distinct")]:
        with pytest.raises(InputError, match=message):
            parse_param(name, spec)
    write_yaml(tmp_path / "recipe.yaml", {"space": {"optim.lr": {"low": 0.1, "high": 1.0,
                                                                 "log": True}},
                                          "tune": {"inner_folds": 3}})
    write_yaml(tmp_path / "mine.yaml", {"include": "recipe.yaml",
                                        "space": {"optim.lr": {"low": 0.2, "high": 0.3}}})
    space = load_space(tmp_path / "mine.yaml")
    assert space.params["optim.lr"].log is False  # an entry is replaced whole
    assert space.settings["inner_folds"] == 3 and space.settings["startup_trials"] == 10
    assert overrides({"optim.lr": 0.1, "loss.ncmi.temperature": 0.2}) == {
        "optim": {"lr": 0.1}, "loss": {"ncmi": {"temperature": 0.2}}}
    write_yaml(tmp_path / "loop.yaml", {"include": "loop.yaml"})
    with pytest.raises(InputError, match="includes itself"):
        load_space(tmp_path / "loop.yaml")
