"""``wsi-ncmi eval``: metrics, predictions, plots and a report of a trained run on one split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import VerboseOption, fail, setup_logging


@app.command("eval")
def eval_command(
    run: Annotated[Path, typer.Argument(
        metavar="RUN", help="Run folder written by `wsi-ncmi train`, or a multi-seed folder "
        "(train --seeds): every seed.")],
    split: Annotated[str, typer.Option(help="Part of every fold to evaluate: train | val | "
                                       "test.")] = "test",
    features_dir: Annotated[Path | None, typer.Option(
        help="Folder of <slide_id>.h5 feature files (default: data.features_dir of "
        "RUN/config.yaml).")] = None,
    manifest: Annotated[Path | None, typer.Option(
        help="Manifest CSV with the labels (default: data.manifest of RUN/config.yaml).")
    ] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples of patients (count).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and of the probe's "
                                      "cross-validation folds (integer).")] = 0,
    probe_input: Annotated[str, typer.Option(
        help="Linear-probe input: z (slide embedding) | z_tilde (NCMI runs only).")] = "z",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    heatmaps: Annotated[int, typer.Option(
        help="Draw attention heatmaps of this many most confident slides (count; 0 = none).")
    ] = 0,
    slide_root: Annotated[Path | None, typer.Option(
        help="Folder the manifest's slide paths are relative to, for --heatmaps (default: "
        "the manifest's folder).")] = None,
    review: Annotated[bool, typer.Option(
        help="Write the review page eval/<split>/review/index.html: predictions beside true "
        "labels, attention on zoomable slide images (slide files as for --heatmaps).")
    ] = False,
    review_mpp: Annotated[float, typer.Option(
        help="Finest resolution of the review page's images (µm/px).")] = 1.0,
    review_max_mb: Annotated[float, typer.Option(
        help="Disk budget of one slide's review image (MiB).")] = 64.0,
    verbose: VerboseOption = False,
) -> None:
    """Metrics with bootstrap intervals, predictions, plots and report.md for one split."""
    import json

    from ..errors import InputError
    from ..formats.seedruns import is_multi_seed
    from ..stages.evaluate import evaluate_run
    from ..stages.multiseed import evaluate_seeds
    from ..stages.review import ReviewSettings
    from ..stats.reports import HEAD_NAMES, fmt_ci

    setup_logging(verbose)
    options = {"features_dir": features_dir, "manifest": manifest, "n_boot": n_boot,
               "seed": seed, "probe_input": probe_input, "device": device,
               "heatmaps": heatmaps, "slide_root": slide_root,
               "review": ReviewSettings(review_mpp, round(review_max_mb * 2**20))
               if review else None}
    try:
        if is_multi_seed(run):
            out = evaluate_seeds(run, split, **options)
            typer.echo((out / "report.md").read_text())
            typer.echo(f"wrote {out}")
            return
        out = evaluate_run(run, split, **options)
    except InputError as exc:
        fail(exc)
    metrics = json.loads((out / "metrics.json").read_text())
    for head, m in metrics["heads"].items():
        typer.echo(f"{HEAD_NAMES[head]:>15}: macro-F1 {fmt_ci(m['macro_f1'])}  "
                   f"AUC {fmt_ci(m['auc_macro'])}")
    typer.echo(f"wrote {out}")
    if heatmaps > 0:
        typer.echo(f"heatmaps of the {heatmaps} most confident slides in {out / 'heatmaps'}")
