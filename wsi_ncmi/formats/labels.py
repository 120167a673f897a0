"""Slide labels: a manifest's label column mapped to a task's classes.

The task (``task`` section of a training config) names the label column, the classes (their
order is the class index) and a ``label_map`` from raw labels to classes; a raw label not in
the map must equal a class name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .manifests import load_manifest


@dataclass
class SlideLabels:
    """A manifest read for a task: ``classes`` in index order; per slide id its class index
    ``label`` (−1 when the raw label maps to no class), ``raw`` label text and ``patient``
    ("" when the manifest has none)."""

    classes: list[str]
    label: dict[str, int]
    raw: dict[str, str]
    patient: dict[str, str]


def map_labels(df: pd.DataFrame, task: dict) -> tuple[list[str], np.ndarray, list[str]]:
    """Class names, class index per manifest row (−1 when unknown) and one problem line per
    slide whose label maps to no class (or per label_map entry naming an unknown class)."""
    label_map = {str(k): str(v) for k, v in task["label_map"].items()}
    mapped = df[task["label_column"]].str.strip().map(lambda r: label_map.get(r, r))
    classes = ([str(c) for c in task["classes"]] if task["classes"] is not None
               else sorted(c for c in mapped.unique() if c))
    index = {c: i for i, c in enumerate(classes)}
    problems = [f"task.label_map: {raw!r} maps to unknown class {cls!r}"
                for raw, cls in label_map.items() if cls not in index]
    y = mapped.map(lambda c: index.get(c, -1)).to_numpy(dtype=np.int64)
    raw = df[task["label_column"]]
    problems += [f"slide {sid}: unknown label {lab!r}"
                 for sid, lab, yi in zip(df["slide_id"], raw, y, strict=True) if yi < 0]
    return classes, y, problems


def read_labels(manifest: Path, task: dict) -> SlideLabels:
    """The manifest's labels and patients for ``task`` (see :class:`SlideLabels`)."""
    df = load_manifest(manifest, required=("slide_id", task["label_column"]))
    classes, y, _ = map_labels(df, task)
    patients = (df["patient_id"].str.strip() if "patient_id" in df.columns
                else pd.Series([""] * len(df)))
    return SlideLabels(classes=classes,
                       label=dict(zip(df["slide_id"], y.tolist(), strict=True)),
                       raw=dict(zip(df["slide_id"], df[task["label_column"]], strict=True)),
                       patient=dict(zip(df["slide_id"], patients, strict=True)))
