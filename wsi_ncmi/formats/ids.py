"""The one slide-id check: an id becomes a file name only through here.

A slide id is 1–200 of letters, digits, ``.``, ``_`` and ``-``, starting with a letter or a
digit: no path separator, no ``..``, nothing a shell or a file system treats specially. Every
place where an id becomes a file name (ledger records, tile and feature files, run folders,
heatmaps, predictions, reports) calls :func:`id_path`, which refuses an unsafe id before any
file is touched.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
RULE = "1–200 of letters, digits, '.', '_', '-', starting with a letter or digit"


def id_problem(slide_id: str) -> str | None:
    """Why ``slide_id`` cannot be a file name, or None when it can."""
    if not isinstance(slide_id, str) or not SAFE_ID.match(slide_id):
        return f"slide id {slide_id!r} is not safe as a file name ({RULE})"
    return None


def check_id(slide_id: str) -> str:
    """``slide_id`` itself; :class:`InputError` when it is not safe as a file name."""
    problem = id_problem(slide_id)
    if problem:
        raise InputError(problem)
    return slide_id


def id_path(folder: str | Path, slide_id: str, suffix: str = "") -> Path:
    """``folder/<slide_id><suffix>`` after :func:`check_id` (so it never leaves ``folder``)."""
    return Path(folder) / f"{check_id(slide_id)}{suffix}"
