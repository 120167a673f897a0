"""Training cost of NCMI vs cross-entropy on the same aggregator and batch, and slides/s.

1. Step cost: one gated attention-MIL aggregator, one fixed batch of B bags × N tiles × D
   features; a full training step (forward, loss, backward, AdamW step; for NCMI also its
   q-step) timed for ``ce`` and ``ncmi`` in alternating rounds after untimed warm-up steps;
   prints the median step times and their ratio (target ≤ 1.10: the paper calls NCMI's cost
   comparable to CE's).
2. Operations per step: ``torch.profiler`` counts the ATen operations one training step
   issues for each loss — every one called, and the innermost ones that compute (leaving out
   views, allocations and the CPU-side conversion of Python scalars, which launch no GPU
   kernel) — for the whole step and for the loss head alone (its forward, backward and q-step
   on a fixed batch of embeddings). On a GPU, where a step of this size is launch-bound, the
   compute count approximates the kernels a step pays for (the CPU count includes the
   output fill a CPU reduction does first; a GPU reduction has none).
3. Throughput: an epoch of ``train_epoch`` (the trainer's own loop: batching, padding, tile cap,
   steps) over in-memory float16 bags, in slides per second, for both losses.

    python benchmarks/bench_train_step.py                      # CPU or the visible GPU
    python benchmarks/bench_train_step.py --device cpu --tiles 1024
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from wsi_ncmi.formats.config import resolve_config
from wsi_ncmi.model.aggregators import GatedABMIL
from wsi_ncmi.model.bags import BagInfo, BagSource
from wsi_ncmi.model.device import select_device
from wsi_ncmi.model.fit import FoldContext, epoch_order, train_epoch
from wsi_ncmi.model.losses import get_loss
from wsi_ncmi.model.slidemodel import SlideModel

LOSSES = ("ce", "ncmi")


class MemoryBags(BagSource):
    """Random float16 bags held in memory (what the trainer's cache holds)."""

    cached = True

    def __init__(self, n_slides: int, tiles: int, feature_dim: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        sizes = torch.randint(tiles // 2, tiles * 3 // 2 + 1, (n_slides,), generator=g)
        self._bags = {f"s{i:04d}": torch.randn(int(n), feature_dim, generator=g).half()
                      for i, n in enumerate(sizes)}
        super().__init__({sid: BagInfo(path=None, n_tiles=b.shape[0], feature_dim=feature_dim)
                          for sid, b in self._bags.items()})

    def get(self, slide_id: str) -> torch.Tensor:
        return self._bags[slide_id]


def make_model(name: str, args: argparse.Namespace, aggregator: GatedABMIL,
               device: torch.device) -> tuple[SlideModel, torch.optim.Optimizer]:
    head = get_loss(name, args.classes, args.embed_dim)
    model = SlideModel(copy.deepcopy(aggregator), head).to(device)
    centroid = {id(p) for p in head.centroid_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters()
                             if p.requires_grad and id(p) not in centroid], lr=1e-4)
    return model, opt


def step(model: SlideModel, opt: torch.optim.Optimizer, x, mask, y) -> None:
    z, _ = model(x, mask)
    loss = model.head(z, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    model.head.centroid_step()


def time_steps(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Median seconds per training step for each loss, measured in alternating rounds."""
    torch.manual_seed(0)
    aggregator = GatedABMIL(args.feature_dim, args.embed_dim, args.embed_dim)
    x = torch.randn(args.batch_size, args.tiles, args.feature_dim, device=device)
    mask = torch.ones(args.batch_size, args.tiles, dtype=torch.bool, device=device)
    mask[1:, args.tiles * 3 // 4:] = False  # padded bags, as in real batches
    y = torch.arange(args.batch_size, device=device) % args.classes
    models = {name: make_model(name, args, aggregator, device) for name in LOSSES}
    for _ in range(args.warmup):
        for model, opt in models.values():
            step(model, opt, x, mask, y)
    times: dict[str, list[float]] = {name: [] for name in LOSSES}
    for r in range(args.rounds):
        order = LOSSES if r % 2 == 0 else LOSSES[::-1]
        for name in order:
            model, opt = models[name]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(model, opt, x, mask, y)
            sync(device)
            times[name].append((time.perf_counter() - t0) / args.steps)
    return {name: statistics.median(v) for name, v in times.items()}


NO_KERNEL = {"aten::" + op for op in (
    "as_strided", "view", "reshape", "_reshape_alias", "permute", "expand", "expand_as",
    "unsqueeze", "squeeze", "select", "slice", "t", "transpose", "numpy_T", "alias",
    "resolve_conj", "resolve_neg", "detach", "lift_fresh", "empty", "empty_strided",
    "empty_like", "resize_", "to", "_to_copy", "contiguous", "_local_scalar_dense")}
#: operations that only call others (counted through those), and ones that also compute
DISPATCH = {"aten::" + op for op in (
    "clone", "full", "linear", "log_sigmoid", "log_softmax", "softmax", "masked_fill",
    "matmul", "mean", "nll_loss", "nll_loss_nd", "ones_like", "zeros_like", "relu", "rsub")}
WORKS_TOO = {"aten::addmm", "aten::sum", "aten::nll_loss_backward"}


def count_ops(run: Callable[[], None], steps: int = 3) -> tuple[float, float]:
    """(ATen ops, compute ops) per call of ``run``, counted with ``torch.profiler``: every
    ATen operation called, and those that do arithmetic themselves (not views, allocations,
    operations that only call others, or the conversion of a Python scalar to a 0-d tensor,
    none of which launches a GPU kernel)."""
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            run()
    roots = [e for e in prof.events() if e.cpu_parent is None]
    called = [e for e in prof.events() if e.name.startswith("aten::")]
    return len(called) / steps, sum(len(_compute(e)) for e in roots) / steps


def _compute(event) -> list:
    """The ATen operations under ``event`` (itself included) that do arithmetic."""
    inner = [op for child in event.cpu_children for op in _compute(child)]
    scalar_copy = event.name == "aten::copy_" and all(s == [] for s in event.input_shapes[:2])
    if (not event.name.startswith("aten::") or event.name in NO_KERNEL | DISPATCH or scalar_copy
            or (inner and event.name not in WORKS_TOO)):
        return inner
    return [event, *inner]


def head_step(head, z0: torch.Tensor, y: torch.Tensor) -> None:
    """The loss head alone: forward and backward from fixed embeddings, then its q-step."""
    head(z0.clone().requires_grad_(True), y).backward()
    head.centroid_step()


def op_counts(args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, tuple]]:
    """Per loss: ops of a whole training step and of the loss head alone."""
    torch.manual_seed(0)
    aggregator = GatedABMIL(args.feature_dim, args.embed_dim, args.embed_dim)
    x = torch.randn(args.batch_size, 64, args.feature_dim, device=device)
    mask = torch.ones(args.batch_size, 64, dtype=torch.bool, device=device)
    y = torch.arange(args.batch_size, device=device) % args.classes
    z0 = torch.randn(args.batch_size, args.embed_dim, device=device)
    out = {}
    for name in LOSSES:
        model, opt = make_model(name, args, aggregator, device)
        out[name] = {"step": count_ops(partial(step, model, opt, x, mask, y)),
                     "head": count_ops(partial(head_step, model.head, z0, y))}
    return out


def epoch_rate(name: str, args: argparse.Namespace, device: torch.device,
               source: MemoryBags) -> float:
    """Slides per second of one training epoch with ``train_epoch``."""
    cfg = resolve_config({"loss": {"name": name},
                          "optim": {"batch_size": args.batch_size, "max_tiles": args.tiles},
                          "model": {"embed_dim": args.embed_dim, "attn_dim": args.embed_dim}})
    ids = sorted(source.infos)
    y = np.arange(len(ids)) % args.classes
    ctx = FoldContext(cfg=cfg, source=source, labels=dict(zip(ids, y.tolist(), strict=True)),
                      n_classes=args.classes, device=device)
    torch.manual_seed(0)
    model, opt = make_model(name, args, GatedABMIL(args.feature_dim, args.embed_dim,
                                                   args.embed_dim), device)
    rng = np.random.default_rng(0)
    warm = ids[: 2 * args.batch_size]
    train_epoch(model, opt, ctx, warm, rng, q_steps=True)
    sync(device)
    t0 = time.perf_counter()
    train_epoch(model, opt, ctx, epoch_order(ids, y, False, rng), rng, q_steps=True)
    sync(device)
    return len(ids) / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--feature-dim", type=int, default=1024, help="D, features per tile")
    parser.add_argument("--embed-dim", type=int, default=128, help="m, slide embedding size")
    parser.add_argument("--classes", type=int, default=4, help="C")
    parser.add_argument("--batch-size", type=int, default=8, help="bags per step")
    parser.add_argument("--tiles", type=int, default=2048, help="tiles per bag (step timing; "
                        "the epoch's bags hold 0.5–1.5× this and are capped at it)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds per loss")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per loss")
    parser.add_argument("--epoch-slides", type=int, default=64, help="slides in the epoch")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} threads")
    print(f"device: {name}; B={args.batch_size} bags × N={args.tiles} tiles × "
          f"D={args.feature_dim}, m={args.embed_dim}, C={args.classes}")
    per_step = time_steps(args, device)
    for loss, seconds in per_step.items():
        print(f"step {loss:5s}: {seconds * 1e3:9.2f} ms (median of {args.rounds} rounds × "
              f"{args.steps} steps)")
    ratio = per_step["ncmi"] / per_step["ce"]
    print(f"NCMI / CE step-time ratio: {ratio:.3f} (target ≤ 1.10: "
          f"{'met' if ratio <= 1.10 else 'NOT met'})")
    ops = op_counts(args, device)
    for part in ("step", "head"):
        (ce_all, ce_k), (nc_all, nc_k) = ops["ce"][part], ops["ncmi"][part]
        what = "training step" if part == "step" else "loss head (fwd + bwd + q-step)"
        print(f"ops per {what}: ce {ce_all:.0f} called / {ce_k:.0f} compute, "
              f"ncmi {nc_all:.0f} called / {nc_k:.0f} compute (ncmi − ce: {nc_k - ce_k:+.0f} "
              "compute)")
    source = MemoryBags(args.epoch_slides, args.tiles, args.feature_dim, seed=1)
    for loss in LOSSES:
        print(f"epoch {loss:5s}: {epoch_rate(loss, args, device, source):8.1f} slides/s "
              f"({args.epoch_slides} cached float16 bags, ≤ {args.tiles} tiles each)")


if __name__ == "__main__":
    main()
