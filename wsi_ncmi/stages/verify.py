"""``verify``: re-check provenance records against the files on disk.

:func:`find_records` collects every record under a folder (a workspace, a run folder, the demo's
output); :func:`verify_record` re-fingerprints each file a record lists and reports every file
that drifted, went missing or appeared. Where files are looked for is described in
:mod:`wsi_ncmi.stages.provenance`; slides are found by file name under a slide root the user
gives (records hold no slide folders), and are reported unchecked without one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..checksums import FINGERPRINT_MODES, QUICK_BLOCK, fingerprint_file
from ..errors import InputError
from .provenance import is_record


@dataclass
class Verification:
    """One record checked: ``n_files`` listed, ``problems`` (one line per drifted, missing or
    unexpectedly present file) and ``unchecked`` (slides not looked for: no slide root, or not
    found under it)."""

    record: Path
    n_files: int
    problems: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)


def read_record(record_path: Path) -> dict:
    """A provenance record's contents; :class:`InputError` when it is not one."""
    record_path = Path(record_path)
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        raise InputError(f"{record_path}: provenance record not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{record_path}: not a readable JSON provenance record "
                         f"({' '.join(str(exc).split())})") from None
    if not is_record(record):
        raise InputError(f"{record_path}: not a wsi-ncmi provenance record")
    return record


def find_records(path: Path) -> list[Path]:
    """``path`` itself when a file; for a folder, every record in it and below it, sorted.
    :class:`InputError` when there is none."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    found = [p for p in sorted(path.rglob("*.json")) if _is_record_file(p)]
    if not found:
        raise InputError(f"{path}: no provenance record (*.json) in it or below it")
    return found


class SlideRoots:
    """The folders slides are looked for in, by file name. Each folder is checked at once
    (:class:`InputError` when it is not one) and walked at most once, on the first look-up,
    however many records are verified against it."""

    def __init__(self, roots: Sequence[Path] = ()) -> None:
        self.roots = [Path(r) for r in roots]
        for root in self.roots:
            if not root.is_dir():
                raise InputError(f"--slide-root {root}: not a folder")
        self._index: dict[str, list[Path]] | None = None

    def __bool__(self) -> bool:
        return bool(self.roots)

    def __str__(self) -> str:
        return " or ".join(map(str, self.roots))

    def find(self, name: str) -> list[Path]:
        """Every file called ``name`` under the roots."""
        if self._index is None:
            self._index = {}
            for root in self.roots:
                for path in root.rglob("*"):
                    self._index.setdefault(path.name, []).append(path)
        # only the entries looked up are stat'ed, not every file of a slide archive
        return [p for p in self._index.get(name, []) if p.is_file()]


def verify_record(record_path: Path,
                  slide_roots: SlideRoots | Sequence[Path] = ()) -> Verification:
    """Re-fingerprint every file of a record (see the module docstring); its slides are
    looked for by file name under each folder of ``slide_roots`` (pass one
    :class:`SlideRoots` when verifying many records: the folders are walked once)."""
    record_path = Path(record_path)
    if not isinstance(slide_roots, SlideRoots):
        slide_roots = SlideRoots(slide_roots)
    record = read_record(record_path)
    record_dir = record_path.resolve().parent
    result = Verification(record_path, sum(len(record.get(k, []))
                                           for k in ("inputs", "outputs", "slides")))
    for role in ("inputs", "outputs"):
        for entry in record.get(role, []):
            problem = _entry_problem(entry, role[:-1], _where(entry, record_dir))
            if problem:
                result.problems.append(problem)
    for entry in record.get("slides", []):
        shown = f"slide {entry['slide_id']} ({entry['name']})"
        found = slide_roots.find(entry["name"])
        if len(found) != 1:
            why = ("no --slide-root given" if not slide_roots else
                   f"not under {slide_roots}" if not found else
                   f"{len(found)} files of that name under {slide_roots}")
            result.unchecked.append(f"{shown}: not checked ({why})")
            continue
        problem = _entry_problem({**entry, "path": entry["name"]}, "slide", found[0])
        if problem:
            result.problems.append(problem)
    return result


def _where(entry: dict, record_dir: Path) -> Path:
    """An input or output's place: relative to the record when recorded so (outputs, and
    inputs inside the record's scope: a copied folder checks its own files), else its recorded
    path."""
    if entry.get("relative") is not None:
        return record_dir / entry["relative"]
    return Path(entry.get("path", "?")).expanduser()


def _entry_problem(entry: dict, role: str, where: Path) -> str | None:
    shown = entry.get("path", "?")
    if entry.get("missing"):
        return f"{role} {shown}: absent when recorded, present now" if where.exists() else None
    if not where.is_file():
        looked = "" if str(where) == shown else f" (looked for {where})"
        return f"{role} {shown}: missing{looked}"
    mode = entry.get("checksum", ":").split(":", 1)[0]
    if mode not in FINGERPRINT_MODES:
        return f"{role} {shown}: record has no usable checksum ({entry.get('checksum')!r})"
    now = fingerprint_file(where, mode, entry.get("quick_block", QUICK_BLOCK),
                           quickhash="openslide_quickhash1" in entry)
    if now["size"] != entry.get("size"):
        return f"{role} {shown}: size changed ({entry.get('size')} → {now['size']} bytes)"
    if now["checksum"] == entry["checksum"]:
        return None
    if now.get("openslide_quickhash1") != entry.get("openslide_quickhash1"):
        return (f"{role} {shown}: OpenSlide quickhash differs (slide swapped, re-scanned or "
                "re-exported)")
    return f"{role} {shown}: content changed ({mode} checksum differs)"


def _is_record_file(path: Path) -> bool:
    try:
        return is_record(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
