"""pyproject.toml as a current pip and setuptools read it: the license as an SPDX expression
with its file (a TOML table is deprecated and warned about on every install)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_expression_with_its_file():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert project["requires-python"] == ">=3.11"
    # license strings and license-files need setuptools 77 or later to build
    (requirement,) = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(re.search(r">=(\d+)", requirement)[1]) >= 77
