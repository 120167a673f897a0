"""What eval's figures show: ROC curves told apart when they coincide, and heatmap titles
that name the true class beside the prediction."""

from __future__ import annotations

import numpy as np

from wsi_ncmi.stages.evalmetrics import FoldResult
from wsi_ncmi.stages.evaluate import most_confident
from wsi_ncmi.stages.heatmap import SlideCall
from wsi_ncmi.stats.plots import roc_figure


def curve_styles(fig) -> list[tuple[str, str]]:
    """(line style, marker) of each class's curve (the chance diagonal left out)."""
    return [(line.get_linestyle(), line.get_marker()) for line in fig.axes[0].lines[1:]]


def test_roc_curves_of_a_perfect_classifier_stay_distinguishable():
    # every class at AUC 1: the curves coincide, so only style and marker tell them apart
    y = np.repeat(np.arange(3), 4)
    scores = np.eye(3)[y]
    fig = roc_figure(y, scores, ["normal", "dense", "glands"], "perfect")
    styles = curve_styles(fig)
    assert len(styles) == 3 and len(set(styles)) == 3
    assert all(marker not in ("None", "", None) for _, marker in styles)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["normal: AUC 1.000", "dense: AUC 1.000", "glands: AUC 1.000"]


def test_roc_styles_are_distinct_for_many_classes():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(12), 3)
    fig = roc_figure(y, rng.dirichlet(np.ones(12), len(y)), [f"c{i}" for i in range(12)], "t")
    assert len(set(curve_styles(fig))) == 12


def test_eval_heatmap_titles_name_the_true_class():
    result = FoldResult(fold=0, slide_ids=["a", "b", "c"], y=np.array([0, 1, 1]),
                        scores={"linear_probe": np.array([[0.9, 0.1], [0.3, 0.7],
                                                          [0.95, 0.05]])},
                        ncmi={}, ncmi_train={})
    picks = most_confident([result], ["normal", "lesion"], 2)
    assert [(fold, sid) for fold, sid, _ in picks] == [(0, "c"), (0, "a")]
    assert picks[0][2] == SlideCall("normal", 0.95, "linear_probe", true_class="lesion")
    assert picks[0][2].caption("c") == "c: true lesion, predicted normal (p = 0.95, linear probe)"
    # predict's heatmaps (unlabelled slides) keep the title without a true class
    assert SlideCall("normal", 0.5, "centroid").caption("x") == \
        "x: predicted normal (p = 0.50, centroid head)"
