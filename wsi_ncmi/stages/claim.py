"""``claim``: one loss against the best baseline, every loss tuned with the same budget.

Inputs: per loss, a tune folder (``wsi-ncmi tune``: ``trials.csv``) and a multi-seed run
folder trained with that tune's ``best.yaml`` and evaluated on ``split`` (``train --seeds``,
``eval``). The claimed loss (``claim``) is set against the **best baseline**: the other loss
whose tune reached the highest validation macro-F1 (ties: higher validation AUC, then the
order given). The choice reads validation values only; the test split decides nothing.

For each head of ``heads`` — ``own`` (each loss's own validation head: its classifier, or the
centroid head for losses without one), ``linear_probe``, ``centroid``, ``classifier`` — every
loss gets its test macro-F1 and AUC as the mean over seeds with a 95 % interval over patients
(:func:`~wsi_ncmi.stats.bootstrap.seed_mean_metrics`), and the claimed loss gets its
difference to the best baseline, paired by seed and patient
(:func:`~wsi_ncmi.stats.bootstrap.seed_paired_difference`), with the number of seeds it won.

With a ``kfold`` or ``logo`` split the tune searched on outer fold ``fold``, so the other
folds' test slides took part in the search: only fold ``fold``'s test slides are scored here
(the table says so). With a ``column`` split every test slide is.

Writes ``claim.csv`` (one row per head and loss) and ``claim.md`` into ``out_dir``, and a
provenance record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..errors import InputError
from ..formats.runfolder import eval_dir, read_config
from ..formats.seedruns import is_multi_seed, seed_runs
from ..formats.tunefolder import TRIALS
from ..stats.bootstrap import seed_mean_metrics, seed_paired_difference
from ..stats.reports import fmt, table
from .compare import EvaluatedRun, check_comparable, load_evaluated, paired_inputs
from .provenance import write_record

CLAIM_HEADS = ("own", "linear_probe", "centroid", "classifier")
COLUMNS = ("head", "loss", "role", "val_macro_f1", "val_auc", "n_seeds", "n_slides",
           "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high", "macro_f1_seed_sd",
           "auc", "auc_ci_low", "auc_ci_high", "auc_seed_sd", "diff_macro_f1",
           "diff_macro_f1_ci_low", "diff_macro_f1_ci_high", "diff_macro_f1_seeds_ci_low",
           "diff_macro_f1_seeds_ci_high", "diff_auc", "diff_auc_ci_low", "diff_auc_ci_high",
           "diff_auc_seeds_ci_low", "diff_auc_seeds_ci_high", "claim_better_seeds")


@dataclass
class ClaimResult:
    """``baseline``: the best baseline's name; ``rows``: claim.csv rows; ``text``: claim.md;
    ``paths``: files written."""

    baseline: str
    rows: list[dict]
    text: str
    paths: list[Path]


def validation_value(tune_dir: Path) -> tuple[float, float]:
    """(best validation macro-F1, its validation AUC or −inf) of a tune folder's complete
    trials; :class:`InputError` when it has none."""
    path = Path(tune_dir) / TRIALS
    if not path.is_file():
        raise InputError(f"{tune_dir}: no {TRIALS} (run `wsi-ncmi tune` first)")
    trials = pd.read_csv(path)
    done = trials[(trials["state"] == "COMPLETE") & trials["value"].notna()]
    if done.empty:
        raise InputError(f"{path}: no complete trial")
    auc = done["val_auc"].astype(float).fillna(-math.inf)
    best = max(zip(done["value"].astype(float), auc, strict=True))
    return best


def best_baseline(values: dict[str, tuple[float, float]], claim: str) -> str:
    """The loss other than ``claim`` with the highest (validation macro-F1, AUC); the first
    given wins ties."""
    others = [loss for loss in values if loss != claim]
    if not others:
        raise InputError("a claim needs at least one baseline loss besides the claimed one")
    return max(others, key=lambda loss: values[loss])


def _head_of(run: Path, split: str, head: str) -> str:
    if head != "own":
        return head
    from ..formats.runfolder import read_eval

    metrics, _ = read_eval(run, split)
    return "classifier" if "classifier" in metrics["heads"] else "centroid"


def load_loss(root: Path, split: str, head: str, fold: int | None
              ) -> tuple[str, list[EvaluatedRun]]:
    """A multi-seed folder's evaluations for ``head`` (``own`` resolved), one per seed, each
    restricted to outer fold ``fold``'s slides when ``fold`` is given."""
    if not is_multi_seed(root):
        raise InputError(f"{root}: not a multi-seed run folder (train --seeds)")
    runs = seed_runs(root)
    actual = _head_of(next(iter(runs.values())), split, head)
    evals = []
    for s, run in runs.items():
        ev = load_evaluated(run, split, actual, f"{Path(root).name} (seed {s})")
        if fold is not None:
            ev.rows = ev.rows[ev.rows["fold"].astype(int) == fold]
        evals.append(ev)
    return actual, evals


def scored_fold(root: Path, fold: int) -> int | None:
    """``fold`` when the runs' split is kfold/logo (only its test slides are clean), else
    None (a column split has one fold)."""
    first = next(iter(seed_runs(root).values()))
    return None if read_config(first)["split"]["method"] == "column" else fold


def _metric(entry: dict) -> tuple:
    return (entry["value"], *entry["ci95"], entry["seed_sd"])


def _num(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _difference(entry: dict) -> tuple:
    """A difference's value, its interval over patients and its interval over seeds and
    patients (None for one seed)."""
    return (entry["diff"], *entry["ci95"], *(entry["ci95_seeds"] or (None, None)))


def head_rows(head: str, runs: dict[str, Path], values: dict[str, tuple[float, float]],
              claim: str, baseline: str, split: str, fold: int | None, n_boot: int,
              seed: int) -> list[dict]:
    """claim.csv rows of one head: every loss, and the claim's difference to the baseline."""
    loaded = {loss: load_loss(root, split, head, fold) for loss, root in runs.items()}
    evals = [e for _, group in loaded.values() for e in group]
    check_comparable(evals)
    if evals[0].rows.empty:
        raise InputError(f"no {split} slides to score (fold {fold})")
    y, scores, units = paired_inputs({loss: group for loss, (_, group) in loaded.items()})
    n_seeds = {loss: len(s) for loss, s in scores.items()}
    if len(set(n_seeds.values())) > 1:
        raise InputError(f"the losses hold different numbers of seeds: {n_seeds}")
    diff = seed_paired_difference(y, scores[baseline], scores[claim], units, n_boot, seed)
    rows = []
    for loss, (actual, _) in loaded.items():
        m = seed_mean_metrics(y, scores[loss], units, n_boot, seed)
        role = ("claim" if loss == claim else "best baseline" if loss == baseline
                else "baseline")
        f1, auc = _metric(m["macro_f1"]), _metric(m["auc_macro"])
        d = diff if loss == claim else None
        rows.append(dict(zip(COLUMNS, (
            head if head != "own" else f"own ({actual})", loss, role, values[loss][0],
            _num(values[loss][1]), n_seeds[loss], len(y), *map(_num, f1), *map(_num, auc),
            *((*map(_num, _difference(d["macro_f1"])), *map(_num, _difference(d["auc_macro"])),
               d["macro_f1"]["b_better"]) if d else (None,) * 11)),
            strict=True)))
    return rows


def render(rows: list[dict], claim: str, baseline: str, split: str, fold: int | None,
           n_boot: int) -> str:
    """claim.md: one table of every head and loss."""
    def ci(r: dict, key: str) -> str:
        if r[key] is None:
            return "n/a"
        return f"{fmt(r[key])} [{fmt(r[key + '_ci_low'])}, {fmt(r[key + '_ci_high'])}]"

    def delta(r: dict, key: str) -> str:
        if r[f"diff_{key}"] is None:
            return ""
        text = (f"{r[f'diff_{key}']:+.3f} [{r[f'diff_{key}_ci_low']:+.3f}, "
                f"{r[f'diff_{key}_ci_high']:+.3f}]")
        if r[f"diff_{key}_seeds_ci_low"] is None:
            return text
        return (f"{text} [{r[f'diff_{key}_seeds_ci_low']:+.3f}, "
                f"{r[f'diff_{key}_seeds_ci_high']:+.3f}]")

    body = [(r["head"], r["loss"], r["role"], fmt(r["val_macro_f1"]), ci(r, "macro_f1"),
             ci(r, "auc"), delta(r, "macro_f1"), delta(r, "auc"),
             "" if r["claim_better_seeds"] is None
             else f"{r['claim_better_seeds']}/{r['n_seeds']}") for r in rows]
    scored = ("every test slide" if fold is None else
              f"the test slides of outer fold {fold} only (the fold the tunes searched on; "
              "the other folds' test slides took part in the search)")
    first = rows[0]
    lines = [f"# Claim: {claim} against the best baseline ({baseline})", "",
             f"Every loss tuned with the same budget, selected on validation data only; "
             f"trained with {first['n_seeds']} seeds from its best config; scored on the "
             f"{split} split: {scored}, {first['n_slides']} slides.",
             f"Best baseline: the highest validation macro-F1 of its tune ({baseline}); the "
             f"{split} split chose nothing.",
             f"Metrics: mean over seeds [95 % interval, {n_boot} resamples of patients "
             f"shared by every seed]. Δ: {claim} − {baseline}, paired by seed and patient, "
             "with two 95 % intervals: the first over patients, given these trained seeds; "
             "the second also resamples the seeds and says whether the loss beats the "
             "baseline, not only whether these trained models do. "
             f"'won': seeds where {claim} scored higher.", "",
             *table(("head", "loss", "role", "val macro-F1", "macro-F1", "AUC",
                     "Δ macro-F1", "Δ AUC", "won"), body)]
    return "\n".join(lines) + "\n"


def claim_table(runs: dict[str, Path], tune_dirs: dict[str, Path], claim: str,
                out_dir: Path, split: str = "test", heads: Sequence[str] = ("own",
                                                                             "linear_probe"),
                fold: int = 0, n_boot: int = 1000, seed: int = 0) -> ClaimResult:
    """Write the claim table (module docstring). ``runs``/``tune_dirs``: loss → multi-seed run
    folder / tune folder, the same losses; ``fold``: the outer fold the tunes searched on."""
    if claim not in runs:
        raise InputError(f"the claimed loss {claim!r} has no run (losses: {', '.join(runs)})")
    if set(runs) != set(tune_dirs):
        raise InputError("every loss needs a run and a tune folder")
    bad = [h for h in heads if h not in CLAIM_HEADS]
    if bad or not heads:
        raise InputError(f"heads must be among {', '.join(CLAIM_HEADS)}, got {list(heads)}")
    if n_boot < 1:
        raise InputError(f"n_boot must be ≥ 1, got {n_boot}")
    values = {loss: validation_value(tune_dirs[loss]) for loss in runs}
    baseline = best_baseline(values, claim)
    scored = scored_fold(runs[claim], fold)
    rows = [r for head in heads for r in head_rows(head, runs, values, claim, baseline, split,
                                                   scored, n_boot, seed)]
    text = render(rows, claim, baseline, split, scored, n_boot)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "claim.csv") as tmp:
        pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(tmp, index=False)
    with atomic_path(out_dir / "claim.md") as tmp:
        tmp.write_text(text)
    paths = [out_dir / "claim.csv", out_dir / "claim.md"]
    write_record(out_dir, command="claim",
                 config={"claim": claim, "baseline": baseline, "losses": list(runs),
                         "split": split, "heads": list(heads), "fold": scored,
                         "n_boot": n_boot, "seed": seed,
                         "validation": {k: list(v) for k, v in values.items()}},
                 inputs=[*(Path(t) / TRIALS for t in tune_dirs.values()),
                         *(eval_dir(r, split) / n for root in runs.values()
                           for r in seed_runs(root).values()
                           for n in ("metrics.json", "predictions.csv"))],
                 outputs=paths, seeds={"bootstrap": seed})
    return ClaimResult(baseline=baseline, rows=rows, text=text, paths=paths)
