"""``wsi-ncmi manifest``: build the cohort manifests and validate any manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import VerboseOption, fail, setup_logging

manifest_app = typer.Typer(
    help="Build cohort manifests (CAMELYON-17, BRACS) and validate manifests.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(manifest_app, name="manifest")

OutOption = Annotated[Path, typer.Option("--out", help="Manifest CSV to write (replaced "
                                         "atomically).")]


@manifest_app.command("camelyon17")
def camelyon17(
    labels: Annotated[Path, typer.Option("--labels", help="CAMELYON-17 stage_labels.csv "
                                         "(columns patient,stage).")],
    out: OutOption,
    layout: Annotated[str, typer.Option(help="Slide paths: 'flat' (patient_XXX_node_Y.tif) or "
                                        "'centre' (center_C/patient_XXX_node_Y.tif).")] = "flat",
    verbose: VerboseOption = False,
) -> None:
    """CAMELYON-17: the 500 labelled training slides with patient, centre and pN stage."""
    from ..errors import InputError
    from ..formats.cohorts import CAMELYON_LAYOUTS, camelyon17_manifest

    setup_logging(verbose)
    try:
        if layout not in CAMELYON_LAYOUTS:
            raise InputError(f"--layout must be one of {', '.join(CAMELYON_LAYOUTS)}")
        _write(camelyon17_manifest(labels, layout), out)
    except InputError as exc:
        fail(exc)


@manifest_app.command("bracs")
def bracs(
    root: Annotated[Path, typer.Argument(metavar="BRACS_WSI", help="The BRACS_WSI folder "
                                         "(holding train/, val/, test/) or its parent.")],
    out: OutOption,
    verbose: VerboseOption = False,
) -> None:
    """BRACS: full manifest (7 subtypes, 3 groups, official split) from the official tree."""
    from ..errors import InputError
    from ..formats.cohorts import scan_bracs_tree

    setup_logging(verbose)
    try:
        _write(scan_bracs_tree(root), out)
    except InputError as exc:
        fail(exc)


@manifest_app.command("bracs-groups")
def bracs_groups(
    labels: Annotated[Path, typer.Option("--labels", help="bracs_groups.csv (columns "
                                         "filename,type).")],
    out: OutOption,
    verbose: VerboseOption = False,
) -> None:
    """BRACS: coarse groups only (no subtype, split or patient) from bracs_groups.csv."""
    from ..errors import InputError
    from ..formats.cohorts import bracs_groups_manifest

    setup_logging(verbose)
    try:
        _write(bracs_groups_manifest(labels), out)
    except InputError as exc:
        fail(exc)


@manifest_app.command("check")
def check(
    csv_path: Annotated[Path, typer.Argument(metavar="CSV", help="Manifest CSV to validate.")],
    slide_root: Annotated[Path | None, typer.Option(
        help="Folder the manifest's paths are relative to; checks every file is there.")] = None,
    config: Annotated[list[Path] | None, typer.Option(
        "--config", metavar="YAML", help="Task config YAML (task + split sections); repeat to "
        "merge, later files win. Checks labels and split columns against it.")] = None,
    verbose: VerboseOption = False,
) -> None:
    """Validate a manifest; list every problem with its line number; exit 1 on any."""
    from ..errors import InputError
    from ..formats.config import load_config
    from ..formats.manifests import check_manifest

    setup_logging(verbose)
    try:
        cfg = load_config(config) if config else None
        report = check_manifest(csv_path, slide_root, cfg)
    except InputError as exc:
        fail(exc)
    for note in report.notes:
        typer.echo(f"note: {csv_path}: {note}", err=True)
    for problem in report.problems:
        typer.echo(f"{csv_path}: {problem}")
    if report.problems:
        typer.echo(f"{len(report.problems)} problem(s) in {report.rows} row(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {csv_path}: {report.rows} row(s)", err=True)


def _write(df, out: Path) -> None:
    from ..formats.manifests import write_manifest

    write_manifest(df, out)
    typer.echo(f"wrote {out}: {len(df)} slide(s)", err=True)
