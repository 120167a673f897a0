"""Runs of several training seeds: ``train --seeds`` and ``eval`` of such a folder.

Every seed trains on the same splits: the splits are made with one split seed (``split.seed``
of the config, else its ``seed``), which is written into every seed's config, so the seeds
differ only in the training (initialisation, batch order, tile subsets). The folder layout is
:mod:`wsi_ncmi.formats.seedruns`; ``compare`` pairs two such folders by seed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..errors import InputError
from ..formats.config import deep_merge, resolve_config, split_seed
from ..formats.runfolder import CONFIG, eval_dir, read_eval, read_splits
from ..formats.seedruns import seed_dir, seed_runs, write_seed_index
from ..model.losses import loss_names
from ..stats.metrics import SCALARS
from ..stats.reports import render_seeds_report
from .evaluate import evaluate_run
from .provenance import write_record
from .train import train_run

log = logging.getLogger("wsi_ncmi")


def train_seeds(config: dict, out_dir: Path, features_dir: Path, manifest: Path,
                seeds: Sequence[int], *, config_files: Sequence[Path] = ()) -> Path:
    """Train one run per seed into ``out_dir/seed_<s>/`` on the same splits, then write
    ``seeds.json`` and a provenance record; return ``out_dir``. ``config`` as for
    :func:`wsi_ncmi.stages.train.train_run`."""
    out_dir = Path(out_dir)
    if (out_dir / CONFIG).is_file():
        raise InputError(f"{out_dir}: holds a single run; write a multi-seed run elsewhere")
    fixed = split_seed(resolve_config(config, loss_names()))
    records = []
    for i, seed in enumerate(seeds):
        log.info("training seed %d (%d of %d), split seed %d", seed, i + 1, len(seeds), fixed)
        cfg = deep_merge(config, {"seed": int(seed), "split": {"seed": fixed}})
        run = train_run(cfg, seed_dir(out_dir, seed), features_dir, manifest,
                        config_files=config_files, command="train --seeds")
        records.append(run / "provenance.json")
    splits = {s: read_splits(seed_dir(out_dir, s))["folds"] for s in seeds}
    differ = [str(s) for s in seeds if splits[s] != splits[seeds[0]]]
    if differ:
        raise InputError(f"{out_dir}: seed(s) {', '.join(differ)} hold other splits than seed "
                         f"{seeds[0]} (reused splits.json?); train them into a new folder")
    index = write_seed_index(out_dir, seeds, fixed)
    write_record(out_dir, command="train --seeds",
                 config={"seeds": list(seeds), "split_seed": fixed,
                         "runs": [seed_dir(out_dir, s).name for s in seeds]},
                 inputs=[Path(manifest), *map(Path, config_files)],
                 outputs=[*records, index], seeds={"training": list(seeds), "split": fixed})
    return out_dir


def _mean_sd(values: list[float | None]) -> dict:
    finite = np.array([v for v in values if v is not None], dtype=np.float64)
    return {"mean": float(finite.mean()) if len(finite) else None,
            "sd": float(finite.std(ddof=1)) if len(finite) > 1 else None}


def evaluate_seeds(root: Path, split: str = "test", **options: object) -> Path:
    """Evaluate every seed's run of a multi-seed folder (``options``: those of
    :func:`wsi_ncmi.stages.evaluate.evaluate_run`), then write ``root/eval/<split>/``
    ``seeds.csv`` (one row per seed and head) and ``report.md`` (mean ± sd over seeds);
    return that folder."""
    runs = seed_runs(root)
    rows = []
    for seed, run in runs.items():
        log.info("evaluating seed %d", seed)
        evaluate_run(run, split, **options)
        metrics, _ = read_eval(run, split)
        rows += [{"seed": seed, "head": head, **{m: entry[m]["value"] for m in SCALARS}}
                 for head, entry in metrics["heads"].items()]
    heads = list(dict.fromkeys(r["head"] for r in rows))
    summary = {h: {m: _mean_sd([r[m] for r in rows if r["head"] == h]) for m in SCALARS}
               for h in heads}
    out = eval_dir(root, split)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "seeds.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_seeds_report(str(root), split, rows, summary))
    write_record(out, command="eval (seeds)",
                 config={"run": str(root), "split": split, "seeds": list(runs),
                         **options},
                 inputs=[eval_dir(run, split) / "metrics.json" for run in runs.values()],
                 outputs=[out / "seeds.csv", out / "report.md"],
                 seeds={"training": list(runs)})
    return out
