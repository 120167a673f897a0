"""Cohort manifests: one row per slide.

Columns: ``slide_id`` (required, unique, safe as a file name), ``path`` (relative to a slide
root given at run time), ``label``, ``patient_id``, and optional ``group`` (centre, scanner),
``split`` (train/val/test), ``fold``, ``mpp`` (µm/px override for slides without metadata).
Cohort extras are allowed (e.g. ``pn_stage``, ``group_label``); ``data_manifests/SCHEMA.md``
documents every column of the shipped manifests.

:func:`load_manifest` reads a manifest for a stage; :func:`check_manifest` validates one in
full (``wsi-ncmi manifest check``) and reports every problem with its CSV line number.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..atomic import atomic_path
from ..errors import InputError
from .config import DEFAULTS, deep_merge
from .ids import RULE, SAFE_ID

REQUIRED_COLUMNS = ("slide_id", "path", "label", "patient_id")
SPLIT_VALUES = ("train", "val", "test")


def load_manifest(path: str | Path, required: tuple[str, ...] = ("slide_id",)) -> pd.DataFrame:
    """Read a manifest CSV as strings (``mpp`` as float); raise :class:`InputError` listing
    every missing required column or duplicated slide id."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    if "slide_id" in df.columns:
        dup = df.loc[df["slide_id"].duplicated(keep=False), "slide_id"]
        if len(dup):
            lines = [f"{sid} (lines {', '.join(str(i + 2) for i in dup.index[dup == sid])})"
                     for sid in dict.fromkeys(dup)]
            raise InputError(f"{path}: duplicate slide_id: {'; '.join(lines)}")
    if "mpp" in df.columns:
        df["mpp"] = pd.to_numeric(df["mpp"].replace("", None), errors="coerce")
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    """Write a manifest CSV atomically (no index column, ``\\n`` line ends)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


@dataclass
class ManifestReport:
    """Outcome of :func:`check_manifest`: ``rows`` slides read, ``problems`` (each
    ``"line N: …"``, sorted by line; line 1 is the header, ``config:`` lines are about the
    task config) and ``notes`` (facts worth knowing that are not errors)."""

    rows: int
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_manifest(
    path: str | Path, slide_root: Path | None = None, config: dict | None = None
) -> ManifestReport:
    """Validate a manifest completely and list every problem with its CSV line number.

    Checks: the required columns (:data:`REQUIRED_COLUMNS`, plus the columns the config's
    ``task``/``split`` sections name), one field per header column, non-empty labels (and,
    with a config, labels that map to one of ``task.classes``), unique ``slide_id`` values
    that are safe as file names, split values ``train``/``val``/``test``, no patient in two
    splits (nor, for leave-one-group-out, in two groups), positive ``mpp`` (µm/px), integer
    ``fold``, and, with ``slide_root``, that every ``path`` is a file under it.
    ``config`` is a config mapping (``task``/``split`` sections are used; defaults as in
    :mod:`wsi_ncmi.formats.config`). Raises :class:`InputError` only when the file cannot be read.
    """
    path = Path(path)
    header, rows = read_csv_rows(path)
    task, split = _task_and_split(config)
    report = ManifestReport(rows=len(rows))
    problems: list[tuple[int, str]] = []
    required = list(REQUIRED_COLUMNS) + (_config_columns(task, split) if config else [])
    missing = [c for c in dict.fromkeys(required) if c not in header]
    if missing:
        problems.append((1, f"missing column(s) {', '.join(missing)}"))
    doubled = sorted({c for c in header if header.count(c) > 1})
    if doubled:
        problems.append((1, f"column(s) named twice: {', '.join(doubled)}"))
    width = [(line, len(values)) for line, values in rows if len(values) != len(header)]
    problems += [(line, f"{n} field(s), the header has {len(header)}") for line, n in width]
    records = [(line, dict(zip(header, values, strict=False))) for line, values in rows]
    problems += _id_problems(records)
    problems += _label_problems(records, task, config is not None)
    problems += _split_problems(records, split, config is not None)
    problems += _value_problems(records)
    if slide_root is not None:
        problems += _file_problems(records, Path(slide_root))
    report.problems = [f"line {line}: {msg}" for line, msg in sorted(problems, key=lambda p: p[0])]
    if config is not None:
        report.problems = _config_problems(task) + report.problems
    no_patient = sum(1 for _, r in records if not r.get("patient_id", "").strip())
    if no_patient:
        report.notes.append(f"{no_patient} row(s) without patient_id: patient grouping cannot "
                            "be checked for them")
    return report


def read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line number, fields)`` per non-blank record of a CSV file; the line is
    where the record starts (quoted fields may span lines). :class:`InputError` when the file
    is missing, unreadable or empty."""
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows, end = [], reader.line_num
            for values in reader:
                start, end = end + 1, reader.line_num
                if values and any(v.strip() for v in values):
                    rows.append((start, values))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from None
    if not header:
        raise InputError(f"{path}: empty file (no header line)")
    return header, rows


def _task_and_split(config: dict | None) -> tuple[dict, dict]:
    config = config or {}
    return (deep_merge(DEFAULTS["task"], config.get("task") or {}),
            deep_merge(DEFAULTS["split"], config.get("split") or {}))


def _config_columns(task: dict, split: dict) -> list[str]:
    columns = [str(task["label_column"])]
    if split["method"] == "column":
        columns.append(str(split["column"]))
    elif split["method"] == "logo":
        columns.append(str(split["group_column"]))
    return columns


def _config_problems(task: dict) -> list[str]:
    classes = task.get("classes")
    label_map = task.get("label_map") or {}
    if classes is None:
        return []
    return [f"config: task.label_map maps {raw!r} to {cls!r}, which is not in task.classes"
            for raw, cls in label_map.items() if str(cls) not in map(str, classes)]


def _id_problems(records: list[tuple[int, dict]]) -> list[tuple[int, str]]:
    problems, seen = [], defaultdict(list)
    for line, row in records:
        sid = row.get("slide_id")
        if sid is None:
            continue
        if not SAFE_ID.match(sid):
            problems.append((line, f"slide_id {sid!r} is not safe as a file name ({RULE})"))
        seen[sid].append(line)
    for sid, lines in seen.items():
        for line in lines[1:]:
            problems.append((line, f"duplicate slide_id {sid!r} (first on line {lines[0]})"))
    return problems


def _label_problems(records: list[tuple[int, dict]], task: dict,
                    have_config: bool) -> list[tuple[int, str]]:
    column = str(task["label_column"]) if have_config else "label"
    label_map = {str(k): str(v) for k, v in (task.get("label_map") or {}).items()}
    classes = [str(c) for c in task["classes"]] if task.get("classes") is not None else None
    problems = []
    for line, row in records:
        if column not in row:
            continue
        raw = row[column].strip()
        if not raw:
            problems.append((line, f"empty {column}"))
        elif have_config and classes is not None and label_map.get(raw, raw) not in classes:
            problems.append((line, f"unknown {column} {raw!r} for task {task.get('name')!r} "
                                   f"(classes {', '.join(classes)})"))
    return problems


def _split_problems(records: list[tuple[int, dict]], split: dict,
                    have_config: bool) -> list[tuple[int, str]]:
    method = split["method"] if have_config else None
    column = str(split["column"]) if have_config else "split"
    problems = []
    parts_of: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for line, row in records:
        if column not in row:
            continue
        value = row[column].strip().lower()
        if value and value not in SPLIT_VALUES:
            problems.append((line, f"{column} {row[column]!r} is not one of "
                                   f"{', '.join(SPLIT_VALUES)}"))
        elif not value and method == "column":
            problems.append((line, f"empty {column} (the config splits by this column)"))
        patient = row.get("patient_id", "").strip()
        if value in SPLIT_VALUES and patient:
            parts_of[patient][value].append(line)
    problems += _straddling(parts_of, f"patient in several {column} values")
    if method == "kfold":
        problems += [(line, "empty patient_id (kfold groups folds by patient)")
                     for line, row in records
                     if "patient_id" in row and not row["patient_id"].strip()]
    if method == "logo":
        problems += _group_problems(records, str(split["group_column"]))
    return problems


def _group_problems(records: list[tuple[int, dict]], column: str) -> list[tuple[int, str]]:
    problems = []
    groups_of: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for line, row in records:
        if column not in row:
            continue
        value = row[column].strip()
        if not value:
            problems.append((line, f"empty {column} (the config leaves one {column} out)"))
        patient = row.get("patient_id", "").strip()
        if value and patient:
            groups_of[patient][value].append(line)
    return problems + _straddling(groups_of, f"patient in several {column} values")


def _straddling(where: dict[str, dict[str, list[int]]], what: str) -> list[tuple[int, str]]:
    """One problem per patient found under several values, at the patient's first line."""
    problems = []
    for patient, by_value in where.items():
        if len(by_value) < 2:
            continue
        first = min(min(lines) for lines in by_value.values())
        detail = "; ".join(f"{value} on line(s) {', '.join(map(str, lines))}"
                           for value, lines in by_value.items())
        problems.append((first, f"{what}: {patient!r} ({detail})"))
    return problems


def _value_problems(records: list[tuple[int, dict]]) -> list[tuple[int, str]]:
    problems = []
    for line, row in records:
        if "path" in row and not row["path"].strip():
            problems.append((line, "empty path"))
        mpp = row.get("mpp", "").strip()
        if mpp and not _positive_float(mpp):
            problems.append((line, f"mpp {mpp!r} is not a positive number (µm/px)"))
        fold = row.get("fold", "").strip()
        if fold and not fold.isdigit():
            problems.append((line, f"fold {fold!r} is not a non-negative integer"))
    return problems


def _file_problems(records: list[tuple[int, dict]], root: Path) -> list[tuple[int, str]]:
    if not root.is_dir():
        return [(1, f"slide root {root} is not a folder")]
    return [(line, f"file not found: {root / row['path'].strip()}")
            for line, row in records
            if row.get("path", "").strip() and not (root / row["path"].strip()).is_file()]


def _positive_float(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False
