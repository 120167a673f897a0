"""Batches of slides: which slides, which shard, what happened to each, and the summary.

Shared by every per-slide stage (tile, extract, predict). A bad slide never stops a batch:
its one-line reason goes to the ledger and the batch goes on.

The ledger is one JSON record per slide, ``WORKSPACE/ledger/<stage>/<slide_id>.json``, written
atomically, so it survives a kill and shards writing the same workspace never collide;
``WORKSPACE/ledger/<stage>.csv`` is the merged view, rewritten at the end of every run.
Record fields: ``slide_id``, ``stage``, ``status`` (``running`` | ``done`` | ``failed``),
``reason``, ``source`` (slide file name), ``started``/``finished`` (UTC ISO 8601),
``seconds``, ``outputs`` (paths relative to the workspace), plus stage counts (``n_tiles``…).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .atomic import write_json
from .errors import InputError

log = logging.getLogger("wsi_ncmi")

SLIDE_EXTENSIONS = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
    ".czi", ".dcm",
)
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass
class SlideJob:
    """One slide to process. ``problem`` is set when the slide fails before it is opened
    (duplicate id, unsafe id, missing file). ``mpp`` is a µm/px override from a manifest."""

    slide_id: str
    path: Path
    mpp: float | None = None
    problem: str | None = None


@dataclass
class BatchSummary:
    stage: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def text(self) -> str:
        n = len(self.done) + len(self.skipped) + len(self.failed)
        lines = [f"{self.stage}: {n} slide(s): {len(self.done)} done, "
                 f"{len(self.skipped)} already complete, {len(self.failed)} failed"]
        lines += [f"  FAILED {sid}: {why}" for sid, why in self.failed.items()]
        return "\n".join(lines)


def slide_id_for(path: Path) -> str:
    """A slide's id: its file name without the slide extension(s) (``a.ome.tif`` → ``a``)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *SLIDE_EXTENSIONS):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def discover(inputs: Sequence[str]) -> list[Path]:
    """Expand files, folders (searched recursively for slide extensions) and glob patterns.

    An explicit file is kept whatever its extension (a non-slide file then fails as such);
    a path that does not exist and matches no glob is kept too, to be reported as missing.
    """
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and _is_slide_name(q))
        elif p.exists():
            found.append(p)
        elif glob.has_magic(item):
            found += sorted(Path(q) for q in glob.glob(item, recursive=True) if Path(q).is_file())
        else:
            found.append(p)
    return list(dict.fromkeys(found))


def jobs_from_paths(paths: Iterable[Path], ids: Iterable[str] | None = None,
                    mpps: Iterable[float | None] | None = None) -> list[SlideJob]:
    """Make jobs, flagging unsafe ids, missing files and ids shared by several inputs."""
    paths = list(paths)
    ids = list(ids) if ids is not None else [slide_id_for(p) for p in paths]
    mpps = list(mpps) if mpps is not None else [None] * len(paths)
    jobs = [SlideJob(sid, p, m) for sid, p, m in zip(ids, paths, mpps, strict=True)]
    by_id: dict[str, list[SlideJob]] = {}
    for job in jobs:
        by_id.setdefault(job.slide_id, []).append(job)
        if not SAFE_ID.match(job.slide_id):
            job.problem = (f"{job.path}: slide id {job.slide_id!r} is not safe as a file name "
                           "(allowed: letters, digits, '.', '_', '-'); rename the file or give "
                           "a slide_id in a manifest")
        elif not job.path.is_file():
            job.problem = f"{job.path}: file not found"
    for sid, group in by_id.items():
        if len(group) > 1:
            for job in group:
                others = ", ".join(str(o.path) for o in group if o is not job)
                job.problem = f"{job.path}: duplicate slide id {sid!r} (also {others})"
    return jobs


def jobs_from_manifest(manifest: Path, slide_root: Path | None) -> list[SlideJob]:
    """Jobs from a manifest's ``slide_id``, ``path`` and optional ``mpp`` columns; ``path`` is
    relative to ``slide_root`` (or to the manifest's folder when no root is given)."""
    from .manifests import load_manifest

    df = load_manifest(manifest, required=("slide_id", "path"))
    root = slide_root if slide_root is not None else manifest.parent
    mpps = df["mpp"].tolist() if "mpp" in df.columns else None
    mpps = [None if m != m else float(m) for m in mpps] if mpps else None  # NaN → None
    return jobs_from_paths([root / p for p in df["path"]], df["slide_id"].tolist(), mpps)


def select_jobs(inputs: Sequence[str] | None, manifest: Path | None,
                slide_root: Path | None) -> list[SlideJob]:
    """Jobs from a manifest when given, else from inputs (files, folders, globs); an
    :class:`InputError` when neither names a slide."""
    if manifest is not None:
        jobs = jobs_from_manifest(manifest, slide_root)
    elif inputs:
        jobs = jobs_from_paths(discover(inputs))
    else:
        raise InputError("give slide files, folders or globs, or --manifest")
    if not jobs:
        raise InputError(f"no slides found in {' '.join(inputs or [str(manifest)])}")
    return jobs


def record_tag(jobs: Sequence[SlideJob], shard: str | None) -> str:
    """Names a run's provenance record: the slide id when the run is one slide (one job per
    slide on a cluster: records must not overwrite each other), else ``IofN`` or ``all``."""
    if shard is None and len(jobs) == 1:
        return jobs[0].slide_id
    return "all" if shard is None else shard.replace("/", "of")


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"I/N"`` → (I, N) with 0 ≤ I < N; None → (0, 1)."""
    if shard is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise InputError(f"--shard {shard!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(m.group(1)), int(m.group(2))


def in_shard(slide_id: str, index: int, count: int) -> bool:
    """Deterministic shard membership from a hash of the id (independent of input order)."""
    digest = hashlib.sha1(slide_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count == index


class Ledger:
    """Per-slide records of one stage in a workspace (see module docstring)."""

    def __init__(self, workspace: Path, stage: str):
        self.workspace = Path(workspace)
        self.stage = stage
        self.folder = self.workspace / "ledger" / stage

    def path(self, slide_id: str) -> Path:
        return self.folder / f"{slide_id}.json"

    def get(self, slide_id: str) -> dict | None:
        try:
            return json.loads(self.path(slide_id).read_text())
        except (OSError, ValueError):
            return None

    def write(self, slide_id: str, record: dict) -> None:
        write_json(self.path(slide_id), {"slide_id": slide_id, "stage": self.stage, **record})

    def merge(self) -> Path:
        """Rewrite ``ledger/<stage>.csv`` from every record (all shards); return its path.
        Columns: the union of the records' fields, in order of first appearance."""
        from .atomic import atomic_path

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


def run_batch(
    jobs: Sequence[SlideJob],
    ledger: Ledger,
    process: Callable[[SlideJob], dict],
    is_done: Callable[[SlideJob], bool],
) -> BatchSummary:
    """Run ``process`` on every job not already done, recording each outcome.

    ``process`` returns the record fields of a finished slide (``outputs``, counts); it
    raises :class:`InputError` for a bad slide. Any other exception fails that slide with
    its type and message (traceback to the log) and the batch goes on.
    """
    summary = BatchSummary(ledger.stage)
    with _Progress(len(jobs), ledger.stage) as progress:
        for job in jobs:
            outcome = _run_one(job, ledger, process, is_done, summary)
            progress.step(job.slide_id, outcome)
    ledger.merge()
    return summary


def _run_one(job, ledger, process, is_done, summary) -> str:
    if job.problem:
        ledger.write(job.slide_id, {"status": "failed", "reason": job.problem,
                                    "source": job.path.name, "finished": _now()})
        summary.failed[job.slide_id] = job.problem
        return "failed"
    if is_done(job):
        previous = ledger.get(job.slide_id)
        if not previous or previous.get("status") != "done":
            ledger.write(job.slide_id, {"status": "done", "reason": "found complete outputs",
                                        "source": job.path.name, "finished": _now()})
        summary.skipped.append(job.slide_id)
        return "already complete"
    started, t0 = _now(), time.perf_counter()
    ledger.write(job.slide_id, {"status": "running", "source": job.path.name,
                                "started": started})
    base = {"source": job.path.name, "started": started}
    try:
        result = process(job)
    except InputError as exc:
        reason = str(exc)
    except Exception as exc:  # a bad slide must not stop the batch
        reason = f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())}"
        log.debug("%s failed:\n%s", job.slide_id, traceback.format_exc())
    else:
        ledger.write(job.slide_id, {**base, "status": "done", "reason": result.pop("note", ""),
                                    "finished": _now(),
                                    "seconds": round(time.perf_counter() - t0, 3), **result})
        summary.done.append(job.slide_id)
        return "done"
    ledger.write(job.slide_id, {**base, "status": "failed", "reason": reason, "finished": _now(),
                                "seconds": round(time.perf_counter() - t0, 3)})
    summary.failed[job.slide_id] = reason
    return "failed"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _is_slide_name(p: Path) -> bool:
    return p.name.lower().endswith(SLIDE_EXTENSIONS) and not p.name.startswith(".")


class _Progress:
    """A progress bar on a terminal, one log line per slide otherwise."""

    def __init__(self, total: int, stage: str):
        self.total, self.stage, self.count = total, stage, 0
        self.bar = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=False)

    def __enter__(self):
        if self.bar:
            self.bar.start()
            self.task = self.bar.add_task(self.stage, total=self.total)
        return self

    def step(self, slide_id: str, outcome: str) -> None:
        self.count += 1
        if self.bar:
            self.bar.update(self.task, advance=1, description=f"{self.stage} {slide_id}")
        else:
            log.info("%s %d/%d %s: %s", self.stage, self.count, self.total, slide_id, outcome)

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()
