"""Markdown reports that read on their own: one per evaluated split, one per comparison.

They render the records :mod:`wsi_ncmi.stages.evaluate` and :mod:`wsi_ncmi.stages.compare`
write (plain dicts, numbers or ``None`` where undefined); no number is computed here.
"""

from __future__ import annotations

from collections.abc import Sequence

from .metrics import SCALARS

HEAD_NAMES = {"linear_probe": "linear probe", "centroid": "centroid head",
              "classifier": "own classifier"}
METRIC_NAMES = {"macro_f1": "macro-F1", "auc_macro": "AUC (macro OvR)",
                "balanced_accuracy": "balanced acc.", "accuracy": "accuracy", "ece": "ECE"}


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or "n/a" for an undefined one."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_ci(entry: dict) -> str:
    """``value [lo, hi]`` for a ``{"value", "ci95"}`` entry."""
    lo, hi = entry["ci95"]
    if entry["value"] is None:
        return "n/a"
    return f"{fmt(entry['value'])} [{fmt(lo)}, {fmt(hi)}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table as lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


def _outside_interval(metrics: dict) -> list[str]:
    out = []
    for head, m in metrics["heads"].items():
        for name in SCALARS:
            value, (lo, hi) = m[name]["value"], m[name]["ci95"]
            if None not in (value, lo, hi) and not lo <= value <= hi:
                out.append(f"{METRIC_NAMES[name]} of the {HEAD_NAMES[head]}")
    return out


def _run_line(metrics: dict) -> str:
    settings = metrics.get("loss_settings") or {}
    detail = ", ".join(f"{k} {settings[k]}" for k in ("centroid_mode", "centroid_map",
                                                      "temperature") if k in settings)
    return (f"Run `{metrics['run']}` · loss **{metrics['loss']}**"
            + (f" ({detail})" if detail else "") + f" · encoder `{metrics['encoder']}`")


def _headline(metrics: dict) -> list[str]:
    rows = [[HEAD_NAMES[h], *(fmt_ci(m[name]) for name in SCALARS)]
            for h, m in metrics["heads"].items()]
    return table(["head", *(METRIC_NAMES[n] for n in SCALARS)], rows)


def _per_class(metrics: dict) -> list[str]:
    lines = []
    for head, m in metrics["heads"].items():
        rows = [[name, str(c["support"]), fmt(c["precision"]), fmt(c["recall"]), fmt(c["f1"]),
                 fmt_ci(c["auc"])] for name, c in m["per_class"].items()]
        lines += [f"**{HEAD_NAMES[head]}**", "",
                  *table(["class", "slides", "precision", "recall", "F1", "AUC (one-vs-rest)"],
                         rows), ""]
        if m["notes"]:
            lines += [f"- {name}: {reason}" for name, reason in m["notes"].items()] + [""]
    return lines


def _confusions(metrics: dict) -> list[str]:
    classes = metrics["classes"]
    lines = []
    for head, m in metrics["heads"].items():
        rows = [[f"**{classes[i]}**", *map(str, row)] for i, row in enumerate(m["confusion"])]
        lines += [f"**{HEAD_NAMES[head]}** (rows: true class; columns: predicted)", "",
                  *table(["true \\ predicted", *classes], rows), "",
                  f"![confusion matrix, {HEAD_NAMES[head]}](confusion_{head}.png) "
                  f"![ROC curves, {HEAD_NAMES[head]}](roc_{head}.png)", ""]
    return lines


def _folds(metrics: dict) -> list[str]:
    heads = list(metrics["heads"])
    header = ["fold", "slides", *(f"{HEAD_NAMES[h]} macro-F1" for h in heads),
              *(f"{HEAD_NAMES[h]} AUC" for h in heads), "NCMI"]
    rows = [[str(f["fold"]), str(f["n_slides"]),
             *(fmt(f["heads"][h]["macro_f1"]) for h in heads),
             *(fmt(f["heads"][h]["auc_macro"]) for h in heads), fmt(f["ncmi"]["ncmi"])]
            for f in metrics["folds"]]
    summary = metrics["fold_summary"]

    def mean_sd(h: str, name: str) -> str:
        s = summary[h][name]
        return f"{fmt(s['mean'])} ± {fmt(s['sd'])}"

    rows.append(["mean ± sd", "", *(mean_sd(h, "macro_f1") for h in heads),
                 *(mean_sd(h, "auc_macro") for h in heads), fmt(metrics["ncmi"]["ncmi"])])
    return table(header, rows)


def _method(metrics: dict) -> list[str]:
    boot = metrics["bootstrap"]
    lines = [
        f"- Intervals: {boot['level']:.0%} {boot['method']} bootstrap, {boot['n_boot']} "
        f"resamples of {boot['unit']}s ({boot['n_units']} units), seed {boot['seed']}; the "
        "model and the heads are held fixed, so the intervals reflect which slides were "
        "evaluated, not retraining.",
        f"- Linear probe: standardised {metrics['probe_input']}, multinomial logistic "
        "regression, regularisation chosen by cross-validated log-loss on the training split "
        "only (C per fold: " + ", ".join(
            f"{f['fold']}: {f['fit']['linear_probe']['C']:g}" for f in metrics["folds"]) + ").",
        "- Centroid head: class means of the model's outputs p over the training slides; "
        "predicted class argmin KL(p‖s_c), scores softmax(−KL). These scores rank well (AUC) "
        "but are not calibrated probabilities: KL values of a few hundredths of a nat give "
        "near-uniform scores, so this head's ECE is high by construction.",
        f"- ECE: {metrics['ece_bins']}.",
        "- NCMI = CMI / Γ of the model's outputs on this split (class means of this split as "
        "centroids); lower is better.",
    ]
    if "classifier" in metrics["heads"]:
        lines.append("- Own classifier: softmax of the run's logits.")
    if metrics["n_folds"] > 1:
        lines.append(f"- {metrics['n_folds']} folds; headline rows pool every fold's slides "
                     f"({metrics['pooled']}); NCMI, CMI and Γ are means over the folds.")
    outside = _outside_interval(metrics)
    if outside:
        lines.append("- Point estimate outside its interval: " + ", ".join(outside) + " (the "
                     "plug-in value of a biased metric such as ECE can sit below the "
                     "resampled values on small sets).")
    return lines


def render_eval_report(metrics: dict) -> str:
    """``report.md`` for one evaluated split (``metrics``: the metrics.json record)."""
    counts = ", ".join(f"{c} {n}" for c, n in metrics["class_counts"].items())
    nc, nt = metrics["ncmi"], metrics["ncmi_train"]
    lines = [
        f"# Evaluation on the {metrics['split']} split", "",
        _run_line(metrics) + ".", "",
        f"{metrics['n_slides']} slides from {metrics['n_patients']} patients ({counts}), "
        f"{metrics['n_folds']} fold(s).", "",
        "## Headline (95 % bootstrap intervals)", "", *_headline(metrics), "",
        f"NCMI of the model on this split: **{fmt(nc['ncmi'])}** (CMI {fmt(nc['cmi'])} nats, "
        f"Γ {fmt(nc['gamma'])} nats); on its training split: {fmt(nt['ncmi'])} (CMI "
        f"{fmt(nt['cmi'])}, Γ {fmt(nt['gamma'])}). Lower is better.", "",
        "## Per class", "", *_per_class(metrics),
        "## Confusion matrices and ROC curves", "", *_confusions(metrics),
    ]
    if metrics["n_folds"] > 1:
        lines += ["## Folds", "", *_folds(metrics), ""]
    lines += ["## How these numbers were made", "", *_method(metrics), ""]
    return "\n".join(lines)


def _delta(entry: dict) -> str:
    return f"{fmt(entry['diff'])} [{fmt(entry['ci95'][0])}, {fmt(entry['ci95'][1])}]"


def _seeds_ci(entry: dict) -> str:
    """The interval over seeds and patients (``ci95_seeds``), or n/a."""
    ci = entry.get("ci95_seeds")
    return "n/a" if ci is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _wins(entry: dict) -> str:
    ties = f", {entry['ties']} tied" if entry["ties"] else ""
    return f"{entry['b_better']} of {entry['n_seeds']}{ties}"


def render_compare_report(rows: list[dict], pairs: list[dict], split: str, head: str,
                          n_slides: int, bootstrap: dict) -> str:
    """``comparison.md``: one row per run (``rows``: run, loss, metric entries) and one per
    pair of runs with paired differences (``pairs``); ``bootstrap["seeds"]``: the seeds the
    runs were paired on, None for single runs."""
    seeds = bootstrap.get("seeds")
    header = ["run", "loss", *(METRIC_NAMES[n] for n in SCALARS), "NCMI"]
    body = [[r["run"], r["loss"], *(fmt_ci(r[n]) for n in SCALARS), fmt(r["ncmi"])]
            for r in rows]
    if seeds is None:
        intro = ("**One seed.** Each run is a single trained model: the intervals cover which "
                 "test patients were drawn, not retraining, and a difference between single "
                 "seeds can reverse with another seed (train each loss with `--seeds 0,1,2,3,4` "
                 "and compare the multi-seed folders).")
        pair_header = ["runs", "Δ macro-F1", "Δ AUC (macro OvR)"]
        diff_rows = [[f"{p['b']} − {p['a']}", _delta(p["macro_f1"]), _delta(p["auc_macro"])]
                     for p in pairs]
        method = ("both runs are scored on each resample's slides. An interval that excludes "
                  "0 means the difference holds on resampled test sets.")
    else:
        intro = (f"**{len(seeds)} seeds** ({', '.join(map(str, seeds))}), paired: every run "
                 "was trained once per seed on the same splits; values are means over the "
                 "seeds, ± the sd over seeds in the last column.")
        header.append("macro-F1 sd over seeds")
        for line, r in zip(body, rows, strict=True):
            line.append(fmt(r["macro_f1"]["seed_sd"]))
        pair_header = ["runs", "Δ macro-F1 (mean over seeds) [patients]",
                       "[seeds and patients]", "B better (macro-F1)",
                       "Δ AUC (mean over seeds) [patients]", "[seeds and patients]",
                       "B better (AUC)", "Δ macro-F1 per seed"]
        diff_rows = [[f"{p['b']} − {p['a']}", _delta(p["macro_f1"]), _seeds_ci(p["macro_f1"]),
                      _wins(p["macro_f1"]), _delta(p["auc_macro"]), _seeds_ci(p["auc_macro"]),
                      _wins(p["auc_macro"]),
                      ", ".join(f"{s}: {d:+.3f}" for s, d in
                                zip(seeds, p["macro_f1"]["per_seed"], strict=True))]
                     for p in pairs]
        method = ("each resample draws the patients once and scores every seed's two runs on "
                  "that draw; the statistic is the mean over seeds of B − A. [patients] "
                  "covers which test patients were drawn, given these trained seeds: whether "
                  "these models differ. [seeds and patients] also draws the seed pairs with "
                  "replacement in each resample: whether the recipes differ, the question "
                  "when comparing losses or settings (with few seeds it is coarse). Where "
                  "only the first excludes 0, other seeds may well reverse the difference.")
    return "\n".join([
        f"# Comparison on the {split} split, {HEAD_NAMES[head]}", "",
        f"{len(rows)} runs evaluated on the same {n_slides} slides.", "", intro, "",
        *table(header, body), "",
        "## Paired differences (B − A, 95 % paired bootstrap interval)", "",
        *table(pair_header, diff_rows), "",
        f"Intervals: {bootstrap['n_boot']} resamples of {bootstrap['unit']}s, seed "
        f"{bootstrap['seed']}; {method}", ""])


def render_seeds_report(run: str, split: str, rows: list[dict], summary: dict) -> str:
    """``eval/<split>/report.md`` of a multi-seed folder: per head, each seed's scalar metrics
    (``rows``: one dict per seed and head, with ``seed``, ``head`` and the :data:`SCALARS`,
    None where undefined) and their mean ± sd over seeds (``summary``: head → metric →
    ``{"mean", "sd"}``)."""
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    lines = [f"# Evaluation on the {split} split, {len(seeds)} seeds", "",
             f"Run `{run}`: one run per training seed, the same splits for every seed. Each "
             f"seed's own report is in `seed_<s>/eval/{split}/report.md`.", ""]
    for head, stats in summary.items():
        body = [[str(r["seed"]), *(fmt(r[n]) for n in SCALARS)] for r in rows
                if r["head"] == head]
        body.append(["mean ± sd", *(f"{fmt(stats[n]['mean'])} ± {fmt(stats[n]['sd'])}"
                                    for n in SCALARS)])
        lines += [f"## {HEAD_NAMES[head]}", "",
                  *table(["seed", *(METRIC_NAMES[n] for n in SCALARS)], body), ""]
    return "\n".join(lines)
