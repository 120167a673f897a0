"""A less noisy lr choice for ``lr: auto``, assembled from the lr study's runs.

The candidate ``cand_auto_top5`` (rule and adoption criterion, written before the comparison:
``results/defaults_rerun/lr_choice_rule.md``): ``lr: auto`` over the grid, each lr scored by
the mean validation macro-F1 of its run's :data:`K` best epochs (``history.csv``) instead of
its best one; the checkpoint kept within a run is unchanged, and the choice among the scores is
the package's own (:func:`~wsi_ncmi.model.lrchoice.fit_fold`: ties to the loss's default lr,
else the smallest), fed the scores in place of the best validation macro-F1.

Per cohort and loss of ``--work/runs`` whose runs of the defaults at every lr of the study
(``study_recipes.LR_RECIPES``, ``bench_defaults.py runs --recipes lr-study``) are evaluated,
the run ``cand_auto_top5`` is assembled seed by seed (the kept lr's run copied, its
``model.json`` given ``lr`` and ``lr_search`` with both scores) and evaluated on test, as
``bench_lr.py --auto`` assembles ``defaults``. The goal table (``bench_defaults.py table``)
reads it like any recipe. Prints each seed whose kept lr differs from ``defaults``'.

    python benchmarks/bench_lr_choice.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from functools import partial
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from bench_defaults import add_study_paths, is_evaluated  # noqa: E402
from bench_lr import lr_study_runs, seeds_by_lr, write_assembly  # noqa: E402

from wsi_ncmi.formats.config import LOSS_LR, load_yaml  # noqa: E402
from wsi_ncmi.formats.runfolder import read_splits  # noqa: E402
from wsi_ncmi.model.fit import FoldContext, TrainedFold  # noqa: E402
from wsi_ncmi.model.lrchoice import fit_fold  # noqa: E402

#: the number of best validation epochs whose mean scores an lr
K = 5
RECIPE = "cand_auto_top5"
SCORE = f"val_top{K}_macro_f1"


def top_k_score(seed_run: Path, k: int = K) -> float:
    """Mean validation macro-F1 of the ``k`` best epochs of a one-fold run (all when fewer)."""
    history = pd.read_csv(seed_run / "fold_0" / "history.csv")
    return float(history["val_macro_f1"].nlargest(k).mean())


def top_k_seed(runs: dict[float, Path], out: Path) -> float:
    """Write ``out``, the seed run the candidate keeps, from that seed's run at each lr
    (``runs``: lr → seed run); returns the kept lr."""
    cfg = load_yaml(runs[min(runs)] / "config.yaml")
    cfg["optim"].update(lr="auto", lr_grid=sorted(runs))
    metas = {lr: json.loads((r / "fold_0" / "model.json").read_text()) for lr, r in runs.items()}
    scores = {lr: top_k_score(r) for lr, r in runs.items()}

    def scored_at(ctx: FoldContext, *_: object) -> TrainedFold:
        lr = ctx.cfg["optim"]["lr"]
        return TrainedFold(model=None, meta={**metas[lr], "best_val_macro_f1": scores[lr]},
                           history=[], embeddings={})

    ctx = FoldContext(cfg=cfg, source=None, labels={}, n_classes=0, device=None)
    kept = fit_fold(ctx, read_splits(runs[min(runs)])["folds"][0], [], 0, "", train=scored_at)
    lr = kept.meta["lr"]
    search = [{"lr": r["lr"], "best_val_macro_f1": metas[r["lr"]]["best_val_macro_f1"],
               SCORE: r["best_val_macro_f1"], "best_epoch": r["best_epoch"],
               "epochs_run": r["epochs_run"]} for r in kept.meta["lr_search"]]
    shutil.copytree(runs[lr], out, copy_function=shutil.copy)
    meta = {**metas[lr], "lr": lr, "lr_search": search}
    (out / "fold_0" / "model.json").write_text(json.dumps(meta, indent=2))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return lr


def assemble(work: Path) -> None:
    """``cand_auto_top5`` for every cohort and loss with the lr study's runs (module
    docstring), with the seeds whose kept lr differs from ``defaults``' printed."""
    for loss_dir in sorted(work.glob("runs/*/*")):
        loss, out = loss_dir.name, loss_dir / RECIPE
        if loss not in LOSS_LR or is_evaluated(out):
            continue
        if (runs := lr_study_runs(loss_dir)) is None:
            print(f"{loss_dir.parent.name}/{loss}: no run at some lr; skipped")
            continue
        picks = write_assembly(out, {s: partial(top_k_seed, at_lr)
                                     for s, at_lr in seeds_by_lr(runs).items()},
                               runs[min(runs)],
                               {"what": f"lr: auto, each lr scored by the mean validation "
                                        f"macro-F1 of its {K} best epochs (bench_lr_choice.py)",
                                "from": {str(lr): r.name for lr, r in runs.items()}})
        now = loss_dir / "defaults" / "assembled.json"
        before = json.loads(now.read_text())["kept_lr"] if now.is_file() else {}
        moved = {s: (before.get(str(s)), lr) for s, lr in picks.items()
                 if before.get(str(s)) != lr}
        print(f"{loss_dir.parent.name}/{loss}: kept lr per seed {picks}"
              + (f"; differs from defaults at seeds {moved}" if moved else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_study_paths(parser)
    assemble(parser.parse_args().work)


if __name__ == "__main__":
    main()
