"""The command line's option defaults, read from the commands themselves.

For what runs the commands and must agree with them (the Snakemake workflow reads a setting
left ``null`` in ``pipelines/config.yaml`` from here), so no default is written twice.
"""

from __future__ import annotations

import typer

from .app import app


def command_defaults(command: str) -> dict[str, object]:
    """Option (its Python name, e.g. ``seg_mpp``) → default of ``wsi-ncmi COMMAND``.

    Every command is registered once :mod:`wsi_ncmi.cli` is imported (which importing this
    module does); :class:`KeyError` for an unknown command."""
    group = typer.main.get_command(app)
    if command not in group.commands:
        raise KeyError(f"no command {command!r} (one of {', '.join(group.commands)})")
    return {p.name: p.default for p in group.commands[command].params
            if p.param_type_name == "option"}
