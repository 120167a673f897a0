"""File checksums: the one sha256 of a file used by encoders, probes and provenance."""

from __future__ import annotations

import hashlib
from pathlib import Path

READ_BLOCK = 8 << 20  # bytes per read: large enough to stream a multi-GB file quickly


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a whole file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()
