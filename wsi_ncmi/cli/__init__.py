# ruff: noqa: I001  (commands are imported in pipeline order: that is the order --help lists)
"""The ``wsi-ncmi`` command line: parses options and calls the stages.

Each command lives in its own module here and imports heavy libraries (torch, timm) and its
stage only inside the command function, so ``--help`` and ``tile`` start fast. Importing a
command module registers it on :data:`~wsi_ncmi.cli.app.app`.
"""

from . import tile, extract, tune, train, evaluate, compare, claim, manifest, verify  # noqa: F401
from . import demo, heatmap, predict  # noqa: F401
from .app import app

__all__ = ["app"]
