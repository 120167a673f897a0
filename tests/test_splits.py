"""Patient-grouped splits: no patient straddles parts, every method, re-validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsi_ncmi.errors import InputError
from wsi_ncmi.stats.splits import make_splits, validate_splits

SPLIT = {"method": "kfold", "column": "split", "k": 5, "group_column": "group",
         "val_fraction": 0.2}


def cohort(n_patients=40, slides_per_patient=5, n_classes=3, seed=0) -> tuple[pd.DataFrame,
                                                                               np.ndarray]:
    """CAMELYON-like: several slides per patient, patients in centres, imbalanced labels."""
    rng = np.random.default_rng(seed)
    rows, y = [], []
    for p in range(n_patients):
        for s in range(slides_per_patient):
            rows.append({"slide_id": f"patient_{p:03d}_node_{s}", "patient_id": f"p{p:03d}",
                         "group": f"centre{p * 5 // n_patients}"})
            y.append(int(rng.choice(n_classes, p=[0.6, 0.25, 0.15][:n_classes])))
    return pd.DataFrame(rows), np.array(y)


def patient_parts(fold: dict, df: pd.DataFrame) -> dict[str, set[str]]:
    patient = dict(zip(df["slide_id"], df["patient_id"], strict=True))
    parts: dict[str, set[str]] = {}
    for part in ("train", "val", "test"):
        for sid in fold[part]:
            parts.setdefault(patient[sid], set()).add(part)
    return parts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kfold_never_puts_a_patient_in_two_parts_and_tests_every_slide_once(seed):
    df, y = cohort(seed=seed)
    splits = make_splits(df, y, SPLIT, seed=seed)
    assert splits["method"] == "kfold" and len(splits["folds"]) == 5
    tested = [sid for fold in splits["folds"] for sid in fold["test"]]
    assert sorted(tested) == sorted(df["slide_id"])
    for fold in splits["folds"]:
        assert all(len(parts) == 1 for parts in patient_parts(fold, df).values())
        assert len(fold["train"]) + len(fold["val"]) + len(fold["test"]) == len(df)
        assert 0.1 * len(df) < len(fold["val"]) < 0.3 * len(df)
    validate_splits(splits, df, "kfold", "test")


def test_kfold_is_stratified_and_reproducible():
    df, y = cohort()
    splits = make_splits(df, y, SPLIT, seed=3)
    assert splits == make_splits(df, y, SPLIT, seed=3)
    assert splits != make_splits(df, y, SPLIT, seed=4)
    label = dict(zip(df["slide_id"], y, strict=True))
    overall = np.bincount(y, minlength=3) / len(y)
    for fold in splits["folds"]:
        share = np.bincount([label[s] for s in fold["test"]], minlength=3) / len(fold["test"])
        assert np.abs(share - overall).max() < 0.15


def test_leave_one_group_out_holds_out_each_centre_once():
    df, y = cohort()
    splits = make_splits(df, y, {**SPLIT, "method": "logo"}, seed=0)
    assert [f["test_group"] for f in splits["folds"]] == [f"centre{i}" for i in range(5)]
    centre = dict(zip(df["slide_id"], df["group"], strict=True))
    for fold in splits["folds"]:
        assert {centre[s] for s in fold["test"]} == {fold["test_group"]}
        assert fold["test_group"] not in {centre[s] for s in fold["train"] + fold["val"]}
        assert all(len(parts) == 1 for parts in patient_parts(fold, df).values())


def test_leave_one_group_out_refuses_a_patient_in_two_groups():
    df, y = cohort()
    df.loc[0, "group"] = "centre4"
    with pytest.raises(InputError, match="p000"):
        make_splits(df, y, {**SPLIT, "method": "logo"}, seed=0)


def test_column_split_reads_the_manifest_and_lists_every_bad_value():
    df, y = cohort(n_patients=10)
    part = {f"p{p:03d}": ("train" if p < 6 else "val" if p < 8 else "test") for p in range(10)}
    df["split"] = df["patient_id"].map(part)
    fold = make_splits(df, y, {**SPLIT, "method": "column"}, seed=0)["folds"][0]
    assert len(fold["train"]) == 30 and len(fold["val"]) == 10 and len(fold["test"]) == 10
    df.loc[[0, 7], "split"] = ["training", ""]
    with pytest.raises(InputError) as err:
        make_splits(df, y, {**SPLIT, "method": "column"}, seed=0)
    assert "patient_000_node_0" in str(err.value) and "patient_001_node_2" in str(err.value)


def test_validation_catches_a_patient_across_train_and_test():
    df, y = cohort(n_patients=10)
    splits = make_splits(df, y, {**SPLIT, "k": 2}, seed=0)
    fold = splits["folds"][0]
    moved = fold["test"].pop()  # one slide of a test patient goes to train
    fold["train"].append(moved)
    with pytest.raises(InputError, match=r"patient\(s\) in several parts: p\d+ \(test\+train\)"):
        validate_splits(splits, df, "kfold", "splits.json")


def test_validation_lists_unknown_missing_and_doubled_slides_at_once():
    df, y = cohort(n_patients=10)
    splits = make_splits(df, y, {**SPLIT, "k": 2}, seed=0)
    fold = splits["folds"][1]
    fold["train"].append("ghost")
    dropped = fold["test"].pop()
    fold["val"].append(fold["train"][0])
    with pytest.raises(InputError) as err:
        validate_splits(splits, df, "kfold", "splits.json")
    message = str(err.value)
    assert "ghost" in message and dropped in message and "several parts" in message
    assert "\n" not in message
    with pytest.raises(InputError, match="method 'kfold'"):
        validate_splits(make_splits(df, y, {**SPLIT, "k": 2}, seed=0), df, "logo", "x")


def test_too_few_patients_for_the_folds_is_an_input_error():
    df, y = cohort(n_patients=3)
    with pytest.raises(InputError, match="3 patient"):
        make_splits(df, y, SPLIT, seed=0)


def test_blank_patient_ids_make_each_slide_its_own_patient():
    """BRACS' group list has no patient column: blank ids must not merge every slide into
    one patient."""
    import numpy as np
    import pandas as pd

    from wsi_ncmi.stats.splits import make_splits, validate_splits

    df = pd.DataFrame({"slide_id": [f"s{i}" for i in range(20)], "patient_id": [""] * 20})
    y = np.array([i % 2 for i in range(20)])
    splits = make_splits(df, y, {"method": "kfold", "k": 5, "val_fraction": 0.2}, seed=0)
    validate_splits(splits, df, "kfold", "test")
    assert len(splits["folds"]) == 5
    assert all(len(f["test"]) == 4 for f in splits["folds"])
