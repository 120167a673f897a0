# ruff: noqa: I001  (commands are imported in pipeline order: that is the order --help lists)
"""The ``wsi-ncmi`` command line: parses options and calls the library.

Each command lives in its own module here and imports heavy libraries (torch, timm) only inside
the command function, so ``--help`` and ``tile`` start fast.
"""

import typer

app = typer.Typer(
    name="wsi-ncmi",
    help="Whole-slide images → slide-level subtype predictions "
    "(tile → extract → train → eval; predict for new slides).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from . import tile  # noqa: E402,F401  (each import registers its command)
from . import extract  # noqa: E402,F401
from . import train  # noqa: E402,F401
from . import evaluate  # noqa: E402,F401
from . import manifest  # noqa: E402,F401
from . import verify  # noqa: E402,F401
from . import demo  # noqa: E402,F401
from . import heatmap  # noqa: E402,F401
from . import predict  # noqa: E402,F401
