"""The package's shape: imports point down the layers, no import loops, short modules."""

from __future__ import annotations

from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

PACKAGE = Path(__file__).resolve().parents[1] / "wsi_ncmi"
# Highest first; a layer may import only the layers below it (docs/architecture.md).
LAYERS = ("cli", "stages", "model", "stats", "slides", "formats")
BASICS = ("errors", "atomic", "units", "checksums")
MAX_LINES = 400


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("wsi_ncmi", cache_dir=None)


def test_layers_only_import_downwards(graph):
    illegal = graph.find_illegal_dependencies_for_layers(
        layers=[f"wsi_ncmi.{name}" for name in LAYERS], containers=None)
    lines = [f"{d.importer} imports {d.imported} (e.g. {d.routes})" for d in illegal]
    assert not lines, "\n".join(lines)


def test_basics_import_no_layer(graph):
    upward = [(f"wsi_ncmi.{b}", imported) for b in BASICS
              for imported in graph.find_modules_directly_imported_by(f"wsi_ncmi.{b}")
              if imported.startswith("wsi_ncmi.") and imported.split(".")[1] in LAYERS]
    assert not upward


def test_no_import_cycles(graph):
    cycles = []
    for module in sorted(graph.modules):
        if not module.startswith("wsi_ncmi"):
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith("wsi_ncmi") and imported != module and \
                    not module.startswith(imported + ".") and \
                    graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} → {imported} → … → {module}")
    assert not cycles, "\n".join(cycles)


def test_modules_are_short():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
