"""Provenance records: what they hold, and that verify catches drifted, swapped and missing
files (quick and full fingerprints)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tifffile
from cli import run_cli

from wsi_ncmi.checksums import fingerprint_file
from wsi_ncmi.errors import InputError
from wsi_ncmi.slides.synthetic import write_synthetic_slide
from wsi_ncmi.stages.provenance import write_record
from wsi_ncmi.stages.verify import SlideRoots, verify_record


def _random_file(path: Path, size: int, seed: int) -> Path:
    import numpy as np

    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


@pytest.fixture()
def run(tmp_path):
    """A small 'run': two slides in, two outputs out, and its record."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(2):
        write_synthetic_slide(slides / f"slide_{i}.tif", 1024, 768, seed=i, lesion="dense",
                              downsamples=(1, 4))
    out = tmp_path / "out"
    (out / "tiles").mkdir(parents=True)
    outputs = [_random_file(out / "tiles" / f"slide_{i}.h5", 3000 + i, seed=i) for i in range(2)]
    inputs = sorted(slides.glob("*.tif"))
    record = write_record(out, command="tile", config={"mpp": 0.5, "out": out},
                          inputs=inputs, outputs=outputs, seeds={"seed": 7})
    return {"record": record, "inputs": inputs, "outputs": outputs, "out": out}


def test_record_holds_command_config_versions_git_device_seeds_and_files(run):
    record = json.loads(run["record"].read_text())
    assert record["command"] == "tile"
    assert record["config"]["mpp"] == 0.5
    assert record["seeds"] == {"seed": 7}
    versions = record["versions"]
    for name in ("torch", "timm", "h5py", "numpy", "scikit-learn", "pandas", "openslide-python"):
        assert versions[name] == metadata.version(name)
    assert versions["wsi-ncmi"] == metadata.version("wsi-ncmi")
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    import openslide

    assert versions["openslide-library"] == openslide.__library_version__
    git = record["git"]
    if git is not None:  # run from a checkout (the usual case for this test suite)
        assert len(git["commit"]) == 40 and isinstance(git["dirty"], bool)
    assert record["device"]["logical_cores"] == os.cpu_count()
    assert [e["size"] for e in record["inputs"]] == [p.stat().st_size for p in run["inputs"]]
    assert all(e["checksum"].startswith("quick:") and e["openslide_quickhash1"]
               for e in record["inputs"])
    assert [e["relative"] for e in record["outputs"]] == ["tiles/slide_0.h5", "tiles/slide_1.h5"]
    host = socket.gethostname()
    if len(host) >= 4:
        assert host not in run["record"].read_text()


def test_writing_a_record_does_not_import_torch(tmp_path):
    code = ("import sys; from pathlib import Path; "
            "from wsi_ncmi.stages.provenance import write_record;"
            f"p = Path({str(tmp_path)!r}) / 'a.txt'; p.write_text('x');"
            "write_record(p.parent, command='t', config={}, inputs=[p], outputs=[]);"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_verify_passes_an_untouched_run_even_after_the_run_folder_moves(run, tmp_path):
    assert verify_record(run["record"]).problems == []
    moved = tmp_path / "moved"
    shutil.move(run["out"], moved)
    assert verify_record(moved / "provenance.json").problems == []


def test_verify_catches_a_modified_and_a_deleted_output(run):
    first, second = run["outputs"]
    data = bytearray(first.read_bytes())
    data[10] ^= 1
    first.write_bytes(bytes(data))
    second.unlink()
    problems = verify_record(run["record"]).problems
    assert len(problems) == 2
    assert "output" in problems[0] and first.name in problems[0] and "content changed" in \
        problems[0]
    assert "output" in problems[1] and second.name in problems[1] and "missing" in problems[1]


def test_verify_catches_swapped_slides(run):
    a, b = run["inputs"]
    tmp = a.with_suffix(".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    problems = verify_record(run["record"]).problems
    assert len(problems) == 2
    assert all(p.startswith("input ") for p in problems)
    assert a.name in problems[0] and b.name in problems[1]


def test_quick_fingerprint_differs_for_a_rewritten_file_of_the_same_size(tmp_path):
    path = _random_file(tmp_path / "big.bin", 5 << 20, seed=1)
    before = fingerprint_file(path)
    _random_file(path, 5 << 20, seed=2)
    after = fingerprint_file(path)
    assert after["size"] == before["size"]
    assert after["checksum"] != before["checksum"]


def test_quick_fingerprint_catches_a_rescanned_overview_through_openslide(tmp_path):
    """A change confined to the middle of a file, in the slide's lowest pyramid level, is
    invisible to the head/tail blocks but changes OpenSlide's quickhash; a non-slide file with
    the same change keeps its quick fingerprint (documented), and sha256 catches both."""
    slide = tmp_path / "s.tif"
    write_synthetic_slide(slide, 1024, 768, seed=3, downsamples=(1, 4))
    block = 1024
    with tifffile.TiffFile(slide) as tf:
        lowest = tf.pages[-1]
        offset = lowest.dataoffsets[0] + lowest.databytecounts[0] // 2
    size = slide.stat().st_size
    assert block < offset < size - block
    changed = bytearray(slide.read_bytes())
    changed[offset] ^= 0xFF
    edited = tmp_path / "edited.tif"
    edited.write_bytes(bytes(changed))
    original = fingerprint_file(slide, block=block, quickhash=True)
    rescanned = fingerprint_file(edited, block=block, quickhash=True)
    assert rescanned["openslide_quickhash1"] != original["openslide_quickhash1"]
    assert rescanned["checksum"] != original["checksum"]

    plain, plain_edited = tmp_path / "s.bin", tmp_path / "edited.bin"
    shutil.copy(slide, plain)
    shutil.copy(edited, plain_edited)
    assert (fingerprint_file(plain, block=block)["checksum"]
            == fingerprint_file(plain_edited, block=block)["checksum"])
    assert (fingerprint_file(plain, "sha256")["checksum"]
            != fingerprint_file(plain_edited, "sha256")["checksum"])


def test_full_sha256_record_verifies_and_catches_a_middle_edit(tmp_path):
    data = _random_file(tmp_path / "data.bin", 4 << 20, seed=5)
    record = write_record(tmp_path / "rec", command="t", config={}, inputs=[data], outputs=[],
                          fingerprint="sha256")
    entry = json.loads(record.read_text())["inputs"][0]
    import hashlib

    assert entry["checksum"] == "sha256:" + hashlib.sha256(data.read_bytes()).hexdigest()
    assert verify_record(record).problems == []
    with open(data, "r+b") as f:
        f.seek(2 << 20)
        byte = f.read(1)
        f.seek(2 << 20)
        f.write(bytes([byte[0] ^ 1]))
    assert verify_record(record).problems == [
        f"input {data}: content changed (sha256 checksum differs)"]


def test_files_absent_when_recorded_and_home_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    present = _random_file(tmp_path / "in.bin", 100, seed=0)
    later = tmp_path / "later.bin"
    record = write_record(tmp_path / "rec", command="t", config={"weights": str(present)},
                          inputs=[present, later], outputs=[])
    content = json.loads(record.read_text())
    assert content["inputs"][0]["path"] == "~/in.bin"
    assert content["config"]["weights"] == "~/in.bin"
    assert content["inputs"][1] == {"path": "~/later.bin", "missing": True}
    assert verify_record(record).problems == []
    later.write_bytes(b"x")
    assert verify_record(record).problems == [
        "input ~/later.bin: absent when recorded, present now"]


def test_verify_cli_exit_status_and_folder_search(run, tmp_path):
    ok = run_cli("verify", run["out"])
    assert "4 file(s) checked, ok" in ok.output
    run["outputs"][0].write_bytes(b"changed")
    bad = run_cli("verify", run["record"], check=False)
    assert bad.returncode == 1
    assert "slide_0.h5: size changed" in bad.output
    assert run_cli("verify", tmp_path / "nothing", check=False).returncode == 2
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(InputError, match="not a wsi-ncmi provenance record"):
        verify_record(tmp_path / "other.json")


def test_verify_finds_slides_under_several_roots(tmp_path):
    """A record whose slides lie in two folders (the demo's cohort and its new slides) is
    checked whole with one --slide-root per folder; a swapped slide is caught there too."""
    roots = [tmp_path / "cohort", tmp_path / "new"]
    pairs = []
    for i, root in enumerate(roots):
        root.mkdir()
        write_synthetic_slide(root / f"s{i}.tif", 512, 384, seed=i, downsamples=(1, 4))
        pairs.append((f"s{i}", root / f"s{i}.tif"))
    out = tmp_path / "out"
    out.mkdir()
    record = write_record(out, command="predict", config={}, inputs=[], outputs=[],
                          slides=pairs)
    one = verify_record(record, roots[:1])
    assert len(one.unchecked) == 1 and "s1.tif" in one.unchecked[0]
    both = run_cli("verify", out, "--slide-root", roots[0], "--slide-root", roots[1])
    assert "2 file(s) checked, ok" in both.output
    write_synthetic_slide(roots[1] / "s1.tif", 512, 384, seed=5, downsamples=(1, 4))
    assert len(verify_record(record, roots).problems) == 1


def test_slide_roots_are_walked_once_for_many_records(tmp_path, monkeypatch):
    """verify over a workspace checks one record per stage and shard: a slide archive given
    as --slide-root is walked once, not once per record."""
    root = tmp_path / "archive"
    (root / "a").mkdir(parents=True)
    write_synthetic_slide(root / "a" / "s0.tif", 512, 384, seed=0, downsamples=(1, 4))
    records = []
    for k in range(3):
        out = tmp_path / f"out{k}"
        out.mkdir()
        records.append(write_record(out, command="tile", config={}, inputs=[], outputs=[],
                                    slides=[("s0", root / "a" / "s0.tif")]))
    walks = []
    rglob = Path.rglob
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: walks.append(self) or
                        rglob(self, pattern))
    roots = SlideRoots([root])
    results = [verify_record(r, roots) for r in records]
    assert [(len(v.problems), len(v.unchecked)) for v in results] == [(0, 0)] * 3
    assert walks == [root]


def test_a_slide_root_that_is_not_a_folder_is_refused_for_any_record(run, tmp_path):
    """Records without slides included: a mistyped --slide-root is never silently ignored."""
    with pytest.raises(InputError, match="not a folder"):
        verify_record(run["record"], [tmp_path / "no_such_folder"])
