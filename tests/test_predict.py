"""`wsi-ncmi predict` on generated slides with a model trained on the same kind of slides
through the real pipeline (tile → extract with a tiny seeded encoder → train NCMI), and the
review pages of `predict` and `eval --review` (read back, and rendered in headless Chromium)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from cli import run_cli
from review_fixtures import check_slide_view, page_index, page_slide, watch

from wsi_ncmi.errors import InputError
from wsi_ncmi.formats.featurefile import feature_settings, read_features
from wsi_ncmi.formats.runfolder import choose_folds
from wsi_ncmi.model.encoders import save_seeded_checkpoint
from wsi_ncmi.model.heads import fit_linear_probe, probe_proba, probe_record
from wsi_ncmi.model.inference import load_fold, run_model
from wsi_ncmi.slides.synthetic import write_synthetic_slide
from wsi_ncmi.stages.extract import ExtractConfig, extract_slides
from wsi_ncmi.stages.jobs import jobs_from_paths
from wsi_ncmi.stages.tile import TileConfig, tile_slides
from wsi_ncmi.stages.train import train_run
from wsi_ncmi.stages.verify import read_record, verify_record
from wsi_ncmi.stats.simplex import centroid_scores

W, H = 2048, 1536
CLASSES = ["normal", "lesion"]
# deliberately not the predict/tile defaults: predict must take them from the run
TILING = TileConfig(target_mpp=1.0, tile_size=32, min_tissue=0.5)


def write_slide(path: Path, seed: int, lesion: bool) -> None:
    write_synthetic_slide(path, W, H, seed=seed, lesion="dense" if lesion else None,
                          downsamples=(1, 4, 16))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("predict")
    train_slides, new_slides = root / "train_slides", root / "new_slides"
    train_slides.mkdir()
    new_slides.mkdir()
    rows = []
    for i in range(8):
        sid = f"t{i}"
        write_slide(train_slides / f"{sid}.tif", 300 + i, lesion=bool(i % 2))
        rows.append({"slide_id": sid, "path": f"{sid}.tif", "label": CLASSES[i % 2],
                     "patient_id": f"p{i}", "split": "val" if i >= 6 else "train"})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    ws = root / "ws"
    jobs = jobs_from_paths(sorted(train_slides.glob("*.tif")))
    assert tile_slides(jobs, ws, TILING).ok
    ckpt = root / "encoder.safetensors"
    save_seeded_checkpoint("test_resnet", ckpt, seed=3)
    assert extract_slides(jobs, ws, ExtractConfig(encoder="test_resnet", weights=ckpt,
                                                 device="cpu", workers=0)).ok
    config = {"task": {"name": "lesion", "label_column": "label", "classes": CLASSES},
              "split": {"method": "column", "column": "split"},
              "model": {"embed_dim": 8, "attn_dim": 8}, "loss": {"name": "ncmi"},
              "optim": {"epochs": 8, "batch_size": 3, "lr": 5e-3},
              "device": "cpu", "seed": 0}
    run = train_run(config, root / "run", ws / "features" / "test_resnet", manifest)
    write_slide(new_slides / "new_a.tif", 400, lesion=True)
    write_slide(new_slides / "new_b.tif", 401, lesion=False)
    shutil.copy(train_slides / "t0.tif", new_slides / "t0.tif")  # a slide the model has seen
    out = root / "out"
    result = invoke(run, new_slides, out, "--weights", ckpt)
    assert result.returncode == 0, result.output
    return {"root": root, "run": run, "ckpt": ckpt, "new": new_slides, "out": out, "ws": ws,
            "first": result}


def invoke(run: Path, slides: Path, out: Path, *extra):
    return run_cli("predict", "--model", run, slides, "--out", out, "--device", "cpu",
                   "--workers", "0", *extra, check=False)


def one_line_error(output: str) -> str:
    """The command's error: one line, the last (progress lines may come before it)."""
    lines = output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], output
    return errors[0]


def read_predictions(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "predictions.csv", dtype={"slide_id": str})


def test_predictions_csv(setup):
    pred = read_predictions(setup["out"])
    assert list(pred.columns) == ["slide_id", "predicted_class", "prob_normal", "prob_lesion",
                                  "head", "folds", "review", "n_tiles"]
    assert pred["slide_id"].tolist() == ["new_a", "new_b", "t0"]
    probs = pred[["prob_normal", "prob_lesion"]].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    assert pred["predicted_class"].tolist() == [CLASSES[k] for k in probs.argmax(1)]
    assert (pred["review"] == (probs.max(1) < 0.8)).all()
    assert (pred["head"] == "linear_probe").all() and (pred["folds"].astype(str) == "0").all()
    for sid, n in zip(pred["slide_id"], pred["n_tiles"], strict=True):
        assert n == len(read_features(setup["out"] / "features" / "test_resnet" /
                                      f"{sid}.h5")[1]) > 0
        assert (setup["out"] / "heatmaps" / f"{sid}.png").stat().st_size > 0
        gj = json.loads((setup["out"] / "heatmaps" / f"{sid}.geojson").read_text())
        assert len(gj["features"]) == n
        ledger = json.loads((setup["out"] / "ledger" / "predict" / f"{sid}.json").read_text())
        assert ledger["status"] == "done"
    assert verify_record(setup["out"] / "provenance" / "predict-all.json").problems == []


def test_predict_reproduces_the_training_features_and_probe(setup):
    """A slide the model was trained on, predicted from its slide file: predict tiles and
    encodes it exactly as the training features were made (settings from RUN/features.json),
    and its probabilities are the stored probe applied to its training embedding."""
    _, c_train, _ = read_features(setup["ws"] / "features" / "test_resnet" / "t0.h5")
    f_train = read_features(setup["ws"] / "features" / "test_resnet" / "t0.h5")[0]
    f_new, c_new, attrs = read_features(setup["out"] / "features" / "test_resnet" / "t0.h5")
    np.testing.assert_array_equal(c_new, c_train)
    np.testing.assert_allclose(f_new, f_train, rtol=1e-5, atol=1e-6)
    assert json.loads(attrs["tiling"])["tile_size"] == 32

    probe = json.loads((setup["run"] / "fold_0" / "probe.json").read_text())
    emb = np.load(setup["run"] / "fold_0" / "embeddings.npz")
    z = emb["z"][list(emb["slide_id"]).index("t0")][None]
    pred = read_predictions(setup["out"]).set_index("slide_id")
    np.testing.assert_allclose(pred.loc["t0", ["prob_normal", "prob_lesion"]].to_numpy(float),
                               probe_proba(probe, z)[0], atol=1e-4)


def test_stored_probe_equals_the_scikit_learn_probe():
    rng = np.random.default_rng(0)
    for n_classes in (2, 3):
        y = np.repeat(np.arange(n_classes), 12)
        x = rng.normal(size=(len(y), 5)) + y[:, None] * 0.8
        probe = fit_linear_probe(x, y, n_classes, seed=0)
        record = json.loads(json.dumps(probe_record(probe, [str(c) for c in range(n_classes)])))
        new = rng.normal(size=(7, 5))
        np.testing.assert_allclose(probe_proba(record, new), probe.scores(new), rtol=1e-10,
                                   atol=1e-12)


def test_rerun_skips_finished_slides_and_rethresholds(setup):
    out = setup["out"]
    watched = [out / "predictions" / "new_a.json", out / "heatmaps" / "new_b.png",
               out / "features" / "test_resnet" / "t0.h5"]
    before = {p: p.stat().st_mtime_ns for p in watched}
    result = invoke(setup["run"], setup["new"], out, "--weights", setup["ckpt"],
                    "--review-threshold", "1.0")
    assert result.returncode == 0, result.output
    assert "0 done, 3 already complete, 0 failed" in result.output
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert read_predictions(out)["review"].all()


def test_first_run_names_each_step_and_what_it_wrote(setup):
    err = setup["first"].stderr
    steps = [f"predict: loading {setup['run']} (fold(s) 0, head linear_probe) on cpu",
             "predict: loading the encoder test_resnet",
             "predict new_a: tiling", "predict new_a: extracting features of ",
             "predict 1/3 new_a: done",
             f"wrote {setup['out'] / 'predictions.csv'} (per-slide records in "
             f"{setup['out'] / 'predictions'}, heatmaps in {setup['out'] / 'heatmaps'})"]
    positions = [err.find(step) for step in steps]
    assert all(p >= 0 for p in positions), err
    assert positions == sorted(positions)


def test_a_complete_rerun_does_not_load_the_encoder(setup, monkeypatch):
    """Nothing to do: the encoder (seconds to build and hash) is never loaded."""
    import wsi_ncmi.model.encoders as encoders

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded")

    monkeypatch.setattr(encoders, "load_recorded_encoder", refuse)
    result = invoke(setup["run"], setup["new"], setup["out"], "--weights", setup["ckpt"])
    assert result.returncode == 0, result.output
    assert "predict: all 3 slide(s) already predicted with this run, head and folds" \
        in result.stderr
    assert "0 done, 3 already complete, 0 failed" in result.stderr


def test_centroid_head_is_calibrated_on_the_validation_slides(setup, tmp_path):
    """softmax(−KL) stays near 1/C, so every slide fell under the review threshold: predict
    fits a temperature on the fold's validation slides (stored with the run) and its
    probabilities are softmax(−KL/T), ranking unchanged."""
    out = tmp_path / "centroid"
    result = invoke(setup["run"], setup["new"], out, "--weights", setup["ckpt"],
                    "--head", "centroid")
    assert result.returncode == 0, result.output
    fold = setup["run"] / "fold_0"
    record = json.loads((fold / "centroid_calibration.json").read_text())
    assert record["n_val_slides"] == 2 and record["head"] == "centroid"
    t = record["temperature"]
    assert 0 < t < 1
    quality = record["validation"]
    assert quality["after"]["log_loss"] <= quality["before"]["log_loss"]
    means = np.array(json.loads((fold / "model.json").read_text())["centroid_head_means"])
    emb = np.load(fold / "embeddings.npz")
    p = emb["p"][[list(emb["slide_id"]).index("t0")]]
    pred = read_predictions(out).set_index("slide_id")
    got = pred.loc["t0", ["prob_normal", "prob_lesion"]].to_numpy(float)
    np.testing.assert_allclose(got, centroid_scores(p, means, t)[0], atol=1e-4)
    assert got.argmax() == centroid_scores(p, means).argmax()
    assert pred["review"].tolist() == (pred[["prob_normal", "prob_lesion"]].max(1) < 0.8
                                       ).tolist()
    inputs = json.loads((out / "provenance" / "predict-all.json").read_text())["inputs"]
    assert any(e["path"].endswith("fold_0/centroid_calibration.json") for e in inputs)


def test_refuses_other_encoder_weights(setup, tmp_path):
    other = tmp_path / "other.safetensors"
    save_seeded_checkpoint("test_resnet", other, seed=4)
    result = invoke(setup["run"], setup["new"], tmp_path / "out", "--weights", other)
    assert result.returncode == 2
    error = one_line_error(result.output)
    assert "sha256" in error and "refusing" in error
    assert not (tmp_path / "out" / "predictions.csv").exists()


def run_with_weights_at(setup, tmp_path: Path, weights: Path) -> Path:
    """A copy of the run whose features.json says the features were made from ``weights``."""
    run = tmp_path / "run"
    shutil.copytree(setup["run"], run)
    record = json.loads((run / "features.json").read_text())
    record["facts"]["weights_files"] = [str(weights)]
    (run / "features.json").write_text(json.dumps(record))
    return run


def test_finds_the_weights_the_features_were_made_with(setup, tmp_path, monkeypatch):
    """Without --weights, predict uses the weights file recorded by extract (checked by
    sha256), never the hub."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    record = json.loads((setup["run"] / "features.json").read_text())
    assert record["facts"]["weights_files"] == [str(setup["ckpt"].resolve())]
    result = invoke(setup["run"], setup["new"] / "new_a.tif", tmp_path / "out")
    assert result.returncode == 0, result.output
    assert read_predictions(tmp_path / "out")["slide_id"].tolist() == ["new_a"]


def test_refuses_in_one_line_naming_the_recorded_weights(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    gone = tmp_path / "moved" / "encoder.safetensors"
    result = invoke(run_with_weights_at(setup, tmp_path, gone), setup["new"], tmp_path / "out")
    assert result.returncode == 2
    error = one_line_error(result.output)
    assert str(gone) in error and "no longer there" in error
    assert "local_files_only" not in result.output
    changed = tmp_path / "changed.safetensors"
    save_seeded_checkpoint("test_resnet", changed, seed=4)
    result = invoke(run_with_weights_at(setup, tmp_path / "b", changed), setup["new"],
                    tmp_path / "out")
    assert result.returncode == 2 and "have changed since" in result.output


def test_choose_folds(tmp_path):
    (tmp_path / "splits.json").write_text(json.dumps(
        {"folds": [{"fold": k, "train": [], "val": [], "test": []} for k in range(3)]}))
    assert choose_folds(tmp_path, 2, False) == [2]
    assert choose_folds(tmp_path, None, True) == [0, 1, 2]
    with pytest.raises(InputError, match="3 folds; choose --fold K or --all-folds"):
        choose_folds(tmp_path, None, False)
    with pytest.raises(InputError, match="no fold 5"):
        choose_folds(tmp_path, 5, False)


def test_feature_settings_must_agree_across_slides(tmp_path):
    """Training refuses feature files made differently (listing the slides), but accepts
    the per-slide µm/px differences of mixed scanners within the level tolerance."""
    tiling = json.dumps({"target_mpp": 0.5, "tile_size": 224, "overlap": 0, "min_tissue": 0.25,
                         "seg_mpp": 8.0, "level_tolerance": 0.05})

    def bag(sid: str, mpp: float, sha: str, resize: str, tiling: str = tiling) -> Path:
        path = tmp_path / f"{sid}.h5"
        with h5py.File(path, "w") as f:
            f["features"] = np.zeros((2, 4), np.float32)
            f["coords"] = np.zeros((2, 2), np.int64)
            f.attrs.update(encoder="enc", weights_sha256=sha, random_weights=False,
                           input_mpp=mpp, tile_size=224, tiling=tiling,
                           preprocessing=json.dumps({"input_size": 224, "resize": resize}))
        return path

    infos = {s: bag(s, m, "aaa", r)
             for s, m, r in (("a", 0.5, "none"), ("b", 0.51, "cv2.INTER_AREA"))}
    record = feature_settings(infos)
    settings, facts = record["settings"], record["facts"]
    assert facts["input_mpp"]["min"] == 0.5 and facts["input_mpp"]["max"] == 0.51
    assert settings["weights_sha256"] == "aaa" and facts["resized_slides"] == 1
    assert settings["preprocessing"] == {"input_size": 224}
    infos["c"] = bag("c", 0.5, "bbb", "none")
    infos["d"] = bag("d", 0.6, "aaa", "none")
    with pytest.raises(InputError) as err:
        feature_settings(infos)
    message = str(err.value)
    assert "weights_sha256" in message and "(c)" in message and "input_mpp" in message
    assert "(d)" in message and "\n" not in message
    # tiles from CLAM: no tiling settings, µm/px unknown (extract writes -1)
    foreign = {s: bag(s, -1.0, "aaa", "none", "{}") for s in ("e", "f")}
    assert feature_settings(foreign)["facts"]["input_mpp"] is None


def test_hostile_slide_ids_fail_alone_and_write_nothing_outside(setup, tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"slide_id": ["new_a", "../../escape", "sub/dir"],
                  "path": ["new_a.tif"] * 3}).to_csv(manifest, index=False)
    out = tmp_path / "w" / "out"
    result = invoke(setup["run"], setup["new"], out, "--weights", setup["ckpt"], "--manifest",
                    manifest, "--slide-root", setup["new"])
    assert result.returncode == 1
    assert "FAILED '../../escape': " in result.stderr and "FAILED 'sub/dir': " in result.stderr
    assert read_predictions(out)["slide_id"].tolist() == ["new_a"]
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.parts[:2] == ("w", "out") or p.name == "m.csv" for p in written), written
    assert not any("sub" in p.parts or "escape" in p.name for p in written)


# --- the review page --------------------------------------------------------------------


def page_links(review: Path, data: dict) -> dict[str, Path]:
    return {link["label"]: review / link["href"] for link in data["links"]}


def test_predict_writes_the_review_page(setup, tmp_path):
    """The default run wrote OUT/review/: one row per predicted slide with the merged
    table's numbers, the attention predict computed on the feature file's tiles, pyramids at
    the default cap (1 µm/px of 0.25 µm/px slides: a quarter of level 0), the tissue outline,
    links inside the folder, and no label anywhere; the folder works when copied alone."""
    out = setup["out"]
    review = out / "review"
    pred = read_predictions(out).set_index("slide_id")
    index = page_index(review)
    assert [r["id"] for r in index["slides"]] == ["new_a", "new_b", "t0"]
    assert index["classes"] == CLASSES and index["has_truth"] is False
    copy = tmp_path / "copied_review"
    shutil.copytree(review, copy)
    for n, row in enumerate(index["slides"]):
        sid = row["id"]
        assert row["probabilities"] == pytest.approx(
            pred.loc[sid, ["prob_normal", "prob_lesion"]].to_numpy(float), abs=1e-4)
        assert (row["predicted"], row["review"]) == (pred.loc[sid, "predicted_class"],
                                                     bool(pred.loc[sid, "review"]))
        assert "truth" not in row and row["pyramid"] is True
        record = json.loads((out / "predictions" / f"{sid}.json").read_text())
        assert record["review"]["settings"] == {"finest_mpp": 1.0, "max_bytes": 64 * 2**20}
        assert (record["review"]["downsample"], record["review"]["mpp"],
                record["review"]["limited_by"]) == (4, 1.0, "resolution cap")
        data = page_slide(review, n)
        assert (data["level0"], data["mpp"]) == ([W, H], 0.25)
        assert (data["pyramid"]["width"], data["pyramid"]["downsample"]) == (W // 4, 4)
        _, coords, attrs = read_features(out / "features" / "test_resnet" / f"{sid}.h5")
        assert (data["tiles"]["x"], data["tiles"]["y"]) == (coords[:, 0].tolist(),
                                                            coords[:, 1].tolist())
        assert set(data["tiles"]["side"]) == {int(attrs["patch_size_level0"])}
        geojson = json.loads((out / "heatmaps" / f"{sid}.geojson").read_text())
        attention = [f["properties"]["measurements"]["attention"] for f in geojson["features"]]
        assert data["tiles"]["attention"] == pytest.approx(attention, rel=1e-5)
        assert np.load(out / "predictions" / f"{sid}.attention.npy") == pytest.approx(attention)
        assert data["tissue"] and data["tissue"][0][0]
        links = page_links(review, data)
        assert len(links) == 3
        assert (links["attention tiles (GeoJSON, QuPath)"].read_bytes()
                == (out / "heatmaps" / f"{sid}.geojson").read_bytes())
        for path in [*page_links(copy, data).values(),
                     copy / data["pyramid"]["url"] / "0" / "0_0.jpeg"]:
            assert path.resolve().is_relative_to(copy.resolve()) and path.is_file()
    for path in (review / "data").iterdir():
        assert '"truth"' not in path.read_text()
    outputs = {Path(e["path"]).resolve()
               for e in read_record(out / "provenance" / "predict-all.json")["outputs"]}
    assert {review.resolve() / "index.html", review.resolve() / "slides" / "t0.dzi"} <= outputs


@pytest.fixture(scope="module")
def fine_review(setup):
    """A rerun asking for full-resolution review images (0.25 µm/px)."""
    result = invoke(setup["run"], setup["new"], setup["out"], "--weights", setup["ckpt"],
                    "--review-mpp", "0.25")
    assert result.returncode == 0, result.output
    return result


def test_new_review_settings_redo_the_slides_on_the_same_features(setup, fine_review):
    out = setup["out"]
    assert "3 done, 0 already complete, 0 failed" in fine_review.output
    record = json.loads((out / "predictions" / "new_a.json").read_text())
    assert (record["review"]["downsample"], record["review"]["limited_by"]) == (1, "level 0")
    assert page_slide(out / "review", 0)["pyramid"]["width"] == W
    page = out / "review" / "index.html"
    before = page.stat().st_mtime_ns
    result = invoke(setup["run"], setup["new"], out, "--weights", setup["ckpt"], "--no-review")
    assert "0 done, 3 already complete, 0 failed" in result.output
    assert page.stat().st_mtime_ns == before
    bad = invoke(setup["run"], setup["new"], out, "--weights", setup["ckpt"],
                 "--review-max-mb", "0.01")
    assert bad.returncode == 2 and "--review-max-mb" in bad.output


def test_predict_review_page_in_chromium(setup, fine_review, browser, tmp_path_factory):
    """The page predict wrote, from disk: a row per slide, the slide image draws, the
    overlay toggles, zoom loads deeper tiles, the links resolve, and no console errors."""
    page = setup["out"] / "review" / "index.html"
    tab = browser.new_page(viewport={"width": 1280, "height": 720})
    errors, finished, failed = watch(tab)
    tab.goto(page.as_uri())
    tab.wait_for_load_state("load")
    assert tab.locator("#slides tbody tr").count() == 3
    check_slide_view(tab, "new_a", page.parent.as_uri() + "/", finished)
    hrefs = [a.get_attribute("href") for a in tab.locator("#links a").all()]
    assert len(hrefs) == 3 and all((page.parent / h).is_file() for h in hrefs)
    assert not failed and not errors, (failed, errors)
    shot = tmp_path_factory.mktemp("artifacts") / "review_page_predict.png"
    tab.screenshot(path=str(shot))
    print(f"review page screenshot: {shot}")
    tab.close()


def test_eval_review_page(setup, tmp_path):
    """``eval --review`` on the validation slides: true labels beside the linear probe's
    probabilities (as eval's predictions.csv), the fold's own attention, slide images from
    the manifest's paths under --slide-root and tissue outlines from the tile workspace; with
    the slide files missing the page is still written, without images."""
    run, root = setup["run"], setup["root"]
    args = ["eval", run, "--split", "val", "--n-boot", "20", "--device", "cpu", "--review"]
    run_cli(*args, "--slide-root", root / "train_slides")
    review = run / "eval" / "val" / "review"
    index = page_index(review)
    assert index["has_truth"] is True and [r["id"] for r in index["slides"]] == ["t6", "t7"]
    scores = pd.read_csv(run / "eval" / "val" / "predictions.csv").query(
        "head == 'linear_probe'").set_index("slide_id")
    loaded = load_fold(run / "fold_0", "cpu")
    for n, (sid, truth) in enumerate([("t6", "normal"), ("t7", "lesion")]):
        row, data = index["slides"][n], page_slide(review, n)
        assert row["truth"] == truth == scores.loc[sid, "true_label"]
        assert row["probabilities"] == pytest.approx(
            scores.loc[sid, ["score_normal", "score_lesion"]].to_numpy(float), abs=1e-4)
        attention = run_model(loaded, setup["ws"] / "features" / "test_resnet",
                              [sid])["attention"][0]
        assert data["tiles"]["attention"] == pytest.approx(attention, rel=1e-4, abs=1e-9)
        assert data["level0"] == [W, H] and data["pyramid"]["width"] == W // 4
        assert data["tissue"] and len(page_links(review, data)) == 2
    assert verify_record(run / "eval" / "val" / "provenance.json").problems == []

    run_cli(*args, "--slide-root", tmp_path)
    index = page_index(review)
    assert [r["pyramid"] for r in index["slides"]] == [False, False]
    assert not (review / "slides").exists() and page_slide(review, 0)["tissue"]
