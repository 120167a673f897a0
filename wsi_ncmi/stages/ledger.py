"""The ledger of a per-slide stage: what happened to each slide, surviving kills and shards.

One JSON record per slide, ``WORKSPACE/ledger/<stage>/<slide_id>.json``, written atomically,
so it survives a kill and shards writing the same workspace never collide;
``WORKSPACE/ledger/<stage>.csv`` is the merged view, rewritten at the end of every run.
Record fields: ``slide_id``, ``stage``, ``status`` (``running`` | ``done`` | ``failed``),
``reason``, ``source`` (slide file name), ``started``/``finished`` (UTC ISO 8601),
``seconds``, ``outputs`` (paths relative to the workspace), plus stage counts (``n_tiles``…).
A record's file name is the slide id (:func:`~wsi_ncmi.formats.ids.id_path`): a slide whose id
is unsafe as a file name has none.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..atomic import atomic_path, remove_stale_temps, write_json
from ..formats.ids import id_path


class Ledger:
    """Per-slide records of one stage in a workspace (see module docstring)."""

    def __init__(self, workspace: Path, stage: str):
        self.workspace = Path(workspace)
        self.stage = stage
        self.folder = self.workspace / "ledger" / stage

    def path(self, slide_id: str) -> Path:
        """The record's file; :class:`~wsi_ncmi.errors.InputError` for an unsafe id."""
        return id_path(self.folder, slide_id, ".json")

    def get(self, slide_id: str) -> dict | None:
        try:
            return json.loads(self.path(slide_id).read_text())
        except (OSError, ValueError):
            return None

    def write(self, slide_id: str, record: dict) -> None:
        """Write the slide's record, first removing temporary files a killed writer left
        beside it (a kill can land mid-write; the record is rewritten on resume)."""
        path = self.path(slide_id)
        remove_stale_temps(path)
        write_json(path, {"slide_id": slide_id, "stage": self.stage, **record})

    def merge(self) -> Path:
        """Rewrite ``ledger/<stage>.csv`` from every record (all shards); return its path.
        Columns: the union of the records' fields, in order of first appearance."""
        rows = []
        for p in sorted(self.folder.glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            rec["outputs"] = json.dumps(rec.get("outputs", {}))
            rows.append(rec)
        columns = list(dict.fromkeys(k for rec in rows for k in rec))
        out = self.workspace / "ledger" / f"{self.stage}.csv"
        with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return out
