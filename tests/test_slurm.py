"""The Snakemake workflow on a running one-node SLURM cluster (tests/slurm_cluster.py), submitted
with the project's SLURM profile (pipelines/profiles/slurm) and a second profile holding only
what this small cluster needs (1 thread and 1 GB per job, the account, status checks every
second instead of every 40 s).

One scenario, run once for the module (a cluster start and fifteen SLURM jobs take minutes):

1. ``all`` on four slides of different sizes and µm/px, one of them not a slide, with
   ``--retries 0``; the extract job of the largest slide is cancelled with ``scancel`` while it
   runs;
2. the broken slide replaced by a real one, and the same command without ``--retries 0``;
3. the ``predict`` target for two slides with the run just trained;
4. meanwhile, the same cohort (s3 a slide from the start) and targets with the local profile,
   to compare the outputs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("snakemake")
pytest.importorskip("snakemake_executor_plugin_slurm")

from slurm_cluster import ACCOUNT, SlurmCluster, missing_binaries  # noqa: E402
from workflow import LOCAL, PIPELINES, job_counts, snakemake  # noqa: E402

from wsi_ncmi.model.encoders import save_seeded_checkpoint  # noqa: E402
from wsi_ncmi.slides.synthetic import write_synthetic_slide  # noqa: E402

pytestmark = pytest.mark.slurm
if missing := missing_binaries():
    pytest.skip(f"no SLURM here (missing {', '.join(missing)}); .ci/run installs it with "
                "apt-get", allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("slurmd must run as root to start jobs", allow_module_level=True)

SLURM_PROFILE = PIPELINES / "profiles" / "slurm"
JOB_MEM_MB = 1000
RUN_TIMEOUT_S = 1200
SACCT_FIELDS = ("JobID", "JobName", "Comment", "Partition", "Account", "Timelimit",
                "AllocTRES", "State", "ExitCode", "Elapsed", "TotalCPU")
# slide id, file name, label, split, level-0 width × height px, µm/px in the file, µm/px in
# the manifest (s2's file has none), lesion. s3's file is not a slide until step 2.
SLIDES = [("s0", "s0.tif", "negative", "train", (1024, 768), 0.25, "", None),
          ("s1", "s1.tif", "positive", "train", (640, 896), 0.5, "", "dense"),
          ("s2", "scan_2.tif", "positive", "test", (1536, 1024), None, "0.25", "glands"),
          ("s3", "s3.tif", "negative", "test", (768, 768), 0.5, "", None)]
CANCELLED_SLIDE = "s2"


@dataclass
class Scenario:
    """What the scenario's runs left: the folders, each SLURM run's output and its jobs."""

    folder: Path                      # the cohort run on SLURM
    local: Path                       # the same cohort run with the local profile
    outputs: dict[str, str]           # step → snakemake's output
    returncodes: dict[str, int]
    jobs: dict[str, list[dict]]       # step → its SLURM jobs (sacct rows + rule, wildcards)
    cancelled: str                    # SLURM id of the job cancelled in step 1
    failed_ledger: dict               # ledger/tile/s3.json after step 1
    mtimes_after_first: dict[Path, int]
    mtimes_after_rerun: dict[Path, int]


def write_slide(folder: Path, index: int) -> None:
    sid, name, _, _, (width, height), mpp, _, lesion = SLIDES[index]
    write_synthetic_slide(folder / name, width, height, mpp=mpp, seed=index, lesion=lesion,
                          downsamples=(1, 4))


def write_cohort(folder: Path) -> None:
    """Slides (s3's file is not a slide), encoder checkpoint, manifest, a 2-epoch training
    config, the workflow config ``cohort.yaml`` and the predict config ``predict.yaml``."""
    slides = folder / "slides"
    slides.mkdir(parents=True)
    for i in range(3):
        write_slide(slides, i)
    (slides / "s3.tif").write_bytes(b"not a slide")
    save_seeded_checkpoint("test_resnet", folder / "encoder.safetensors", seed=3)
    pd.DataFrame({"slide_id": [s[0] for s in SLIDES], "path": [s[1] for s in SLIDES],
                  "label": [s[2] for s in SLIDES], "patient_id": [f"p{s[0]}" for s in SLIDES],
                  "split": [s[3] for s in SLIDES], "mpp": [s[6] for s in SLIDES]}
                 ).to_csv(folder / "manifest.csv", index=False)
    train = {"task": {"name": "tiny", "classes": ["negative", "positive"]},
             "split": {"method": "column", "column": "split"},
             "model": {"embed_dim": 8, "attn_dim": 8},
             "optim": {"epochs": 2, "batch_size": 2}, "device": "cpu"}
    (folder / "tiny.yaml").write_text(yaml.safe_dump(train))
    (folder / "cohort.yaml").write_text(yaml.safe_dump({
        "manifest": "manifest.csv", "slide_root": "slides", "workspace": "ws",
        "tile": {"mpp": 1.0, "tile_size": 64},
        "extract": {"encoder": "test_resnet", "weights": "encoder.safetensors",
                    "device": "cpu"},
        "train": {"configs": ["tiny.yaml"], "loss_config": None, "losses": ["ncmi"]},
        "eval": {"n_boot": 20, "device": "cpu"}}))
    (folder / "new.csv").write_text("slide_id,path,mpp\nn1,s1.tif,\nn2,scan_2.tif,0.25\n")
    (folder / "predict.yaml").write_text(yaml.safe_dump(
        {"manifest": "new.csv", "workspace": "hospital",
         "predict": {"model": "ws/runs/ncmi", "device": "cpu"}}))


def write_overrides(folder: Path) -> Path:
    """The second profile: the project profile's resources with 1 thread and JOB_MEM_MB per
    job (the node may have 2 CPUs and a few GB), the account, and fast status checks."""
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    overrides = {
        "set-threads": {rule: 1 for rule in profile["set-threads"]},
        "default-resources": {**profile["default-resources"], "mem_mb": JOB_MEM_MB,
                              "slurm_account": ACCOUNT},
        "set-resources": {rule: {**res, "mem_mb": JOB_MEM_MB}
                          for rule, res in profile["set-resources"].items()},
        "seconds-between-status-checks": 1,
        "slurm-init-seconds-before-status-checks": 1,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(overrides))
    return folder


class Controller:
    """``snakemake --profile pipelines/profiles/slurm --profile OVERRIDES …`` in its own process
    group, its output in a file; :meth:`close` ends any still running (SIGINT, as Ctrl-C, makes
    Snakemake scancel its jobs; SIGTERM would wait for them)."""

    def __init__(self, workdir: Path, overrides: Path, env: dict) -> None:
        self.workdir, self.overrides, self.env = workdir, overrides, env
        self.procs: list[subprocess.Popen] = []

    def start(self, step: str, *args: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "snakemake", "-s", str(PIPELINES / "Snakefile"),
               "--profile", str(SLURM_PROFILE), "--profile", str(self.overrides), *args]
        with open(self.workdir / f"{step}.log", "w") as out:
            proc = subprocess.Popen(cmd, cwd=self.workdir, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def finish(self, step: str, proc: subprocess.Popen) -> tuple[int, str]:
        try:
            proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(
                f"{step}: snakemake still running after {RUN_TIMEOUT_S} s") from None
        return proc.returncode, (self.workdir / f"{step}.log").read_text()

    def run(self, step: str, *args: str) -> tuple[int, str]:
        return self.finish(step, self.start(step, *args))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def cancel_when_running(cluster: SlurmCluster, proc: subprocess.Popen, comment: str,
                        log: Path) -> str:
    """scancel the job whose comment is ``comment`` (the plugin's ``rule_<rule>_wildcards_…``)
    as soon as SLURM runs it; its id."""
    while proc.poll() is None:
        for line in cluster.run("squeue", "-h", "-o", "%i|%T|%k").splitlines():
            job_id, state, job_comment = line.split("|", 2)
            if job_comment == comment and state == "RUNNING":
                cluster.run("scancel", job_id)
                return job_id
        time.sleep(0.5)
    raise AssertionError(f"snakemake ended before a job {comment} was seen running:\n"
                         + log.read_text()[-3000:])


def jobs_of_run(cluster: SlurmCluster, output: str) -> list[dict]:
    """The SLURM jobs of one Snakemake run (its run id is every job's name), each with the
    rule and wildcards read from its comment."""
    run_id = re.search(r"SLURM run ID: (\S+)", output)[1]
    rows = [row for row in cluster.sacct(SACCT_FIELDS) if row["JobName"] == run_id]
    for row in rows:
        m = re.fullmatch(r"rule_(.+?)(?:_wildcards_(.*))?", row["Comment"])
        row["rule"], row["wildcards"] = m[1], m[2] or ""
    return rows


def mtimes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


def per_slide_outputs(ws: Path) -> list[Path]:
    return sorted([*(ws / "tiles").glob("*.h5"), *(ws / "features").rglob("*.h5")])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def run_locally(folder: Path) -> list[subprocess.CompletedProcess]:
    """``all``, then ``predict``, with the local profile."""
    return [snakemake(folder, *targets, *LOCAL, timeout=RUN_TIMEOUT_S)
            for targets in (["all", "--configfile", "cohort.yaml"],
                            ["predict", "--configfile", "cohort.yaml", "predict.yaml"])]


@pytest.fixture(scope="module")
def scenario(cluster, tmp_path_factory) -> Scenario:
    folder, local = tmp_path_factory.mktemp("cohort"), tmp_path_factory.mktemp("local")
    write_cohort(folder)
    shutil.copytree(folder, local, dirs_exist_ok=True)
    write_slide(local / "slides", 3)
    controller = Controller(folder, write_overrides(tmp_path_factory.mktemp("overrides")),
                            cluster.env)
    outputs, codes = {}, {}
    # the local run goes on meanwhile, on the cores the SLURM jobs leave idle
    with ThreadPoolExecutor(max_workers=1) as pool:
        local_runs = pool.submit(run_locally, local)
        try:
            proc = controller.start("first", "all", "--configfile", "cohort.yaml",
                                    "--retries", "0")
            cancelled = cancel_when_running(cluster, proc,
                                            f"rule_extract_wildcards_{CANCELLED_SLIDE}",
                                            folder / "first.log")
            codes["first"], outputs["first"] = controller.finish("first", proc)
            after_first = mtimes(per_slide_outputs(folder / "ws"))
            failed_ledger = json.loads(
                (folder / "ws" / "ledger" / "tile" / "s3.json").read_text())

            write_slide(folder / "slides", 3)
            codes["rerun"], outputs["rerun"] = controller.run("rerun", "all", "--configfile",
                                                              "cohort.yaml")
            after_rerun = mtimes(per_slide_outputs(folder / "ws"))
            codes["predict"], outputs["predict"] = controller.run(
                "predict", "predict", "--configfile", "cohort.yaml", "predict.yaml")
        finally:
            controller.close()
        for proc in local_runs.result():
            assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {step: jobs_of_run(cluster, output) for step, output in outputs.items()}
    return Scenario(folder, local, outputs, codes, jobs, cancelled, failed_ledger,
                    after_first, after_rerun)


def seconds(duration: str) -> float:
    """SLURM's ``[D-][HH:]MM:SS[.mmm]`` (time limits, elapsed and CPU times) in seconds."""
    days, _, clock = duration.rpartition("-")
    parts = [float(x) for x in clock.split(":")]
    return int(days or 0) * 86400 + sum(x * 60 ** i for i, x in enumerate(reversed(parts)))


def test_every_job_went_through_sbatch_with_the_profiles_resources(scenario, capsys):
    with capsys.disabled():
        print("\nsacct, per snakemake run:")
        for step, rows in scenario.jobs.items():
            cpu = sum(seconds(row["TotalCPU"]) for row in rows)
            print(f"-- {step} (exit {scenario.returncodes[step]}; jobs' CPU time {cpu:.0f} s)")
            for row in rows:
                print("  " + " | ".join(row[f] for f in SACCT_FIELDS))
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    default, per_rule = profile["default-resources"], profile["set-resources"]
    rules = {row["rule"] for rows in scenario.jobs.values() for row in rows}
    assert rules == {"tile", "extract", "train", "eval", "predict_slide", "predict"}
    for row in (row for rows in scenario.jobs.values() for row in rows):
        wanted = {**default, **per_rule.get(row["rule"], {})}
        assert row["Partition"] == wanted["slurm_partition"], row
        assert seconds(row["Timelimit"]) == 60 * wanted["runtime"], row
        assert row["Account"] == ACCOUNT, row
        gpus = re.search(r"gres/gpu=(\d+)", row["AllocTRES"])
        assert (int(gpus[1]) if gpus else 0) == wanted.get("gpu", 0), row


def test_per_slide_jobs_are_separate_and_a_failed_slide_fails_alone(scenario):
    assert scenario.returncodes["first"] != 0
    jobs = scenario.jobs["first"]
    tiles = {row["wildcards"]: row for row in jobs if row["rule"] == "tile"}
    assert sorted(tiles) == ["s0", "s1", "s2", "s3"]
    assert len({row["JobID"] for row in tiles.values()}) == 4
    assert tiles["s3"]["State"] == "FAILED" and tiles["s3"]["ExitCode"] != "0:0"
    assert all(tiles[s]["State"] == "COMPLETED" for s in ("s0", "s1", "s2"))
    extracts = {row["wildcards"]: row for row in jobs if row["rule"] == "extract"}
    assert sorted(extracts) == ["s0", "s1", "s2"]  # none for s3, whose tiling failed
    assert extracts["s0"]["State"] == extracts["s1"]["State"] == "COMPLETED"
    assert not any(row["rule"] == "train" for row in jobs)  # training waits for every slide
    ledger = scenario.failed_ledger
    assert ledger["status"] == "failed" and "s3.tif" in ledger["reason"]


def test_rerun_after_scancel_redoes_only_that_job(scenario):
    first = {row["JobID"]: row for row in scenario.jobs["first"]}
    cancelled = first[scenario.cancelled]
    assert cancelled["rule"] == "extract" and cancelled["wildcards"] == CANCELLED_SLIDE
    assert cancelled["State"].startswith("CANCELLED")
    assert scenario.returncodes["rerun"] == 0, scenario.outputs["rerun"][-3000:]
    # the cancelled slide's extraction, the repaired slide's tile + extract, then training
    assert job_counts(scenario.outputs["rerun"]) == {"all": 1, "tile": 1, "extract": 2,
                                                     "train": 1, "eval": 1}
    redone = {(row["rule"], row["wildcards"]) for row in scenario.jobs["rerun"]}
    assert redone == {("tile", "s3"), ("extract", "s3"), ("extract", CANCELLED_SLIDE),
                      ("train", "ncmi"), ("eval", "ncmi_test")}
    assert all(row["State"] == "COMPLETED" for row in scenario.jobs["rerun"])
    ws = scenario.folder / "ws"
    done_before = [ws / "tiles" / f"{sid}.h5" for sid in ("s0", "s1", "s2")] + [
        ws / "features" / "test_resnet" / f"{sid}.h5" for sid in ("s0", "s1")]
    assert sorted(scenario.mtimes_after_first) == sorted(done_before)
    assert {p: scenario.mtimes_after_rerun[p] for p in done_before} == \
        scenario.mtimes_after_first
    assert (ws / "features" / "test_resnet" / f"{CANCELLED_SLIDE}.h5").is_file()


def test_predict_target_runs_one_gpu_job_per_slide(scenario):
    assert scenario.returncodes["predict"] == 0, scenario.outputs["predict"][-3000:]
    jobs = scenario.jobs["predict"]
    assert sorted((row["rule"], row["wildcards"]) for row in jobs) == [
        ("predict", ""), ("predict_slide", "n1"), ("predict_slide", "n2")]
    assert all(row["State"] == "COMPLETED" for row in jobs)
    rows = pd.read_csv(scenario.folder / "hospital" / "predict" / "predictions.csv")
    assert list(rows["slide_id"]) == ["n1", "n2"]


def read_h5(path: Path, name: str) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return f[name][:]


def test_outputs_equal_a_local_run(scenario):
    slurm_ws, local_ws = scenario.folder / "ws", scenario.local / "ws"
    for sid in ("s0", "s1", "s2", "s3"):
        tiles = f"tiles/{sid}.h5"
        coords = read_h5(slurm_ws / tiles, "coords")
        assert len(coords) > 0
        np.testing.assert_array_equal(coords, read_h5(local_ws / tiles, "coords"))
        features = f"features/test_resnet/{sid}.h5"
        np.testing.assert_array_equal(read_h5(slurm_ws / features, "features"),
                                      read_h5(local_ws / features, "features"))
    metrics = "runs/ncmi/eval/test/metrics.json"
    assert json.loads((slurm_ws / metrics).read_text()) == json.loads(
        (local_ws / metrics).read_text())
    predictions = "hospital/predict/predictions.csv"
    pd.testing.assert_frame_equal(pd.read_csv(scenario.folder / predictions),
                                  pd.read_csv(scenario.local / predictions))
