"""File checksums: the one sha256 of a file, and the fingerprints provenance records keep.

Fingerprints (``checksum`` = ``"<mode>:<hex>"``):

- ``sha256``: SHA-256 of the whole file. Exact, but reads every byte (seconds per GB).
- ``quick`` (default): SHA-256 over the file size, the SHA-256 of its first and of its last
  :data:`QUICK_BLOCK` bytes (1 MiB; a file of at most 2 MiB is thus hashed whole) and, for a
  slide, OpenSlide's ``openslide.quickhash-1`` property (a hash of the slide's
  lowest-resolution pixel data and its metadata, computed by OpenSlide itself). It reads about
  2 MiB plus the smallest pyramid level, whatever the slide's size. It catches a swapped,
  truncated, re-exported or re-scanned file: each changes the size, the TIFF header or tail
  blocks, or the overview pixels. It does not catch an edit confined to the middle of a file
  that keeps its size (for a slide: one that leaves the lowest level and metadata alone); use
  ``sha256`` where that matters.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

READ_BLOCK = 8 << 20  # bytes per read: large enough to stream a multi-GB file quickly
FINGERPRINT_MODES = ("quick", "sha256")
QUICK_BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a whole file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_file(path: str | Path, mode: str = "quick", block: int = QUICK_BLOCK, *,
                     quickhash: bool = False) -> dict:
    """Size (bytes), mtime (ISO 8601, UTC) and checksum of one file.

    ``mode`` is ``quick`` or ``sha256`` (see the module docstring); ``block`` is the head/tail
    length of the quick mode, bytes. With ``quickhash`` (for slides) the quick mode also
    records and digests ``openslide_quickhash1`` (None when OpenSlide cannot open the file).
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
    if quickhash:
        value = _openslide_quickhash(path)
        entry["openslide_quickhash1"] = value
        digest.update((value or "").encode())
    entry["checksum"] = f"quick:{digest.hexdigest()}"
    entry["quick_block"] = block
    return entry


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
