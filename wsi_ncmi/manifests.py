"""Cohort manifests: one row per slide.

Columns: ``slide_id`` (required, unique, safe as a file name), ``path`` (relative to a slide
root given at run time), ``label``, ``patient_id``, and optional ``group`` (centre, scanner),
``split`` (train/val/test), ``fold``, ``mpp`` (µm/px override for slides without metadata).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import InputError


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
