"""Provenance records: which files, code, settings and machine produced a result.

Every command that writes results calls :func:`write_record`, which writes one JSON record
beside them; ``wsi-ncmi verify`` (:func:`verify_record`) re-checks it later.

A record holds: the command and its command line, the resolved config, package versions
(incl. the OpenSlide C library), the git commit and dirty flag of the ``wsi_ncmi`` source
checkout (absent when not run from one), the device, the seeds, and every input and output
file with its size (bytes), modification time (UTC) and checksum. No host name is recorded,
and paths under the user's home folder are written as ``~/…``.

Fingerprints (``checksum`` = ``"<mode>:<hex>"``):

- ``sha256``: SHA-256 of the whole file. Exact, but reads every byte (seconds per GB).
- ``quick`` (default): SHA-256 over the file size, the SHA-256 of its first and of its last
  :data:`QUICK_BLOCK` bytes (1 MiB; a file of at most 2 MiB is thus hashed whole) and, for a
  file OpenSlide opens as a slide, OpenSlide's ``openslide.quickhash-1`` property (a hash of
  the slide's lowest-resolution pixel data and its metadata, computed by OpenSlide itself).
  It reads about 2 MiB plus the smallest pyramid level, whatever the slide's size. It catches
  a swapped, truncated, re-exported or re-scanned file: each changes the size, the TIFF header
  or tail blocks, or the overview pixels. It does not catch an edit confined to the middle of
  a file that keeps its size (for a slide: one that leaves the lowest level and metadata
  alone); use ``sha256`` where that matters.

Where files are looked for by :func:`verify_record`: inputs at their recorded absolute path;
outputs relative to the record's folder (so a moved or copied run folder still verifies).
A changed modification time alone is not drift (copies often reset it); the content is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import write_json
from ..checksums import file_sha256
from ..errors import InputError
from ..slides.access import SLIDE_EXTENSIONS

RECORD_KIND = "wsi-ncmi provenance"
SCHEMA_VERSION = 1
FINGERPRINT_MODES = ("quick", "sha256")
QUICK_BLOCK = 1 << 20
GIT_TIMEOUT_S = 5.0
MAX_CHANGED_LISTED = 50
# Distributions whose versions decide the numbers (import name is never needed: metadata only).
PACKAGES = ("wsi-ncmi", "torch", "timm", "h5py", "numpy", "scikit-learn", "pandas",
            "openslide-python", "openslide-bin")
# Only files with a slide extension are offered to OpenSlide for a quickhash.
SLIDE_SUFFIXES = frozenset(SLIDE_EXTENSIONS)


def fingerprint_file(path: str | Path, mode: str = "quick", block: int = QUICK_BLOCK) -> dict:
    """Size (bytes), mtime (ISO 8601, UTC) and checksum of one file.

    ``mode`` is ``quick`` or ``sha256`` (see the module docstring); ``block`` is the head/tail
    length of the quick mode, bytes. Slides also get ``openslide_quickhash1`` in quick mode
    (None when the file has a slide extension but OpenSlide cannot open it).
    """
    if mode not in FINGERPRINT_MODES:
        raise ValueError(f"fingerprint mode must be one of {FINGERPRINT_MODES}, got {mode!r}")
    path = Path(path)
    st = path.stat()
    entry: dict[str, Any] = {
        "size": st.st_size,
        "mtime": datetime.fromtimestamp(st.st_mtime, UTC).isoformat(timespec="microseconds"),
    }
    if mode == "sha256":
        entry["checksum"] = f"sha256:{file_sha256(path)}"
        return entry
    digest = hashlib.sha256(st.st_size.to_bytes(8, "little"))
    for part in _head_tail(path, st.st_size, block):
        digest.update(hashlib.sha256(part).digest())
    if path.suffix.lower() in SLIDE_SUFFIXES:
        quickhash = _openslide_quickhash(path)
        entry["openslide_quickhash1"] = quickhash
        digest.update((quickhash or "").encode())
    entry["checksum"] = f"quick:{digest.hexdigest()}"
    entry["quick_block"] = block
    return entry


def package_versions() -> dict[str, str | None]:
    """Versions of Python, the packages in :data:`PACKAGES` (None when not installed) and the
    OpenSlide C library, read from package metadata without importing torch or timm."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions["wsi-ncmi"] is None:
        versions["wsi-ncmi"] = __version__
    versions["openslide-library"] = _openslide_library()
    return versions


def git_state(timeout: float = GIT_TIMEOUT_S) -> dict | None:
    """``{"commit", "dirty", "changed"}`` of the git checkout holding this ``wsi_ncmi`` source,
    or None when the package is not inside one (installed from a wheel, no git, a timeout).

    ``dirty`` is true when a tracked file differs from the commit or an untracked file sits in
    the package folder; ``changed`` lists up to :data:`MAX_CHANGED_LISTED` such paths."""
    package = Path(__file__).resolve().parent
    top = _git(["rev-parse", "--show-toplevel"], package, timeout)
    if top is None:
        return None
    top_path = Path(top.strip())
    rel = package.relative_to(top_path).as_posix() if package.is_relative_to(top_path) else None
    if rel is None or _git(["ls-files", "--error-unmatch", f"{rel}/__init__.py"],
                           top_path, timeout) is None:
        return None
    commit = _git(["rev-parse", "HEAD"], top_path, timeout)
    tracked = _git(["status", "--porcelain", "--untracked-files=no"], top_path, timeout)
    untracked = _git(["status", "--porcelain", "--untracked-files=all", "--", rel],
                     top_path, timeout)
    if commit is None or tracked is None or untracked is None:
        return None
    changed = sorted({line[3:] for line in (tracked + untracked).splitlines() if line.strip()})
    return {"commit": commit.strip(), "dirty": bool(changed),
            "changed": changed[:MAX_CHANGED_LISTED]}


def device_info() -> dict:
    """CPU model, logical cores, OS/architecture and, when torch is already imported, its
    thread count and CUDA state (device names only when CUDA was initialised). No host name."""
    info: dict[str, Any] = {"cpu": _cpu_model(), "logical_cores": os.cpu_count(),
                            "platform": platform.platform(), "machine": platform.machine()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = bool(torch.cuda.is_available())
        info["cuda_version"] = torch.version.cuda
        if torch.cuda.is_initialized():
            info["cuda_devices"] = [torch.cuda.get_device_name(i)
                                    for i in range(torch.cuda.device_count())]
    return info


def write_record(
    out_dir: Path,
    *,
    command: str,
    config: dict,
    inputs: list[Path],
    outputs: list[Path],
    seeds: dict | None = None,
    fingerprint: str = "quick",
    name: str = "provenance.json",
) -> Path:
    """Write ``out_dir/name`` (atomically) recording how ``outputs`` were made; return its path.

    ``command`` names the command (e.g. ``tile``); the process's command line is recorded too.
    ``config`` is the resolved config; ``seeds`` maps a seed's role to its value;
    ``fingerprint`` is ``quick`` or ``sha256`` (module docstring). A listed file that does not
    exist is recorded as ``"missing": true``.
    """
    if fingerprint not in FINGERPRINT_MODES:
        raise ValueError(f"fingerprint must be one of {FINGERPRINT_MODES}, got {fingerprint!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_dir = out_dir.resolve()
    record = {
        "record": RECORD_KIND,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "argv": [_portable_text(a) for a in sys.argv],
        "config": _plain(config),
        "versions": package_versions(),
        "git": git_state(),
        "device": device_info(),
        "seeds": _plain(seeds or {}),
        "fingerprint": fingerprint,
        "inputs": [_file_entry(p, fingerprint, None) for p in _unique(inputs)],
        "outputs": [_file_entry(p, fingerprint, record_dir) for p in _unique(outputs)],
    }
    path = out_dir / name
    write_json(path, record)
    return path


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
    if not _is_record(record):
        raise InputError(f"{record_path}: not a wsi-ncmi provenance record")
    return record


def verify_record(record_path: Path) -> list[str]:
    """Re-fingerprint every file of a record; one line per drifted, missing or unexpectedly
    present file (empty list: all files as recorded). Outputs are looked for relative to the
    record's folder, inputs at their recorded path."""
    record_path = Path(record_path)
    record = read_record(record_path)
    record_dir = record_path.resolve().parent
    problems = []
    for role in ("inputs", "outputs"):
        for entry in record.get(role, []):
            problem = _entry_problem(entry, role[:-1], record_dir)
            if problem:
                problems.append(problem)
    return problems


def find_records(path: Path) -> list[Path]:
    """``path`` itself when a file; for a folder, the records among its ``*.json`` files and
    those of its ``provenance/`` subfolder. :class:`InputError` when there are none."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    candidates = sorted(path.glob("*.json")) + sorted((path / "provenance").glob("*.json"))
    found = [p for p in candidates if _is_record_file(p)]
    if not found:
        raise InputError(f"{path}: no provenance record (*.json) here or in provenance/")
    return found


def _entry_problem(entry: dict, role: str, record_dir: Path) -> str | None:
    shown = entry.get("path", "?")
    if entry.get("relative") is not None:
        where = record_dir / entry["relative"]
    else:
        where = Path(shown).expanduser()
    if entry.get("missing"):
        return f"{role} {shown}: absent when recorded, present now" if where.exists() else None
    if not where.is_file():
        looked = "" if str(where) == shown else f" (looked for {where})"
        return f"{role} {shown}: missing{looked}"
    mode = entry.get("checksum", ":").split(":", 1)[0]
    if mode not in FINGERPRINT_MODES:
        return f"{role} {shown}: record has no usable checksum ({entry.get('checksum')!r})"
    now = fingerprint_file(where, mode, entry.get("quick_block", QUICK_BLOCK))
    if now["size"] != entry.get("size"):
        return f"{role} {shown}: size changed ({entry.get('size')} → {now['size']} bytes)"
    if now["checksum"] == entry["checksum"]:
        return None
    if now.get("openslide_quickhash1") != entry.get("openslide_quickhash1"):
        return (f"{role} {shown}: OpenSlide quickhash differs (slide swapped, re-scanned or "
                "re-exported)")
    return f"{role} {shown}: content changed ({mode} checksum differs)"


def _file_entry(path: Path, mode: str, record_dir: Path | None) -> dict:
    path = Path(path).expanduser().resolve()
    entry: dict[str, Any] = {"path": _portable_text(str(path))}
    if record_dir is not None:
        entry["relative"] = os.path.relpath(path, record_dir)
    if path.is_dir():
        raise ValueError(f"{path}: provenance records files, not folders")
    if not path.exists():
        return {**entry, "missing": True}
    return {**entry, **fingerprint_file(path, mode)}


def _head_tail(path: Path, size: int, block: int) -> tuple[bytes, bytes]:
    """First ``block`` bytes and the last ``block`` bytes after them (non-overlapping: a
    file of ≤ 2 × ``block`` bytes is covered whole)."""
    head_len = min(size, block)
    tail_len = min(size - head_len, block)
    with open(path, "rb") as f:
        head = f.read(head_len)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
    return head, tail


def _openslide_quickhash(path: Path) -> str | None:
    """OpenSlide's ``openslide.quickhash-1`` of a slide; None when OpenSlide (the Python
    package or the C library) is unavailable or the file is not a slide it opens."""
    try:
        import openslide
    except (ImportError, OSError):
        return None
    try:
        if openslide.OpenSlide.detect_format(str(path)) is None:
            return None
        with openslide.OpenSlide(str(path)) as slide:
            return slide.properties.get("openslide.quickhash-1")
    except (OSError, openslide.OpenSlideError):
        return None


def _openslide_library() -> str | None:
    try:
        import openslide
    except (ImportError, OSError):
        return None
    return getattr(openslide, "__library_version__", None)


def _git(args: list[str], cwd: Path, timeout: float) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _portable_text(text: str) -> str:
    """``text`` with a leading home-folder path written as ``~`` (keeps user names out)."""
    home = str(Path.home())
    if home not in ("", "/") and (text == home or text.startswith(home + os.sep)):
        return "~" + text[len(home):]
    return text


def _plain(obj: Any) -> Any:
    """``obj`` as JSON-ready values: mappings, lists, numbers, strings (paths as text)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_plain(v) for v in (sorted(obj, key=str) if isinstance(obj, set | frozenset)
                                    else obj)]
    if isinstance(obj, Path):
        return _portable_text(str(obj))
    if isinstance(obj, str):
        return _portable_text(obj)
    if obj is None or isinstance(obj, bool | int | float):
        return obj
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(Path(p).expanduser().resolve() for p in paths))


def _is_record(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("record") == RECORD_KIND


def _is_record_file(path: Path) -> bool:
    try:
        return _is_record(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
