"""The typer application every command registers on.

Help is rendered plainly (``rich_markup_mode=None``): typer's rich panels print a type such as
``<bool>`` after every option, flags included, which reads as if ``--verbose`` took a value.
"""

import typer

app = typer.Typer(
    name="wsi-ncmi",
    help="Whole-slide images → slide-level subtype predictions "
    "(tile → extract → train → eval; predict for new slides).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
