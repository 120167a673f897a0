"""Evaluation passes over bags of very different sizes: batches by tile count against batches
in the caller's order.

A batch is padded to its longest bag, so bags of 200 and 20 000 tiles side by side compute the
small one 100 times over. ``model/inference.forward_bags`` plans batches in order of tile
count and returns the outputs in the caller's order. This script writes ``--slides`` feature
files of log-uniform sizes (``--min-tiles``–``--max-tiles``, as the defaults study's
``c2_d256_w1000``), holds them in memory, and times one pass of an untrained gated
attention-MIL model over all of them, both ways, at each ``--batch-sizes``. It prints the
computed (padded) tiles per real tile — a property of the plan, the same on any machine — and
the wall time of the pass, best of ``--repeats``, with its ratio.

    python benchmarks/bench_eval_batches.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_bags import write_synthetic_bags  # noqa: E402

from wsi_ncmi.model.bags import (  # noqa: E402
    CachedBagSource,
    by_tile_count,
    inspect_bag,
    iter_batches,
    plan_batches,
)
from wsi_ncmi.model.inference import forward_bags, forward_batches  # noqa: E402
from wsi_ncmi.model.slidemodel import build_model  # noqa: E402


def padded_tiles(plans: list) -> int:
    """Tiles a pass computes over ``plans``: each batch padded to its longest bag."""
    return sum(len(plan) * max(len(rows) for _, rows in plan) for plan in plans)


def best_time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=48)
    parser.add_argument("--min-tiles", type=int, default=200)
    parser.add_argument("--max-tiles", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch-sizes", default="4,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    meta = {"feature_dim": args.dim, "embed_dim": 128, "attn_dim": 128, "dropout": 0.1,
            "loss": "ce", "classes": ["a", "b"], "loss_settings": {}}
    model = build_model(meta).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ids = list(write_synthetic_bags(Path(tmp), 1, args.slides, args.dim,
                                        tiles=(args.min_tiles, args.max_tiles),
                                        log_sizes=True)["slide_id"])
        source = CachedBagSource({s: inspect_bag(Path(tmp) / f"{s}.h5") for s in ids})
    real = sum(info.n_tiles for info in source.infos.values())
    print(f"{args.slides} bags, {args.min_tiles}–{args.max_tiles} tiles (log-uniform), "
          f"{real} tiles, D={args.dim}, {args.threads} thread(s)")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        by_order = plan_batches(source, ids, batch)
        by_size = plan_batches(source, [ids[i] for i in by_tile_count(source, ids)], batch)
        t_order = best_time(lambda p=by_order: forward_batches(model, iter_batches(source, p),
                                                               "cpu"), args.repeats)
        t_size = best_time(lambda b=batch: forward_bags(model, source, ids, b, "cpu"),
                           args.repeats)
        print(f"batch {batch:>3}: computed/real tiles {padded_tiles(by_order) / real:.2f}"
              f" in the given order, {padded_tiles(by_size) / real:.2f} by size; "
              f"pass {t_order:.2f} s → {t_size:.2f} s ({t_order / t_size:.2f}× faster)")


if __name__ == "__main__":
    main()
