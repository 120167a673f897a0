"""Manifest builders for the public cohorts (see ``docs/datasets.md``, ``data_manifests/``).

- :func:`camelyon17_manifest`: the 500 labelled CAMELYON-17 training slides from the official
  ``stage_labels.csv`` (slide label, patient, centre, the patient's pN stage).
- :func:`bracs_groups_manifest`: the 547 BRACS slides of ``bracs_groups.csv`` with their
  coarse group only (that file has no subtype, split or patient).
- :func:`scan_bracs_tree`: the full BRACS manifest (subtype, group, official split) from the
  official ``BRACS_WSI/{train,val,test}/Group_*/Type_*/BRACS_<id>.svs`` folder tree.

Every builder validates its source completely and raises one :class:`InputError` listing all
problems found (with line numbers or paths).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pandas as pd

from ..errors import InputError
from .manifests import read_csv_rows

CAMELYON_LABELS = ("negative", "itc", "micro", "macro")
CAMELYON_PN_STAGES = ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2")
CAMELYON_PATIENTS = 100
CAMELYON_PATIENTS_PER_CENTRE = 20
CAMELYON_NODES_PER_PATIENT = 5
CAMELYON_LAYOUTS = ("flat", "centre")
CAMELYON_COLUMNS = ("slide_id", "path", "label", "patient_id", "group", "pn_stage")

BRACS_SUBTYPE_GROUP = {"N": "BT", "PB": "BT", "UDH": "BT", "FEA": "AT", "ADH": "AT",
                       "DCIS": "MT", "IC": "MT"}
BRACS_GROUPS = ("BT", "AT", "MT")
BRACS_SPLITS = ("train", "val", "test")
BRACS_COLUMNS = ("slide_id", "path", "label", "group_label", "patient_id", "split")
BRACS_GROUP_COLUMNS = ("slide_id", "path", "label", "patient_id", "split")

_C17_PATIENT = re.compile(r"patient_(\d{3})\.zip")
_C17_NODE = re.compile(r"patient_(\d{3})_node_(\d)\.tif")
_BRACS_FILE = re.compile(r"BRACS_(\d+)\.svs")


def camelyon17_manifest(labels_csv: Path, layout: str = "flat") -> pd.DataFrame:
    """CAMELYON-17 training manifest from the official ``stage_labels.csv``.

    Columns :data:`CAMELYON_COLUMNS`, one row per node slide in patient/node order:
    ``slide_id`` = ``patient_XXX_node_Y``; ``path`` = ``patient_XXX_node_Y.tif`` (``flat``, as
    in the open-data ``images/`` folder) or ``center_C/patient_XXX_node_Y.tif`` (``centre``,
    as in the challenge's ``training/`` folder); ``label`` one of :data:`CAMELYON_LABELS`;
    ``patient_id`` = ``patient_XXX``; ``group`` = centre ``0``–``4`` (patients 20·c to
    20·c + 19); ``pn_stage`` = the patient's pN stage. Checks every patient has its stage row,
    exactly 5 node slides and a stage consistent with its node labels.
    """
    if layout not in CAMELYON_LAYOUTS:
        raise ValueError(f"layout must be one of {CAMELYON_LAYOUTS}, got {layout!r}")
    stages, nodes, problems = _read_stage_labels(Path(labels_csv))
    for patient in sorted(set(stages) | set(nodes)):
        problems += _patient_problems(patient, stages.get(patient), nodes.get(patient, {}))
    if problems:
        raise InputError(f"{labels_csv}: {'; '.join(problems)}")
    rows = []
    for patient in sorted(nodes):
        centre = int(patient) // CAMELYON_PATIENTS_PER_CENTRE
        for node in sorted(nodes[patient]):
            slide_id = f"patient_{patient}_node_{node}"
            folder = f"center_{centre}/" if layout == "centre" else ""
            rows.append({"slide_id": slide_id, "path": f"{folder}{slide_id}.tif",
                         "label": nodes[patient][node][0], "patient_id": f"patient_{patient}",
                         "group": str(centre), "pn_stage": stages[patient][0]})
    return pd.DataFrame(rows, columns=list(CAMELYON_COLUMNS))


def camelyon17_pn_stage(labels: list[str]) -> str:
    """The pN stage implied by one patient's node labels (CAMELYON-17 rules): pN0 without
    findings, pN0(i+) with only isolated tumour cells, pN1mi with micro- but no
    macro-metastases, pN1 / pN2 with a macro-metastasis and 1–3 / ≥ 4 metastatic nodes."""
    macro, micro = labels.count("macro"), labels.count("micro")
    if macro + micro == 0:
        return "pN0(i+)" if "itc" in labels else "pN0"
    if macro == 0:
        return "pN1mi"
    return "pN1" if macro + micro <= 3 else "pN2"


def bracs_groups_manifest(groups_csv: Path) -> pd.DataFrame:
    """BRACS manifest from ``bracs_groups.csv`` (columns ``filename,type``, type
    ``Group_BT|AT|MT``).

    Columns :data:`BRACS_GROUP_COLUMNS`: ``slide_id`` = file stem, ``path`` = file name (a flat
    slide folder), ``label`` = coarse group BT/AT/MT; ``patient_id`` and ``split`` are empty
    because the file holds neither. Rows are sorted by the slide's number.
    """
    groups_csv = Path(groups_csv)
    problems, rows, seen = [], [], {}
    for line, row in _csv_records(groups_csv, ("filename", "type")):
        name, kind = row["filename"].strip(), row["type"].strip()
        match = _BRACS_FILE.fullmatch(name)
        group = kind.removeprefix("Group_")
        if not match:
            problems.append(f"line {line}: file name {name!r} is not BRACS_<number>.svs")
        if not kind.startswith("Group_") or group not in BRACS_GROUPS:
            problems.append(f"line {line}: type {kind!r} is not one of "
                            f"{', '.join('Group_' + g for g in BRACS_GROUPS)}")
        if name in seen:
            problems.append(f"line {line}: {name} listed twice (first on line {seen[name]})")
        seen.setdefault(name, line)
        if match:
            rows.append({"slide_id": name[:-4], "path": name, "label": group,
                         "patient_id": "", "split": "", "_n": int(match[1])})
    if problems:
        raise InputError(f"{groups_csv}: {'; '.join(problems)}")
    return _sorted_bracs(rows, list(BRACS_GROUP_COLUMNS))


def scan_bracs_tree(root: Path) -> pd.DataFrame:
    """Full BRACS manifest from the official folder tree under ``root``.

    ``root`` is the ``BRACS_WSI`` folder (holding ``train/``, ``val/``, ``test/``) or its parent.
    Every ``*.svs`` must sit at ``<split>/Group_<G>/Type_<T>/BRACS_<id>.svs`` with a subtype
    belonging to its group. Columns :data:`BRACS_COLUMNS`: ``path`` relative to ``root``,
    ``label`` = subtype (N, PB, UDH, FEA, ADH, DCIS, IC), ``group_label`` = BT/AT/MT,
    ``split`` = official split, ``patient_id`` empty (the tree does not hold it). Rows are
    sorted by split (train, val, test), then slide number. Other files are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    base = root / "BRACS_WSI" if not _has_split_dirs(root) else root
    if not _has_split_dirs(base):
        raise InputError(f"{root}: no train/, val/ or test/ folder (nor BRACS_WSI/ holding them)")
    problems, rows, seen = [], [], defaultdict(list)
    for slide in sorted(p for p in base.rglob("*") if p.suffix.lower() == ".svs" and p.is_file()):
        rel = slide.relative_to(root).as_posix()
        row, problem = _bracs_row(slide.relative_to(base).parts, rel)
        if problem:
            problems.append(f"{rel}: {problem}")
            continue
        seen[row["slide_id"]].append(rel)
        rows.append(row)
    problems += [f"{sid} found {len(paths)} times: {', '.join(paths)}"
                 for sid, paths in seen.items() if len(paths) > 1]
    if problems:
        raise InputError(f"{root}: {'; '.join(problems)}")
    if not rows:
        raise InputError(f"{root}: no BRACS_<id>.svs slides in the split/group/type folders")
    return _sorted_bracs(rows, list(BRACS_COLUMNS))


def _bracs_row(parts: tuple[str, ...], rel: str) -> tuple[dict, str | None]:
    """Manifest row for one slide from its path parts below ``BRACS_WSI``, or a problem."""
    if len(parts) != 4:
        return {}, "not at <split>/Group_<G>/Type_<T>/BRACS_<id>.svs"
    split, group_dir, type_dir, name = parts
    match = _BRACS_FILE.fullmatch(name)
    group, subtype = group_dir.removeprefix("Group_"), type_dir.removeprefix("Type_")
    if split not in BRACS_SPLITS:
        return {}, f"split folder {split!r} is not one of {', '.join(BRACS_SPLITS)}"
    if not group_dir.startswith("Group_") or group not in BRACS_GROUPS:
        return {}, f"group folder {group_dir!r} is not Group_BT, Group_AT or Group_MT"
    if not type_dir.startswith("Type_") or subtype not in BRACS_SUBTYPE_GROUP:
        return {}, f"type folder {type_dir!r} is not one of " + ", ".join(
            "Type_" + t for t in BRACS_SUBTYPE_GROUP)
    if BRACS_SUBTYPE_GROUP[subtype] != group:
        return {}, (f"subtype {subtype} belongs to group {BRACS_SUBTYPE_GROUP[subtype]}, "
                    f"not {group}")
    if not match:
        return {}, "file name is not BRACS_<number>.svs"
    return {"slide_id": name[:-4], "path": rel, "label": subtype, "group_label": group,
            "patient_id": "", "split": split, "_n": int(match[1])}, None


def _has_split_dirs(folder: Path) -> bool:
    return any((folder / s).is_dir() for s in BRACS_SPLITS)


def _sorted_bracs(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    order = {s: i for i, s in enumerate(("",) + BRACS_SPLITS)}
    rows = sorted(rows, key=lambda r: (order[r["split"]], r["_n"], r["slide_id"]))
    return pd.DataFrame(rows, columns=columns)


def _read_stage_labels(path: Path) -> tuple[dict, dict, list[str]]:
    """``stages[patient] = (stage, line)``, ``nodes[patient][node] = (label, line)`` and the
    problems found, from ``stage_labels.csv`` (columns ``patient,stage``)."""
    stages: dict[str, tuple[str, int]] = {}
    nodes: dict[str, dict[str, tuple[str, int]]] = defaultdict(dict)
    problems = []
    for line, row in _csv_records(path, ("patient", "stage")):
        name, value = row["patient"].strip(), row["stage"].strip()
        whole, node = _C17_PATIENT.fullmatch(name), _C17_NODE.fullmatch(name)
        if whole:
            if value not in CAMELYON_PN_STAGES:
                problems.append(f"line {line}: pN stage {value!r} is not one of "
                                f"{', '.join(CAMELYON_PN_STAGES)}")
            elif whole[1] in stages:
                problems.append(f"line {line}: {name} listed twice "
                                f"(first on line {stages[whole[1]][1]})")
            else:
                stages[whole[1]] = (value, line)
        elif node:
            patient, index = node[1], node[2]
            if value not in CAMELYON_LABELS:
                problems.append(f"line {line}: label {value!r} is not one of "
                                f"{', '.join(CAMELYON_LABELS)}")
            elif index in nodes[patient]:
                problems.append(f"line {line}: {name} listed twice "
                                f"(first on line {nodes[patient][index][1]})")
            else:
                nodes[patient][index] = (value, line)
        else:
            problems.append(f"line {line}: {name!r} is neither patient_XXX.zip nor "
                            "patient_XXX_node_Y.tif")
    return stages, dict(nodes), problems


def _patient_problems(patient: str, stage: tuple[str, int] | None,
                      nodes: dict[str, tuple[str, int]]) -> list[str]:
    name = f"patient_{patient}"
    if int(patient) >= CAMELYON_PATIENTS:
        return [f"{name}: not a training patient (000–{CAMELYON_PATIENTS - 1:03d}), centre unknown"]
    if stage is None:
        return [f"{name}: no patient_{patient}.zip row with its pN stage"]
    if len(nodes) != CAMELYON_NODES_PER_PATIENT:
        return [f"{name} (line {stage[1]}): {len(nodes)} node slide(s), expected "
                f"{CAMELYON_NODES_PER_PATIENT}"]
    implied = camelyon17_pn_stage([label for label, _ in nodes.values()])
    if implied != stage[0]:
        return [f"{name} (line {stage[1]}): pN stage {stage[0]} but its node labels imply "
                f"{implied}"]
    return []


def _csv_records(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` per non-blank record of a CSV that must hold ``columns``."""
    header, rows = read_csv_rows(path)
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    index = {c: header.index(c) for c in columns}
    return [(line, {c: values[i] if i < len(values) else "" for c, i in index.items()})
            for line, values in rows]
