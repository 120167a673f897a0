"""Provenance records: which files, code, settings and machine produced a result.

Every command that writes results calls :func:`write_record`, which writes one JSON record
beside them; ``wsi-ncmi verify`` (:mod:`wsi_ncmi.stages.verify`) re-checks it later.

A record holds: the command and its command line, the resolved config, package versions
(incl. the OpenSlide C library), the git commit and dirty flag of the ``wsi_ncmi`` source
checkout (absent when not run from one), the device, the seeds, and every input and output
file with its size (bytes), modification time (UTC) and fingerprint
(:func:`~wsi_ncmi.checksums.fingerprint_file`). No host name is recorded, and paths under the
user's home folder are written as ``~/…``.

Slides are recorded apart (``slides``: slide id, file *name* and fingerprint), never with their
folder: a folder path can carry a label (BRACS files sit in ``Group_MT/Type_IC/``). For the same
reason, any argument of the command line or value of the config that is a slide file or a
folder holding one is written as ``<slides>``. ``verify --slide-root DIR`` finds slides by name
under ``DIR``.

Where files are looked for by :func:`~wsi_ncmi.stages.verify.verify_record`: outputs relative
to the record's folder; inputs inside the record's *scope* (the run folder for run records) at
that relative place too, so a copied run folder verifies against its own files; other inputs at
their recorded path.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import write_json
from ..checksums import FINGERPRINT_MODES, fingerprint_file
from ..slides.access import SLIDE_EXTENSIONS

RECORD_KIND = "wsi-ncmi provenance"
SCHEMA_VERSION = 2
GIT_TIMEOUT_S = 5.0
MAX_CHANGED_LISTED = 50
REDACTED = "<slides>"
# Distributions whose versions decide the numbers (import name is never needed: metadata only).
PACKAGES = ("wsi-ncmi", "torch", "timm", "h5py", "numpy", "scikit-learn", "pandas",
            "openslide-python", "openslide-bin")


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
    inputs: Sequence[Path],
    outputs: Sequence[Path],
    slides: Sequence[tuple[str, Path]] = (),
    scope: Path | None = None,
    seeds: dict | None = None,
    fingerprint: str = "quick",
    name: str = "provenance.json",
) -> Path:
    """Write ``out_dir/name`` (atomically) recording how ``outputs`` were made; return its path.

    ``command`` names the command (e.g. ``tile``); the process's command line is recorded too.
    ``config`` is the resolved config; ``slides`` the (slide id, file) pairs read (recorded by
    file name, see the module docstring); ``scope`` a folder whose inputs are also recorded
    relative to the record (the run folder); ``seeds`` maps a seed's role to its value;
    ``fingerprint`` is ``quick`` or ``sha256``. A listed file that does not exist is recorded as
    ``"missing": true``.
    """
    if fingerprint not in FINGERPRINT_MODES:
        raise ValueError(f"fingerprint must be one of {FINGERPRINT_MODES}, got {fingerprint!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_dir = out_dir.resolve()
    scope = Path(scope).resolve() if scope is not None else record_dir
    slide_paths = [Path(p).expanduser().resolve() for _, p in slides]
    record = {
        "record": RECORD_KIND,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "argv": [_redact(_portable_text(a), slide_paths) for a in sys.argv],
        "config": _redact_all(_plain(config), slide_paths),
        "versions": package_versions(),
        "git": git_state(),
        "device": device_info(),
        "seeds": _plain(seeds or {}),
        "fingerprint": fingerprint,
        "inputs": [_file_entry(p, fingerprint, record_dir, scope) for p in _unique(inputs)],
        "slides": [_slide_entry(sid, p, fingerprint) for sid, p in dict(slides).items()],
        "outputs": [_file_entry(p, fingerprint, record_dir, record_dir)
                    for p in _unique(outputs)],
    }
    path = out_dir / name
    write_json(path, record)
    return path


def is_record(obj: Any) -> bool:
    """Whether a parsed JSON value is a provenance record."""
    return isinstance(obj, dict) and obj.get("record") == RECORD_KIND


def _file_entry(path: Path, mode: str, record_dir: Path, scope: Path) -> dict:
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        raise ValueError(f"{path}: provenance records files, not folders")
    entry: dict[str, Any] = {"path": _portable_text(str(path))}
    if path.is_relative_to(scope):
        entry["relative"] = os.path.relpath(path, record_dir)
    if not path.exists():
        return {**entry, "missing": True}
    return {**entry, **fingerprint_file(path, mode, quickhash=_is_slide(path))}


def _slide_entry(slide_id: str, path: Path, mode: str) -> dict:
    path = Path(path)
    entry: dict[str, Any] = {"slide_id": slide_id, "name": path.name}
    if not path.is_file():
        return {**entry, "missing": True}
    return {**entry, **fingerprint_file(path, mode, quickhash=True)}


def _is_slide(path: Path) -> bool:
    return path.name.lower().endswith(SLIDE_EXTENSIONS)


def _redact(text: str, slide_paths: Sequence[Path]) -> str:
    """``text``, or :data:`REDACTED` when it names a slide file or a folder holding one."""
    if not slide_paths or not text or text.startswith("-"):
        return text
    try:
        path = Path(text).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return text
    if any(p == path or p.is_relative_to(path) for p in slide_paths) and path != Path("/"):
        return REDACTED
    return text


def _redact_all(obj: Any, slide_paths: Sequence[Path]) -> Any:
    if isinstance(obj, dict):
        return {k: _redact_all(v, slide_paths) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact_all(v, slide_paths) for v in obj]
    return _redact(obj, slide_paths) if isinstance(obj, str) else obj


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


def _unique(paths: Sequence[Path]) -> list[Path]:
    return list(dict.fromkeys(Path(p).expanduser().resolve() for p in paths))
