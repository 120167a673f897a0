"""The learning rate per loss: the defaults study's runs at each lr of the code's grid.

Reads the multi-seed runs of ``bench_defaults.py`` (``--work``) whose recipe is the code's
current defaults but for the lr, at one of :data:`LRS` (model, optimiser and loss settings of
the run's first ``config.yaml`` against the defaults resolved now, the loss's constructor
defaults included — so a run made before a default changed no longer counts), and per loss
prints the validation macro-F1 (mean over 3 seeds of the kept checkpoint's) on each learnable
cohort, its mean over them, and the lr the rule picks (the loss's single default,
``formats/config.LOSS_LR``: what ``lr: null`` trains at, what ``tune`` starts from and where
``lr: auto`` breaks exact ties):

    the lr with the highest mean validation macro-F1 over the learnable cohorts
    (``study_cohorts.LEARNABLE``, or ``--cohorts``); an lr within
    :data:`TIE` of that best counts as tied, and of tied ones the smallest wins.

The test split is not read. The table goes to ``--results/lr.md``; a loss whose pick differs
from ``formats/config.LOSS_LR``, or that lacks runs at some lr, is named at the end, so the
code and the study cannot drift apart unnoticed.

The code's defaults train with ``lr: auto``: per fold, each lr of the grid, the best on
validation kept (``wsi_ncmi/model/lrchoice.py``). Training being deterministic, ``--auto``
assembles each cohort's and loss's ``defaults`` run from these runs instead of training them
again: per seed the package's own rule picks the lr, the kept run is copied with the
``model.json`` and ``config.yaml`` train would write, and the assembly is evaluated on test
(``assembled.json`` in the run says so). A ``defaults`` run at one lr (before ``lr: auto``) is
kept under its lr's recipe (``study_recipes.LR_RECIPES``); cells without a run at every lr
are named, to be trained with ``bench_defaults.py runs --recipes lr-study`` (or ``defaults``,
which trains ``lr: auto`` for real).

``--add-lr EXTRA INTO`` does the same for one lr more: per cohort and loss, the recipe INTO
of ``study_recipes.CANDIDATES`` (``lr: auto`` over the grid plus one lr) assembled from the
``defaults`` run (whose ``model.json`` records every lr's validation result) and EXTRA (the
defaults at the added lr), by the same rule, and evaluated on test.

``--cohort-table COHORT`` writes ``COHORT_lr.md``: on one cohort, each lr's run and the
assembled ``auto`` one on test (for a cohort without tunes, so without a goal-table row).

    python benchmarks/bench_lr.py
    python benchmarks/bench_lr.py --auto
    python benchmarks/bench_lr.py --add-lr cand_lr3e2 cand_auto_5lr
    python benchmarks/bench_lr.py --cohort-table c2_d256_w1000_s12
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from bench_defaults import (  # noqa: E402
    add_study_paths,
    first_config,
    is_evaluated,
    own_head,
    validation_f1,
)
from study_cohorts import LEARNABLE  # noqa: E402
from study_recipes import CANDIDATES, LR_RECIPES  # noqa: E402
from study_recipes import LR_STUDY as LRS  # noqa: E402

from wsi_ncmi.formats.config import LOSS_LR, LR_GRID, load_yaml, resolve_config  # noqa: E402
from wsi_ncmi.formats.runfolder import read_splits  # noqa: E402
from wsi_ncmi.formats.seedruns import (  # noqa: E402
    SEEDS,
    is_multi_seed,
    seed_dir,
    seed_runs,
    write_seed_index,
)
from wsi_ncmi.model.fit import FoldContext, TrainedFold, TrainingDiverged  # noqa: E402
from wsi_ncmi.model.lossnames import LOSS_NAMES  # noqa: E402
from wsi_ncmi.model.lrchoice import fit_fold  # noqa: E402
from wsi_ncmi.stages.multiseed import evaluate_seeds  # noqa: E402
from wsi_ncmi.stages.train import resolved_loss_section  # noqa: E402

TIE = 0.01


def recipe_but_lr(config: dict) -> dict:
    """What the lr study holds fixed: the model, the optimiser but its lr (and the grid of
    ``lr: auto``), the loss settings."""
    optim = {k: v for k, v in config["optim"].items() if k not in ("lr", "lr_grid")}
    return {"model": config["model"], "optim": optim, "loss": config["loss"]}


def defaults_but_lr(loss: str) -> dict:
    """:func:`recipe_but_lr` of the code's defaults for ``loss``, its settings filled in as
    ``train`` writes them."""
    cfg = resolve_config({"loss": {"name": loss}}, LOSS_NAMES)
    cfg["loss"] = resolved_loss_section(cfg, 2)
    return recipe_but_lr(cfg)


def study_lr(run: Path, want: dict) -> float | None:
    """The lr of ``run`` when it is a multi-seed run of the recipe ``want`` (a
    :func:`defaults_but_lr`) at one of :data:`LRS`, else None."""
    if not is_multi_seed(run):
        return None
    config = first_config(run)
    lr = config["optim"]["lr"]
    return lr if recipe_but_lr(config) == want and lr in LRS else None


def validation_by_lr(work: Path, cohort: str, loss: str) -> dict[float, float]:
    """lr → mean validation macro-F1 over seeds, for the runs of the defaults but the lr.
    Several runs of one recipe (kept under different names) should agree, training being
    deterministic; when they do not, they are named and their mean is used."""
    found: dict[float, dict[str, float]] = {}
    want = defaults_but_lr(loss)
    for run in sorted((work / "runs" / cohort / loss).glob("*")):
        if (lr := study_lr(run, want)) is not None:
            found.setdefault(lr, {})[run.name] = validation_f1(run)
    for lr, runs in found.items():
        if max(runs.values()) - min(runs.values()) > 1e-9:
            print(f"{cohort} {loss} lr {lr:g}: runs of one recipe disagree {runs}",
                  file=sys.stderr)
    return {lr: sum(runs.values()) / len(runs) for lr, runs in found.items()}


def pick(means: dict[float, float]) -> float:
    """The rule: the smallest lr within :data:`TIE` of the best mean."""
    best = max(means.values())
    return min(lr for lr, v in means.items() if v >= best - TIE)


def lr_table(work: Path, cohorts: list[str]) -> tuple[str, list[str]]:
    """The markdown table over ``cohorts`` and the losses whose pick is not ``LOSS_LR``'s or
    that lack runs."""
    lines = ["| loss | " + " | ".join(f"lr {lr:g}" for lr in LRS) + " | pick | code |",
             "|---|" + "---|" * (len(LRS) + 2)]
    drift = []
    for loss in LOSS_NAMES:
        per = {c: validation_by_lr(work, c, loss) for c in cohorts}
        complete = [lr for lr in LRS if all(lr in per[c] for c in cohorts)]
        means = {lr: sum(per[c][lr] for c in cohorts) / len(cohorts) for lr in complete}
        cells = [", ".join(f"{per[c][lr]:.3f}" if lr in per[c] else "–" for c in cohorts)
                 + (f" (**{means[lr]:.3f}**)" if lr in means else "") for lr in LRS]
        chosen = pick(means) if len(means) == len(LRS) else None
        if chosen is None:
            drift.append(f"{loss} (runs missing)")
        elif chosen != LOSS_LR[loss]:
            drift.append(loss)
        lines.append(f"| {loss} | " + " | ".join(cells) + " | "
                     + (f"{chosen:g}" if chosen is not None else "incomplete")
                     + f" | {LOSS_LR[loss]:g} |")
    return "\n".join(lines) + "\n", drift


def _read_trained(run: Path) -> TrainedFold:
    """The kept checkpoint's ``model.json`` of a one-fold run, as the result of a training."""
    meta = json.loads((run / "fold_0" / "model.json").read_text())
    return TrainedFold(model=None, meta=meta, history=[], embeddings={})


def auto_seed(runs: dict[float, Path], out: Path) -> float:
    """Write ``out``, the seed run ``lr: auto`` trains, from the runs of that seed at each lr of
    :data:`LRS` (``runs``: lr → seed run; training is deterministic, so each is what auto's
    training at that lr gives): the lr is chosen by the package's own rule
    (:func:`~wsi_ncmi.model.lrchoice.fit_fold`, fed the runs' results), the kept run is copied
    and its ``model.json`` and ``config.yaml`` say ``lr``, ``lr_search`` and ``lr: auto`` as
    train writes them. Returns the kept lr."""
    cfg = load_yaml(runs[LRS[0]] / "config.yaml")
    cfg["optim"].update(lr="auto", lr_grid=list(LRS))
    ctx = FoldContext(cfg=cfg, source=None, labels={}, n_classes=0, device=None)
    fold = read_splits(runs[LRS[0]])["folds"]
    if len(fold) != 1:
        raise SystemExit(f"{runs[LRS[0]]}: the study's runs have one fold")

    def trained_at(ctx: FoldContext, *_: object) -> TrainedFold:
        return _read_trained(runs[ctx.cfg["optim"]["lr"]])

    kept = fit_fold(ctx, fold[0], [], 0, "", train=trained_at)
    shutil.copytree(runs[kept.meta["lr"]], out, copy_function=shutil.copy)
    (out / "fold_0" / "model.json").write_text(json.dumps(kept.meta, indent=2))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return kept.meta["lr"]


def lr_study_runs(loss_dir: Path) -> dict[float, Path] | None:
    """lr → the evaluated multi-seed run of the code's defaults at that lr, for every lr of
    :data:`LRS`, in a cohort's loss folder; None when one is missing or not that recipe."""
    want = defaults_but_lr(loss_dir.name)
    runs = {lr: loss_dir / LR_RECIPES[lr] for lr in LRS}
    return (runs if all(study_lr(r, want) == lr and is_evaluated(r) for lr, r in runs.items())
            else None)


def seeds_by_lr(runs: dict[float, Path]) -> dict[int, dict[float, Path]]:
    """Seed → lr → that seed's run, over the seeds every lr's multi-seed run has."""
    by_lr = {lr: seed_runs(r) for lr, r in runs.items()}
    common = sorted(set.intersection(*(set(s) for s in by_lr.values())))
    return {s: {lr: seeds[s] for lr, seeds in by_lr.items()} for s in common}


def assemble_auto(work: Path) -> list[str]:
    """Per cohort and loss of ``work/runs``: ``defaults`` (the code's defaults, ``lr: auto``)
    assembled seed by seed from the lr study's runs (:func:`auto_seed`), then evaluated on
    test. A ``defaults`` run at one lr (the defaults before ``lr: auto``) is first kept under
    its lr's recipe (or removed, when that recipe's run is there with the same validation
    result: a copy). Returns the cohort/loss pairs that lack a run at some lr."""
    if tuple(LR_GRID) != LRS:
        raise SystemExit(f"the code's lr grid {LR_GRID} is not the study's lrs {LRS}")
    todo = []
    for loss_dir in sorted(work.glob("runs/*/*")):
        loss, old = loss_dir.name, loss_dir / "defaults"
        if loss not in LOSS_LR:
            continue
        cell = f"{loss_dir.parent.name}/{loss}"
        if is_multi_seed(old) and (was := study_lr(old, defaults_but_lr(loss))) is not None:
            kept = loss_dir / LR_RECIPES[was]
            if not is_multi_seed(kept):
                old.rename(kept)
            elif abs(validation_f1(kept) - validation_f1(old)) < 1e-9:
                shutil.rmtree(old)
            else:
                print(f"{cell}: defaults and {kept.name} disagree; left as they are")
                continue
            print(f"{cell}: defaults at lr {was:g} kept as {kept.name}")
        if is_multi_seed(old):
            continue
        if (runs := lr_study_runs(loss_dir)) is None:
            todo.append(cell)
            print(f"{cell}: no run at some lr of {LRS}: train them (bench_defaults.py runs)")
            continue
        info = {"what": "lr: auto assembled from the lr study's runs (bench_lr.py --auto)",
                "from": {str(lr): r.name for lr, r in runs.items()}}
        picks = write_assembly(old, {s: partial(auto_seed, at_lr)
                                     for s, at_lr in seeds_by_lr(runs).items()},
                               runs[LRS[0]], info)
        print(f"{cell}: defaults = lr auto, kept lr per seed {picks}")
    return todo


def write_assembly(out: Path, seeds: dict[int, Callable[[Path], float]], like: Path,
                   info: dict) -> dict[int, float]:
    """The multi-seed run ``out`` assembled seed by seed (``seeds``: seed → a function writing
    that seed's run into the folder it is given and returning the kept lr), with the seed index
    and split seed of ``like``, ``assembled.json`` (``info`` and the kept lrs), evaluated on
    test as ``bench_defaults`` evaluates. Returns the kept lr per seed."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    picks = {s: write(seed_dir(tmp, s)) for s, write in seeds.items()}
    write_seed_index(tmp, sorted(seeds), json.loads((like / SEEDS).read_text())["split_seed"])
    (tmp / "assembled.json").write_text(json.dumps({**info, "kept_lr": picks}, indent=2))
    evaluate_seeds(tmp, "test", n_boot=300, seed=0, device="cpu")
    tmp.rename(out)
    return picks


def add_lr_seed(auto_run: Path, extra_run: Path, grid: list[float], out: Path) -> float:
    """Write ``out``, the seed run ``lr: auto`` over ``grid`` trains, from ``auto_run`` (the
    same seed with ``lr: auto`` over ``grid`` less one lr, whose ``lr_search`` holds every
    other lr's result) and ``extra_run`` (that seed at the missing lr): the package's rule
    (:func:`~wsi_ncmi.model.lrchoice.fit_fold`) picks among them, the kept run is copied with
    the ``model.json`` and ``config.yaml`` train would write. Returns the kept lr."""
    cfg = load_yaml(auto_run / "config.yaml")
    cfg["optim"]["lr_grid"] = grid
    kept_meta = json.loads((auto_run / "fold_0" / "model.json").read_text())
    extra_meta = json.loads((extra_run / "fold_0" / "model.json").read_text())
    records = {r["lr"]: r for r in kept_meta["lr_search"]}

    def trained_at(ctx: FoldContext, *_: object) -> TrainedFold:
        lr = ctx.cfg["optim"]["lr"]
        if lr == extra_meta["lr"]:
            return TrainedFold(model=None, meta=dict(extra_meta), history=[], embeddings={})
        if "diverged" in records[lr]:
            raise TrainingDiverged(records[lr]["diverged"])
        meta = dict(kept_meta) if lr == kept_meta["lr"] else dict(records[lr])
        return TrainedFold(model=None, meta=meta, history=[], embeddings={})

    ctx = FoldContext(cfg=cfg, source=None, labels={}, n_classes=0, device=None)
    kept = fit_fold(ctx, read_splits(auto_run)["folds"][0], [], 0, "", train=trained_at)
    src = extra_run if kept.meta["lr"] == extra_meta["lr"] else auto_run
    shutil.copytree(src, out, copy_function=shutil.copy)
    (out / "fold_0" / "model.json").write_text(json.dumps(kept.meta, indent=2))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return kept.meta["lr"]


def assemble_added_lr(work: Path, extra: str, into: str) -> None:
    """Per cohort and loss of ``work/runs`` with evaluated ``defaults`` (``lr: auto``) and
    ``extra`` (the same recipe at one lr outside the grid) runs: ``into`` (a recipe of
    ``study_recipes.CANDIDATES`` whose grid is the defaults' plus that lr), assembled seed by
    seed with :func:`add_lr_seed` and evaluated on test."""
    grid = sorted(CANDIDATES[into]["optim"]["lr_grid"])
    for loss_dir in sorted(work.glob("runs/*/*")):
        auto, more, out = loss_dir / "defaults", loss_dir / extra, loss_dir / into
        if not (is_evaluated(auto) and is_evaluated(more)) or is_multi_seed(out):
            continue
        a_cfg, e_cfg = first_config(auto), first_config(more)
        if (recipe_but_lr(a_cfg) != recipe_but_lr(e_cfg)
                or sorted([*a_cfg["optim"]["lr_grid"], e_cfg["optim"]["lr"]]) != grid):
            print(f"{loss_dir}: {extra} is not the defaults at the one lr {into} adds; skipped")
            continue
        a_seeds, e_seeds = seed_runs(auto), seed_runs(more)
        picks = write_assembly(out, {s: partial(add_lr_seed, a_seeds[s], e_seeds[s], grid)
                                     for s in sorted(set(a_seeds) & set(e_seeds))}, auto,
                               {"what": f"lr: auto over {grid} assembled from defaults and "
                                        f"{extra} (bench_lr.py --add-lr)"})
        print(f"{loss_dir.parent.name}/{loss_dir.name}: {into}, kept lr per seed {picks}")


def _mean_sd(values: pd.Series) -> str:
    """'mean ± sd', or the value alone for one seed."""
    return (f"{values.mean():.3f} ± {values.std():.3f}" if len(values) > 1
            else f"{values.mean():.3f}")


def cohort_lr_table(work: Path, cohort: str) -> str:
    """Per loss with runs on ``cohort``: each lr's run and ``lr: auto`` (``defaults``),
    validation macro-F1 and own-head test macro-F1 and AUC (means ± sd over seeds), and the lr
    each seed of ``auto`` kept. For a cohort without tunes (no goal-table row)."""
    lines = [f"{cohort}: the defaults at each lr and with `lr: auto` (assembled by `--auto`), "
             "own head, means ± sd over seeds (one seed: its value); "
             f"`python benchmarks/bench_lr.py --cohort-table {cohort}`.", "",
             "| loss | recipe | validation macro-F1 | test macro-F1 | test AUC | kept lr (seeds) |",
             "|---|---|---|---|---|---|"]
    for loss_dir in sorted((work / "runs" / cohort).glob("*")):
        loss = loss_dir.name
        names = [("lr " + f"{lr:g}", loss_dir / r) for lr, r in LR_RECIPES.items()]
        for label, run in [*names, ("lr: auto", loss_dir / "defaults")]:
            if not is_evaluated(run):
                continue
            table = pd.read_csv(run / "eval" / "test" / "seeds.csv")
            own = table[table["head"] == own_head(loss)]
            kept = (json.loads((run / "assembled.json").read_text())["kept_lr"]
                    if (run / "assembled.json").is_file() else {})
            lines.append(f"| {loss} | {label} | {validation_f1(run):.3f} | "
                         f"{_mean_sd(own['macro_f1'])} | {_mean_sd(own['auc_macro'])} | "
                         + (", ".join(f"{v:g}" for v in kept.values()) or "–") + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", default=",".join(LEARNABLE))
    parser.add_argument("--out", default="lr.md", help="file name under --results")
    parser.add_argument("--auto", action="store_true",
                        help="assemble each defaults run (lr: auto) from the lr runs (above)")
    parser.add_argument("--add-lr", nargs=2, metavar=("EXTRA", "INTO"),
                        help="assemble recipe INTO (lr: auto over the grid plus one lr) from "
                        "defaults and EXTRA (the defaults at that lr), per cohort and loss")
    parser.add_argument("--cohort-table", metavar="COHORT",
                        help="write COHORT_lr.md: each lr and lr: auto on a cohort (above)")
    add_study_paths(parser)
    args = parser.parse_args()
    if args.auto:
        assemble_auto(args.work)
        return
    if args.add_lr:
        assemble_added_lr(args.work, *args.add_lr)
        return
    if args.cohort_table:
        text = cohort_lr_table(args.work, args.cohort_table)
        (args.results / f"{args.cohort_table}_lr.md").write_text(text)
        print(text)
        return
    cohorts = args.cohorts.split(",")
    table, drift = lr_table(args.work, cohorts)
    header = (f"Validation macro-F1 (mean over 3 seeds) of the defaults at each lr on "
              f"{', '.join(cohorts)} (their mean in bold); pick: the smallest lr within {TIE} "
              "of the best mean; code: `formats/config.LOSS_LR`.\n\n")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / args.out).write_text(header + table)
    print(header + table)
    if drift:
        print(f"not confirmed by the runs, LOSS_LR of: {', '.join(drift)}")


if __name__ == "__main__":
    main()
