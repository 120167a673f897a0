"""Which slides a per-slide command (tile, extract, predict) works on, and which shard.

A :class:`SlideJob` is one slide file with its id. Jobs come from a manifest (``slide_id``,
``path``, optional ``mpp``) or from files, folders and glob patterns on the command line; a job
whose id is unsafe as a file name (:mod:`wsi_ncmi.formats.ids`), whose file is missing, or
whose id another input shares carries a ``problem`` and fails without being opened.
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..formats.ids import id_problem
from ..slides.access import SLIDE_EXTENSIONS


@dataclass
class SlideJob:
    """One slide to process. ``problem`` is set when the slide fails before it is opened
    (duplicate id, unsafe id, missing file). ``mpp_override``: level-0 µm/px from a manifest's
    ``mpp`` column, overriding the slide's metadata."""

    slide_id: str
    path: Path
    mpp_override: float | None = None
    problem: str | None = None


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
        unsafe = id_problem(job.slide_id)
        if unsafe:
            job.problem = (f"{job.path}: {unsafe}; rename the file or give a slide_id in a "
                           "manifest")
        elif not job.path.is_file():
            job.problem = f"{job.path}: file not found{_flag_value_hint(job.path)}"
    for sid, group in by_id.items():
        if len(group) > 1:
            for job in group:
                others = ", ".join(str(o.path) for o in group if o is not job)
                job.problem = f"{job.path}: duplicate slide id {sid!r} (also {others})"
    return jobs


def jobs_from_manifest(manifest: Path, slide_root: Path | None) -> list[SlideJob]:
    """Jobs from a manifest's ``slide_id``, ``path`` and optional ``mpp`` columns; ``path`` is
    relative to ``slide_root`` (or to the manifest's folder when no root is given)."""
    from ..formats.manifests import load_manifest

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
    if shard is None and len(jobs) == 1 and id_problem(jobs[0].slide_id) is None:
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


def shard_jobs(jobs: Sequence[SlideJob], shard: str | None) -> list[SlideJob]:
    """The jobs of shard ``"I/N"`` (all of them for None)."""
    index, count = parse_shard(shard)
    return [j for j in jobs if in_shard(j.slide_id, index, count)]


#: words a user may put after a flag (``--verbose true``), which then read as slide inputs
_FLAG_VALUES = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})


def _flag_value_hint(path: Path) -> str:
    if str(path).lower() in _FLAG_VALUES:
        return f" (flags such as --verbose take no value: drop {str(path)!r})"
    return ""


def _is_slide_name(p: Path) -> bool:
    return p.name.lower().endswith(SLIDE_EXTENSIONS) and not p.name.startswith(".")
