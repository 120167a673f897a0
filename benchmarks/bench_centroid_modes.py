"""NCMI centroid modes on held-out synthetic data: ``learned`` vs ``fixed`` (and CE for scale).

For each seed: write synthetic bags (see ``synthetic_bags.py``), split patients 60/20/20 into
train/val/test, train each setting with the same seed, and score the test slides with the
centroid head of the best checkpoint (class means of p over the training bags, predict
argmin_c KL(p‖s_c)); CE is also scored with its own classifier. Prints one row per run and
the mean ± sd test macro-F1 per setting.

    python benchmarks/bench_centroid_modes.py --seeds 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_bags import write_synthetic_bags  # noqa: E402

from wsi_ncmi.stages.train import train_run  # noqa: E402
from wsi_ncmi.stats.simplex import centroid_scores  # noqa: E402


def split_patients(df, seed: int):
    """Patient-grouped 60/20/20 train/val/test assignment in a ``split`` column."""
    rng = np.random.default_rng(seed)
    patients = np.array(sorted(df["patient_id"].unique()))
    rng.shuffle(patients)
    n = len(patients)
    part = {p: "train" for p in patients[: int(0.6 * n)]}
    part.update({p: "val" for p in patients[int(0.6 * n): int(0.8 * n)]})
    part.update({p: "test" for p in patients[int(0.8 * n):]})
    return df.assign(split=df["patient_id"].map(part))


def score_test(run: Path, df) -> dict[str, float]:
    """Test macro-F1/AUC of fold 0: centroid head, and the classifier when there is one."""
    emb = np.load(run / "fold_0" / "embeddings.npz")
    meta = json.loads((run / "fold_0" / "model.json").read_text())
    test = set(json.loads((run / "splits.json").read_text())["folds"][0]["test"])
    label = dict(zip(df["slide_id"], df["label"], strict=True))
    idx = [i for i, s in enumerate(emb["slide_id"]) if s in test]
    y = np.array([meta["classes"].index(label[emb["slide_id"][i]]) for i in idx])
    scores = centroid_scores(emb["p"][idx], np.array(meta["centroid_head_means"]))
    out = {"centroid_f1": f1_score(y, scores.argmax(1), average="macro"),
           "centroid_auc": roc_auc_score(y, scores, multi_class="ovr")}
    if "logits" in emb.files:
        out["classifier_f1"] = f1_score(y, emb["logits"][idx].argmax(1), average="macro")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="number of datasets/seeds")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per run")
    parser.add_argument("--temperature", type=float, default=None, help="NCMI T (default: "
                        "the loss's default)")
    parser.add_argument("--embed-dim", type=int, default=32, help="embedding size m")
    parser.add_argument("--signal", type=float, default=3.0, help="signal strength (SD units)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ncmi_extra = {} if args.temperature is None else {"temperature": args.temperature}
    settings = {
        "ncmi-learned": {"name": "ncmi", "ncmi": {**ncmi_extra, "centroid_mode": "learned"}},
        "ncmi-fixed": {"name": "ncmi", "ncmi": {**ncmi_extra, "centroid_mode": "fixed"}},
        "ce": {"name": "ce"},
    }
    results: dict[str, list[dict]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            root = Path(tmp) / f"seed{seed}"
            df = split_patients(write_synthetic_bags(
                root / "features", n_classes=3, slides_per_class=40, feature_dim=16,
                signal=args.signal, seed=seed), seed)
            df.to_csv(root / "manifest.csv", index=False)
            for name, loss in settings.items():
                cfg = {"seed": seed, "loss": loss,
                       "model": {"embed_dim": args.embed_dim, "attn_dim": 16},
                       "optim": {"epochs": args.epochs, "lr": 2e-3, "patience": args.epochs},
                       "device": "cpu"}
                run = train_run(cfg, root / name, root / "features", root / "manifest.csv")
                res = score_test(run, df)
                results[name].append(res)
                print(f"seed {seed} {name:13s} " + " ".join(
                    f"{k}={v:.3f}" for k, v in res.items()), flush=True)
    for name, rows in results.items():
        for key in rows[0]:
            values = np.array([r[key] for r in rows])
            print(f"{name:13s} test {key}: {values.mean():.3f} ± {values.std(ddof=1):.3f} "
                  f"(n={len(values)})")


if __name__ == "__main__":
    main()
