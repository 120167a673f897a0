"""Cohort manifests: counts match docs/datasets.md, builders reproduce the committed files,
the BRACS tree scan reproduces a planted layout, and ``manifest check`` finds every planted
problem with its line number."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from cli import run_cli

from wsi_ncmi.errors import InputError
from wsi_ncmi.formats.cohorts import (
    BRACS_COLUMNS,
    BRACS_SUBTYPE_GROUP,
    bracs_groups_manifest,
    camelyon17_manifest,
    camelyon17_pn_stage,
    scan_bracs_tree,
)
from wsi_ncmi.formats.config import load_yaml
from wsi_ncmi.formats.manifests import check_manifest, load_manifest

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "data_manifests"
CONFIGS = REPO / "configs"
SHARED = REPO.parent / "shared" / "data"
C17_LABELS = SHARED / "camelyon17_stage_labels.csv"
BRACS_GROUPS = SHARED / "bracs_groups.csv"


def cli(*args: str):
    return run_cli(*args, check=False)


def test_camelyon17_manifest_counts_match_the_datasets_doc():
    df = load_manifest(MANIFESTS / "camelyon17.csv",
                       required=("slide_id", "path", "label", "patient_id", "group", "pn_stage"))
    assert len(df) == 500
    assert df["label"].value_counts().to_dict() == {"negative": 323, "itc": 35, "micro": 57,
                                                     "macro": 85}
    assert df["patient_id"].nunique() == 100
    assert (df.groupby("patient_id").size() == 5).all()
    patients_per_centre = df.groupby("group")["patient_id"].nunique().to_dict()
    assert patients_per_centre == {str(c): 20 for c in range(5)}
    numbers = df["patient_id"].str.removeprefix("patient_").astype(int)
    assert (numbers // 20).astype(str).tolist() == df["group"].tolist()
    assert (df.groupby("patient_id")["group"].nunique() == 1).all()
    assert (df["path"] == df["slide_id"] + ".tif").all()
    for _, slides in df.groupby("patient_id"):
        assert slides["pn_stage"].nunique() == 1
        assert camelyon17_pn_stage(slides["label"].tolist()) == slides["pn_stage"].iloc[0]


def test_bracs_manifest_counts_match_the_datasets_doc():
    df = load_manifest(MANIFESTS / "bracs.csv", required=("slide_id", "path", "label",
                                                          "patient_id", "split"))
    assert len(df) == 547
    assert df["label"].value_counts().to_dict() == {"BT": 265, "AT": 89, "MT": 193}
    assert (df["patient_id"] == "").all() and (df["split"] == "").all()
    assert (df["path"] == df["slide_id"] + ".svs").all()


@pytest.mark.skipif(not C17_LABELS.is_file(), reason="shared stage_labels.csv not present")
def test_camelyon17_builder_reproduces_the_committed_manifest(tmp_path):
    out = tmp_path / "c17.csv"
    result = cli("manifest", "camelyon17", "--labels", C17_LABELS, "--out", out)
    assert result.returncode == 0, result.output
    assert out.read_bytes() == (MANIFESTS / "camelyon17.csv").read_bytes()
    centre = camelyon17_manifest(C17_LABELS, layout="centre")
    assert centre.loc[0, "path"] == "center_0/patient_000_node_0.tif"
    assert centre.loc[499, "path"] == "center_4/patient_099_node_4.tif"


@pytest.mark.skipif(not BRACS_GROUPS.is_file(), reason="shared bracs_groups.csv not present")
def test_bracs_groups_builder_reproduces_the_committed_manifest(tmp_path):
    out = tmp_path / "bracs.csv"
    result = cli("manifest", "bracs-groups", "--labels", BRACS_GROUPS, "--out", out)
    assert result.returncode == 0, result.output
    assert out.read_bytes() == (MANIFESTS / "bracs.csv").read_bytes()


@pytest.mark.parametrize("config", ["camelyon17_4class", "camelyon17_binary", "camelyon17_loco"])
def test_committed_camelyon_manifest_passes_check_with_each_task_config(config):
    report = check_manifest(MANIFESTS / "camelyon17.csv", config=load_yaml(CONFIGS /
                                                                           f"{config}.yaml"))
    assert report.rows == 500 and report.problems == []


@pytest.mark.parametrize("name", ["camelyon17_4class", "camelyon17_binary", "camelyon17_loco",
                                  "bracs_3class", "bracs_7class"])
def test_cohort_configs_hold_exactly_task_and_split(name):
    cfg = load_yaml(CONFIGS / f"{name}.yaml")
    assert set(cfg) == {"task", "split"}
    assert set(cfg["task"]) == {"name", "label_column", "classes", "label_map"}
    assert set(cfg["split"]) == {"method", "column", "k", "group_column", "val_fraction"}


def test_binary_config_counts_itc_as_negative():
    task = load_yaml(CONFIGS / "camelyon17_binary.yaml")["task"]
    df = load_manifest(MANIFESTS / "camelyon17.csv")
    mapped = df["label"].map(task["label_map"])
    assert mapped.value_counts().to_dict() == {"negative": 323 + 35, "positive": 57 + 85}


def test_bracs_3class_config_maps_subtypes_and_passes_coarse_groups():
    task = load_yaml(CONFIGS / "bracs_3class.yaml")["task"]
    assert task["label_map"] == BRACS_SUBTYPE_GROUP
    assert task["classes"] == ["BT", "AT", "MT"]
    report = check_manifest(MANIFESTS / "bracs.csv", config={"task": task,
                                                             "split": {"method": "kfold"}})
    assert not [p for p in report.problems if "label" in p]


def _planted_bracs_rows() -> list[dict]:
    """One slide per split × subtype, ids out of order, so the scan must sort."""
    rows, n = [], 900
    for split in ("test", "train", "val"):
        for subtype, group in BRACS_SUBTYPE_GROUP.items():
            n -= 7
            rows.append({"slide_id": f"BRACS_{n}",
                         "path": f"BRACS_WSI/{split}/Group_{group}/Type_{subtype}/BRACS_{n}.svs",
                         "label": subtype, "group_label": group, "patient_id": "",
                         "split": split})
    return rows


def _plant(root: Path, rows: list[dict]) -> None:
    for row in rows:
        path = root / row["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def test_bracs_tree_scan_reproduces_a_planted_layout(tmp_path):
    rows = _planted_bracs_rows()
    _plant(tmp_path, rows)
    (tmp_path / "BRACS_WSI/train/Group_BT/Type_N/BRACS_9.xml").touch()  # not a slide: ignored
    (tmp_path / "BRACS_WSI/README.txt").touch()
    order = {"train": 0, "val": 1, "test": 2}
    expected = pd.DataFrame(sorted(rows, key=lambda r: (order[r["split"]],
                                                        int(r["slide_id"][6:]))),
                            columns=list(BRACS_COLUMNS))
    pd.testing.assert_frame_equal(scan_bracs_tree(tmp_path), expected)
    inside = scan_bracs_tree(tmp_path / "BRACS_WSI")
    assert inside["path"].tolist() == [p.removeprefix("BRACS_WSI/") for p in expected["path"]]

    out = tmp_path / "bracs_full.csv"
    result = cli("manifest", "bracs", tmp_path, "--out", out)
    assert result.returncode == 0, result.output
    pd.testing.assert_frame_equal(load_manifest(out), expected)
    assert check_manifest(out, slide_root=tmp_path,
                          config=load_yaml(CONFIGS / "bracs_7class.yaml")).problems == []
    assert check_manifest(out, config=load_yaml(CONFIGS / "bracs_3class.yaml")).problems == []


def test_bracs_tree_scan_lists_every_misplaced_slide(tmp_path):
    _plant(tmp_path, _planted_bracs_rows()[:3])
    bad = ["train/Group_BT/Type_DCIS/BRACS_1.svs",      # subtype of another group
           "train/Group_XX/Type_N/BRACS_2.svs",         # unknown group
           "holdout/Group_BT/Type_N/BRACS_3.svs",       # unknown split
           "train/Group_BT/BRACS_4.svs",                # missing the type level
           "val/Group_BT/Type_N/slide_5.svs",           # not BRACS_<id>
           "val/Group_MT/Type_IC/BRACS_893.svs"]        # id already under test/
    for rel in bad:
        path = tmp_path / "BRACS_WSI" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    with pytest.raises(InputError) as err:
        scan_bracs_tree(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    for rel in bad[:5]:
        assert f"BRACS_WSI/{rel}:" in message
    assert "BRACS_893 found 2 times" in message
    result = cli("manifest", "bracs", tmp_path, "--out", tmp_path / "x.csv")
    assert result.returncode == 2 and not (tmp_path / "x.csv").exists()


def test_camelyon17_builder_lists_every_problem_with_lines(tmp_path):
    lines = ["patient,stage", "patient_000.zip,pN0"]
    lines += [f"patient_000_node_{i}.tif,negative" for i in range(5)]
    lines += ["patient_001.zip,pN1"]
    lines += [f"patient_001_node_{i}.tif,{lab}"
              for i, lab in enumerate(["macro", "negative", "negative", "negative"])]
    lines += ["patient_002.zip,pN9", "patient_003_node_0.tif,tumour", "slide_x.tif,negative",
              "patient_000_node_1.tif,negative", "patient_003_node_1.tif,negative"]
    src = tmp_path / "stage_labels.csv"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as err:
        camelyon17_manifest(src)
    message = str(err.value)
    assert "\n" not in message
    assert "line 13: pN stage 'pN9'" in message
    assert "line 14: label 'tumour'" in message
    assert "line 15: 'slide_x.tif'" in message
    assert "line 16: patient_000_node_1.tif listed twice (first on line 4)" in message
    assert "patient_001 (line 8): 4 node slide(s), expected 5" in message
    assert "patient_003: no patient_003.zip row" in message

    src.write_text("\n".join(lines[:7] + ["patient_001.zip,pN2"] + lines[8:12]
                             + ["patient_001_node_4.tif,micro"]) + "\n")
    with pytest.raises(InputError, match=r"patient_001 \(line 8\): pN stage pN2 but its node "
                                         r"labels imply pN1"):
        camelyon17_manifest(src)


PLANTED = """slide_id,path,label,patient_id,split,mpp,note
s01,a/s01.tif,negative,p1,train,0.25,
s02,a/s02.tif,negative,p1,test,,
s03,a/s03.tif,,p2,train,,
s01,a/s04.tif,macro,p3,val,,
bad id,a/s05.tif,micro,p4,train,,
s06,a/s06.tif,tumour,p5,train,-1,
s07,a/s07.tif,itc,p6,dev,,"a note
over two lines"

s08,a/s08.tif,macro,p7,train,0.5,,extra
s09,a/s09.tif,micro,p8,test,,
s10,,macro,p9,test,,
"""
# (line, text each problem line must contain) — every planted problem, nothing else.
EXPECTED = [
    (2, "patient in several split values: 'p1' (train on line(s) 2; test on line(s) 3)"),
    (4, "empty label"),
    (5, "duplicate slide_id 's01' (first on line 2)"),
    (6, "slide_id 'bad id' is not safe as a file name"),
    (7, "unknown label 'tumour'"),
    (7, "mpp '-1' is not a positive number"),
    (8, "split 'dev' is not one of train, val, test"),
    (11, "8 field(s), the header has 7"),
    (13, "empty path"),
]


def test_manifest_check_finds_every_planted_problem_with_its_line(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(PLANTED)
    root = tmp_path / "slides"
    for name in ("s01", "s02", "s03", "s04", "s05", "s06", "s08", "s09"):
        (root / "a").mkdir(parents=True, exist_ok=True)
        (root / "a" / f"{name}.tif").touch()
    (root / "a" / "s02.tif").unlink()
    config = tmp_path / "task.yaml"
    config.write_text("task:\n  classes: [negative, positive]\n"
                      "  label_map: {itc: negative, micro: positive, macro: positive}\n"
                      "split:\n  method: kfold\n")
    expected = EXPECTED + [(3, "file not found: " + str(root / "a/s02.tif")),
                           (8, "file not found: " + str(root / "a/s07.tif"))]
    report = check_manifest(csv_path, slide_root=root, config=load_yaml(config))
    assert report.rows == 10
    assert len(report.problems) == len(expected), report.problems
    for line, text in expected:
        assert any(p.startswith(f"line {line}: ") and text in p for p in report.problems), \
            (line, text, report.problems)
    numbers = [int(re.match(r"line (\d+):", p)[1]) for p in report.problems]
    assert numbers == sorted(numbers)

    result = cli("manifest", "check", csv_path, "--slide-root", root, "--config", config)
    assert result.returncode == 1
    for line, text in EXPECTED:
        assert f"{csv_path}: line {line}: " in result.output and text in result.output


def test_manifest_check_without_config_knows_no_classes(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(PLANTED)
    problems = check_manifest(csv_path).problems
    assert not any("unknown label" in p or "file not found" in p for p in problems)
    assert any(p.startswith("line 4: empty label") for p in problems)


def test_manifest_check_reports_missing_columns_and_config_columns(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("slide_id,label\ns1,a\ns2,b\n")
    logo = {"task": {"classes": ["a", "b"]}, "split": {"method": "logo", "group_column": "site"}}
    report = check_manifest(csv_path, config=logo)
    assert report.problems == ["line 1: missing column(s) path, patient_id, site"]
    result = cli("manifest", "check", csv_path)
    assert result.returncode == 1 and "line 1: missing column(s) path, patient_id" in result.output


def test_manifest_check_leave_one_group_out_finds_patient_in_two_groups(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("slide_id,path,label,patient_id,group\n"
                        "s1,s1.tif,a,p1,0\ns2,s2.tif,b,p1,1\ns3,s3.tif,a,p2,\n")
    logo = {"task": {"classes": ["a", "b"]}, "split": {"method": "logo"}}
    assert check_manifest(csv_path, config=logo).problems == [
        "line 2: patient in several group values: 'p1' (0 on line(s) 2; 1 on line(s) 3)",
        "line 4: empty group (the config leaves one group out)"]


def test_manifest_check_passes_a_clean_manifest(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("slide_id,path,label,patient_id,split\ns1,s1.tif,a,p1,train\n"
                        "s2,s2.tif,b,p2,test\n")
    result = cli("manifest", "check", csv_path)
    assert result.returncode == 0 and "ok:" in result.output
    assert cli("manifest", "check", tmp_path / "none.csv").returncode == 2


def test_bracs_groups_builder_lists_every_problem(tmp_path):
    src = tmp_path / "groups.csv"
    src.write_text("filename,type\nBRACS_1.svs,Group_BT\nBRACS_2.svs,Group_XX\n"
                   "slide.svs,Group_AT\nBRACS_1.svs,Group_MT\n")
    with pytest.raises(InputError) as err:
        bracs_groups_manifest(src)
    message = str(err.value)
    assert "line 3: type 'Group_XX'" in message
    assert "line 4: file name 'slide.svs'" in message
    assert "line 5: BRACS_1.svs listed twice (first on line 2)" in message
