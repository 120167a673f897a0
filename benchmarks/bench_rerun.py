"""How long a rerun takes when everything is already complete: `wsi-ncmi tile`, `extract`
and `predict` over a demo's slides, each a fresh process (what a user's second command pays).

Needs a finished demo (``wsi-ncmi demo --out DEMO``). The first pass completes every command's
outputs (predict: the demo's first two slides into ``DEMO/bench_predict``); then each command
is rerun ``--runs`` times and the median wall time printed with the machine and its load.

    python benchmarks/bench_rerun.py DEMO [--runs 3]

The commands run as ``python -m wsi_ncmi`` in the current folder: they use the ``wsi_ncmi``
found there first, then on ``PYTHONPATH`` (compare two trees from a neutral folder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402


def commands(demo: Path) -> dict[str, list[str]]:
    manifest = demo / "slides" / "manifest.csv"
    weights = demo / "encoder" / "resnet50_trunc_seeded.safetensors"
    ws = demo / "workspace"
    two = demo / "bench_predict" / "two_slides.csv"
    two.parent.mkdir(exist_ok=True)
    two.write_text("".join(manifest.read_text().splitlines(keepends=True)[:3]))
    return {
        "tile": ["tile", "--manifest", str(manifest), "--out", str(ws), "--mpp", "1.0",
                 "--tile-size", "224"],
        "extract": ["extract", "--manifest", str(manifest), "--out", str(ws),
                    "--weights", str(weights)],
        "predict": ["predict", "--model", str(demo / "runs" / "ncmi"), "--manifest", str(two),
                    "--slide-root", str(demo / "slides"), "--out", str(demo / "bench_predict"),
                    "--weights", str(weights)],
    }


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "wsi_ncmi", *args], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"wsi-ncmi {args[0]} failed:\n{proc.stderr[-2000:]}")
    if "0 done" not in proc.stderr:
        raise SystemExit(f"wsi-ncmi {args[0]}: not a complete rerun:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    todo = commands(args.demo)
    for cmd in todo.values():  # complete every output first
        subprocess.run([sys.executable, "-m", "wsi_ncmi", *cmd], capture_output=True,
                       check=True)
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    for name, cmd in todo.items():
        times = [run(cmd) for _ in range(args.runs)]
        print(f"{name:8s} complete rerun: median {statistics.median(times):.2f} s "
              f"(runs: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
