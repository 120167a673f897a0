"""The typer application every command registers on."""

import typer

app = typer.Typer(
    name="wsi-ncmi",
    help="Whole-slide images → slide-level subtype predictions "
    "(tile → extract → train → eval; predict for new slides).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
