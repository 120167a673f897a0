"""The default learning rate per loss: the defaults study's runs at lr 1e-3, 3e-3 and 1e-2.

Reads the multi-seed runs of ``bench_defaults.py`` (``--work``) whose recipe is the code's
current defaults but for the lr, at one of :data:`LRS` (model, optimiser and loss settings of
the run's first ``config.yaml`` against the defaults resolved now, the loss's constructor
defaults included — so a run made before a default changed no longer counts), and per loss
prints the validation macro-F1 (mean over 3 seeds of the kept checkpoint's) on each learnable
cohort, its mean over them, and the lr the rule picks:

    the lr with the highest mean validation macro-F1 over the learnable cohorts
    (``study_cohorts.LEARNABLE``, or ``--cohorts``); an lr within
    :data:`TIE` of that best counts as tied, and of tied ones the smallest wins.

The test split is not read. The table goes to ``--results/lr.md``; a loss whose pick differs
from ``formats/config.LOSS_LR``, or that lacks runs at some lr, is named at the end, so the
code and the study cannot drift apart unnoticed.

After ``LOSS_LR`` changes, ``--adopt`` renames each ``defaults`` run that trained at the old lr
to its lr's recipe (``study_recipes.lr_recipes``) and makes ``defaults`` a copy of the run at
the new lr (the same resolved config, checked); what has no run at the new lr is named, to be
trained with ``bench_defaults.py runs --recipes defaults``.

    python benchmarks/bench_lr.py
    python benchmarks/bench_lr.py --adopt
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_defaults import add_study_paths, first_config, validation_f1  # noqa: E402
from study_cohorts import LEARNABLE  # noqa: E402
from study_recipes import LR_STUDY as LRS  # noqa: E402
from study_recipes import lr_recipes  # noqa: E402

from wsi_ncmi.formats.config import LOSS_LR, resolve_config  # noqa: E402
from wsi_ncmi.formats.seedruns import is_multi_seed  # noqa: E402
from wsi_ncmi.model.lossnames import LOSS_NAMES  # noqa: E402
from wsi_ncmi.stages.train import resolved_loss_section  # noqa: E402

TIE = 0.01


def run_lr(run: Path) -> float:
    """The lr a multi-seed run trained with."""
    return float(first_config(run)["optim"]["lr"])


def recipe_but_lr(config: dict) -> dict:
    """What the lr study holds fixed: the model, the optimiser but its lr, the loss settings."""
    optim = {k: v for k, v in config["optim"].items() if k != "lr"}
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
    if is_multi_seed(run) and recipe_but_lr(first_config(run)) == want:
        lr = run_lr(run)
        return lr if lr in LRS else None
    return None


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


def is_evaluated(run: Path) -> bool:
    """Whether a multi-seed run has its test evaluation (what the study's tables read)."""
    return (run / "eval" / "test" / "seeds.csv").is_file()


def adopt_defaults(work: Path) -> list[str]:
    """Per cohort and loss of ``work/runs``: a ``defaults`` run at an lr other than
    ``LOSS_LR``'s is renamed to its lr's recipe (or removed, when that recipe's run is there
    already with the same validation result: a copy); a missing ``defaults`` becomes a copy
    of the run at ``LOSS_LR``'s lr. Returns the cohort/loss pairs that still need one."""
    todo = []
    for loss_dir in sorted(work.glob("runs/*/*")):
        loss, old = loss_dir.name, loss_dir / "defaults"
        if loss not in LOSS_LR:
            continue
        cell, lr, want = f"{loss_dir.parent.name}/{loss}", LOSS_LR[loss], defaults_but_lr(loss)
        if is_multi_seed(old) and (was := run_lr(old)) != lr:
            if study_lr(old, want) != was or not is_evaluated(old):
                print(f"{cell}: defaults are not the defaults but the lr; left as they are")
                continue
            kept = loss_dir / lr_recipes(loss)[was]
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
        new = loss_dir / lr_recipes(loss)[lr]
        if study_lr(new, want) == lr and is_evaluated(new):
            shutil.copytree(new, old, copy_function=shutil.copy)
            print(f"{cell}: defaults = a copy of {new.name}")
        else:
            todo.append(cell)
            print(f"{cell}: no run at lr {lr:g}: train it (bench_defaults.py runs)")
    return todo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", default=",".join(LEARNABLE))
    parser.add_argument("--out", default="lr.md", help="file name under --results")
    parser.add_argument("--adopt", action="store_true",
                        help="make each defaults run the run at LOSS_LR's lr (see above)")
    add_study_paths(parser)
    args = parser.parse_args()
    if args.adopt:
        adopt_defaults(args.work)
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
