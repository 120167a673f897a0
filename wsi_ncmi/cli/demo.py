"""``wsi-ncmi demo``: the whole pipeline on a generated cohort, NCMI against CE."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import VerboseOption, fail, setup_logging


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the cohort, workspace, runs and "
                                      "reports.")] = Path("demo_out"),
    slides: Annotated[int, typer.Option(help="Number of generated slides (count; two per "
                                        "patient).")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the cohort, the encoder's random "
                                      "initialisation and training.")] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs per loss (count).")] = 40,
    slide_width_mm: Annotated[tuple[float, float], typer.Option(
        help="Range of the slides' widths, mm (about 0.5 µm/px: 2 000 px per mm).")
    ] = (1.0, 1.5),
    weights: Annotated[Path | None, typer.Option(
        help="Real resnet50_trunc weights (.safetensors or state dict); default: a seeded "
        "random initialisation made locally.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95 % intervals "
                                        "(count).")] = 1000,
    verbose: VerboseOption = False,
) -> None:
    """Generate a heterogeneous cohort and run tile → extract → train (NCMI, CE) → eval →
    compare; print the predict and verify commands to try next."""
    from ..errors import InputError
    from ..stages.demo import DemoConfig, format_table, run_demo

    setup_logging(verbose)
    t0 = time.perf_counter()
    try:
        result = run_demo(DemoConfig(out=out, n_slides=slides, seed=seed, epochs=epochs,
                                     width_mm=slide_width_mm, weights=weights, n_boot=n_boot))
    except InputError as exc:
        fail(exc)
    typer.echo("\nTest split, 95 % bootstrap intervals over patients:\n")
    typer.echo(format_table(result["rows"]))
    typer.echo(f"\n{result['comparison'].text}")
    typer.echo("\nOutputs:")
    for loss, run in result["runs"].items():
        typer.echo(f"  {loss}: report {run / 'eval' / 'test' / 'report.md'}; plots in "
                   f"{run / 'eval' / 'test'}")
        for path in result["heatmaps"][loss]:
            typer.echo(f"  {loss} heatmap {path}")
    typer.echo(f"  previews {out / 'workspace' / 'previews'}")
    typer.echo(f"  comparison {out / 'comparison' / 'comparison.md'}")
    typer.echo(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    typer.echo("\nNext, predict two new slides from a centre the model never saw (probabilities, "
               "heatmaps, a review page):\n  " + result["predict"])
    typer.echo("then re-check every file the demo and predict wrote, slides included:\n  "
               + result["verify"])
