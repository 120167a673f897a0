"""Running a per-slide stage over its jobs: each slide's outcome in the ledger, a summary.

Shared by every per-slide stage (tile, extract, predict). A bad slide never stops the run:
its one-line reason goes to the ledger and the run goes on. Every input is counted: two files
that claim one id both fail, and a slide whose id is unsafe as a file name fails without a
ledger record (it cannot have a file name) but is listed in the summary.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..errors import InputError
from ..formats.ids import id_problem
from .jobs import SlideJob
from .ledger import Ledger

log = logging.getLogger("wsi_ncmi")


@dataclass
class Failure:
    """One input that failed: its slide id, its file and the one-line reason."""

    slide_id: str
    path: Path
    reason: str


@dataclass
class RunSummary:
    """What one run of a per-slide stage did: slide ids ``done`` now, ``skipped`` (found
    complete) and ``failures`` (one per failed input)."""

    stage: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failed(self) -> dict[str, str]:
        """Failed slide id → reason (an id claimed by several inputs appears once)."""
        return {f.slide_id: f.reason for f in self.failures}

    @property
    def complete(self) -> set[str]:
        """Ids whose outputs exist now: done in this run or found complete."""
        return set(self.done) | set(self.skipped)

    def text(self) -> str:
        n = len(self.done) + len(self.skipped) + len(self.failures)
        lines = [f"{self.stage}: {n} slide(s): {len(self.done)} done, "
                 f"{len(self.skipped)} already complete, {len(self.failures)} failed"]
        lines += [f"  FAILED {f.slide_id!r}: {f.reason}" for f in self.failures]
        return "\n".join(lines)


def run_jobs(
    jobs: Sequence[SlideJob],
    ledger: Ledger,
    process: Callable[[SlideJob], dict],
    is_done: Callable[[SlideJob], bool],
) -> RunSummary:
    """Run ``process`` on every job not already done, recording each outcome.

    ``process`` returns the record fields of a finished slide (``outputs``, counts); it
    raises :class:`InputError` for a bad slide. Any other exception fails that slide with
    its type and message (traceback to the log) and the run goes on.
    """
    summary = RunSummary(ledger.stage)
    with _Progress(len(jobs), ledger.stage) as progress:
        for job in jobs:
            outcome = _run_one(job, ledger, process, is_done, summary)
            progress.step(job.slide_id, outcome)
    ledger.merge()
    return summary


def _run_one(job: SlideJob, ledger: Ledger, process, is_done, summary: RunSummary) -> str:
    if job.problem:
        if id_problem(job.slide_id) is None:
            ledger.write(job.slide_id, {"status": "failed", "reason": job.problem,
                                        "source": job.path.name, "finished": _now()})
        summary.failures.append(Failure(job.slide_id, job.path, job.problem))
        return "failed"
    if is_done(job):
        previous = ledger.get(job.slide_id)
        if not previous or previous.get("status") != "done":
            ledger.write(job.slide_id, {"status": "done", "reason": "found complete outputs",
                                        "source": job.path.name, "finished": _now()})
        summary.skipped.append(job.slide_id)
        return "already complete"
    started, t0 = _now(), time.perf_counter()
    base = {"source": job.path.name, "started": started}
    ledger.write(job.slide_id, {**base, "status": "running"})
    try:
        result = process(job)
    except InputError as exc:
        reason = str(exc)
    except Exception as exc:  # a bad slide must not stop the run
        reason = f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())}"
        log.debug("%s failed:\n%s", job.slide_id, traceback.format_exc())
    else:
        ledger.write(job.slide_id, {**base, "status": "done", "reason": result.pop("note", ""),
                                    "finished": _now(),
                                    "seconds": round(time.perf_counter() - t0, 3), **result})
        summary.done.append(job.slide_id)
        return "done"
    ledger.write(job.slide_id, {**base, "status": "failed", "reason": reason, "finished": _now(),
                                "seconds": round(time.perf_counter() - t0, 3)})
    summary.failures.append(Failure(job.slide_id, job.path, reason))
    return "failed"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Progress:
    """A progress bar on a terminal, one log line per slide otherwise."""

    def __init__(self, total: int, stage: str):
        self.total, self.stage, self.count = total, stage, 0
        self.bar = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=False)

    def __enter__(self):
        if self.bar:
            self.bar.start()
            self.task = self.bar.add_task(self.stage, total=self.total)
        return self

    def step(self, slide_id: str, outcome: str) -> None:
        self.count += 1
        if self.bar:
            self.bar.update(self.task, advance=1, description=f"{self.stage} {slide_id}")
        else:
            log.info("%s %d/%d %s: %s", self.stage, self.count, self.total, slide_id, outcome)

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()
