"""Grade a folder of submissions concurrently, resumably, and merge the results into a gradebook.

Each worker slot has a warm grader process (:mod:`grader.worker`) that keeps the grader's imports and
base model loaded and grades one submission after another, each in a sandboxed kernel of its own;
where memory is short, each submission gets a ``python -m grader`` process of its own. Either way a
slow or crashing submission never affects another: a hard timeout kills the process group (the
worker with its kernel; the next submission starts a fresh worker).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from grader.config import GradingConfig
from grader.execute.processes import OVERLAP_MEMORY, memory_limit
from grader.files import write_json
from grader.outputs.gradebook import write_gradebook
from grader.outputs.report import write_report
from grader.types import GradeReport, submission_key
from grader.worker import Worker
from lab_utils.errors import LabError
from lab_utils.files import readable_folder, shown
from lab_utils.models import ModelSpec

GRADE_MARGIN = 300.0  # s beyond the notebook's total timeout for loading models and verifying


class _Children:
    """The grader processes running now, so an interrupted batch can stop them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen] = set()
        self.stopping = False

    def start(self, *args, **kwargs) -> subprocess.Popen | None:
        with self.lock:
            if self.stopping:
                return None
            process = subprocess.Popen(*args, **kwargs, start_new_session=True)
            self.running.add(process)
            return process

    def done(self, process: subprocess.Popen) -> None:
        with self.lock:
            self.running.discard(process)

    def stop_all(self) -> None:
        with self.lock:
            self.stopping = True
            for process in self.running:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@dataclass(frozen=True)
class Submission:
    id: str  # folder name under RESULTS/
    path: Path
    student: str | None = None  # the student id, where the layout names one (nbgrader's exchange)


def find_submissions(folder: Path) -> list[Submission]:
    """Every ``*.ipynb`` under ``folder`` (checkpoints skipped), with a results-folder id per file.

    Symbolic links to folders are not followed (a loop cannot trap the walk) and folders that cannot
    be read are passed over; an entry named ``*.ipynb`` that is not a readable notebook — a folder,
    a broken link, an empty file — is still a submission: its grading fails with the line that
    says why, so the student is not silently left out.
    """
    readable_folder(folder, "submissions folder")
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d != ".ipynb_checkpoints" and not d.endswith(".ipynb"))
        entries = sorted(files + [d for d in os.listdir(root) if d.endswith(".ipynb") and d not in files])
        for name in entries:
            if not name.endswith(".ipynb"):
                continue
            path = Path(root, name)
            relative = path.relative_to(folder).with_suffix("").as_posix()
            found.append(Submission(re.sub(r"[^\w.-]+", "__", relative), path))
    if not found:
        raise LabError(f"submissions folder '{shown(folder)}' has no .ipynb files")
    # names that differ only in characters a folder name cannot keep ("a b", "a?b", undecodable
    # bytes) would share a results folder: each of those gets a digest of its own path
    counts = Counter(s.id for s in found)
    found = [
        replace(s, id=f"{s.id}-{hashlib.sha256(os.fsencode(s.path)).hexdigest()[:8]}")
        if counts[s.id] > 1
        else s
        for s in found
    ]
    return sorted(found, key=lambda s: s.id)


def key_of(submission: Submission, config: GradingConfig, model: ModelSpec) -> str:
    try:
        content = submission.path.read_bytes()
    except OSError as error:  # not a readable file: its grading says so; the key still changes with it
        content = f"unreadable: {error.strerror}".encode()
    return submission_key(content, config, model.key)


def already_graded(submission: Submission, results: Path, config: GradingConfig, model: ModelSpec) -> bool:
    """A finished report whose key (notebook content + checks + model) matches: skip it on resume."""
    try:
        report = json.loads((results / submission.id / "report.json").read_text())
    except (OSError, ValueError):
        return False
    key = key_of(submission, config, model)
    return report.get("status") in {"graded", "error", "timeout"} and report.get("key") == key


def _grade_one(
    submission: Submission,
    results: Path,
    model: ModelSpec,
    checks: Path | None,
    config: GradingConfig,
    gpu: str | None,
    threads_per_worker: int,
    children: _Children,
    worker: Worker | None = None,
) -> str:
    """Grade one submission — by a warm ``worker`` when given, else by a ``python -m grader``
    process of its own — and return its verdict (passed, failed, error, timeout, stopped)."""
    out = results / submission.id
    out.mkdir(parents=True, exist_ok=True)
    limit = config.timeouts.total + GRADE_MARGIN
    start = time.monotonic()
    if worker is not None:
        job = {"notebook": str(submission.path), "results": str(out), "submission": submission.id}
        code = worker.grade({**job, "student": submission.student}, limit)
    else:
        command = _grader_command(model, checks, config) + [str(submission.path), "--results", str(out)]
        command += ["--submission", submission.id]
        if submission.student is not None:
            command += ["--student", submission.student]
        code = _run_alone(command, _environment(gpu, threads_per_worker), out, limit, children)
    if code == "stopped" or children.stopping:
        return "stopped"  # killed by the interrupt: no report, so a resumed batch grades it again
    if code == "timeout":
        _failed_report(out, submission, config, model, "timeout", "the grader ran past its time limit", start)
        return "timeout"
    if code in (0, 1) and (out / "report.json").is_file():
        status = json.loads((out / "report.json").read_text()).get("status")
        if status == "graded":
            return "passed" if code == 0 else "failed"
    log = out / "grader.log"
    last = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    reason = last[-1] if last else ("the grader's worker stopped" if code is None else f"exit code {code}")
    _failed_report(out, submission, config, model, "error", reason, start)
    return "error"


def _grader_command(model: ModelSpec, checks: Path | None, config: GradingConfig, *command: str) -> list[str]:
    """``python -m grader [COMMAND]`` with this batch's model, checks and run settings."""
    args = [sys.executable, "-m", "grader", *command, "--model", model.source]
    args += ["--timeout", str(config.timeouts.total), "--cell-timeout", str(config.timeouts.cell)]
    args += ["--sandbox", config.limits.sandbox]
    return args + (["--checks", str(checks)] if checks is not None else [])


def _environment(gpu: str | None, threads_per_worker: int) -> dict[str, str]:
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    else:
        # CPU grading: split the cores between the workers. With every process using all cores,
        # OpenMP threads spin against each other and two workers on 2 cores ran ~10× slower.
        env.setdefault("OMP_NUM_THREADS", str(threads_per_worker))
    return env


def _run_alone(command: list[str], env: dict, out: Path, limit: float, children: _Children) -> int | str:
    """One ``python -m grader`` process, its output in ``grader.log``: its exit code, or "timeout"."""
    with open(out / "grader.log", "wb") as log:
        process = children.start(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if process is None:
            return "stopped"
        try:
            return process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return "timeout"
        finally:
            children.done(process)


def _failed_report(
    out: Path,
    submission: Submission,
    config: GradingConfig,
    model: ModelSpec,
    status: str,
    reason: str,
    start: float,
) -> None:
    """A report for a submission the grader could not finish (its partial results.json is kept)."""
    report = GradeReport(
        submission=submission.id,
        notebook=str(submission.path),
        model=str(model),
        key=key_of(submission, config, model),
        status=status,
        max_score=config.max_score,
        execution={"failure": reason},
        seconds=round(time.monotonic() - start, 3),  # a warm worker turns a corrupt notebook away in ms
        student=submission.student,
    )
    write_json(out / "report.json", report.to_dict())


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def run_batch(
    submissions: Path | list[Submission],
    results: Path,
    model: ModelSpec,
    config: GradingConfig,
    checks: Path | None = None,
    workers: int = 1,
    gpus: list[str] | None = None,
    console: Console | None = None,
) -> dict:
    """Grade every submission not already graded; write the gradebook; return the class summary."""
    if workers < 1:
        raise LabError(f"--workers must be ≥ 1 (got {workers})")
    console = console or Console(stderr=True)
    every = submissions if isinstance(submissions, list) else find_submissions(submissions)
    todo = [s for s in every if not already_graded(s, results, config, model)]
    skipped = len(every) - len(todo)
    if skipped:
        console.print(f"resuming: {skipped} of {len(every)} submissions already graded")
    children = _Children()
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(workers):
        slots.put(slot)

    threads = max(1, (os.cpu_count() or 1) // workers)

    def gpu_of(slot: int) -> str | None:  # a worker slot picks its GPU: each card runs len/gpus kernels
        return gpus[slot % len(gpus)] if gpus else None

    # a warm worker per slot keeps the grader's base model loaded beside its kernel's. Each
    # submission gets a grader process of its own, as before, where memory is too short for that,
    # and with --sandbox none: a kernel with the instructor's privileges could reach a long-lived
    # worker's memory, and through it the submissions graded after its own
    roomy = memory_limit() >= workers * OVERLAP_MEMORY and config.limits.sandbox != "none"
    warm = {
        slot: Worker(
            _grader_command(model, checks, config, "worker"), _environment(gpu_of(slot), threads), children
        )
        for slot in range(workers)
        if roomy
    }

    def job(submission: Submission) -> str:
        slot = slots.get()
        try:
            worker = warm.get(slot)
            return _grade_one(
                submission, results, model, checks, config, gpu_of(slot), threads, children, worker
            )
        finally:
            slots.put(slot)

    # SIGTERM (a scheduler's stop, `kill`) stops the batch like Ctrl-C: every grader process is
    # killed and no half-graded submission is recorded, so the next run resumes cleanly.
    previous = signal.signal(signal.SIGTERM, _interrupted)
    columns = (
        TextColumn("grading"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
    )
    try:
        with Progress(*columns, TimeRemainingColumn(), console=console) as progress:
            task = progress.add_task("grading", total=len(todo))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(job, s): s for s in todo}
                try:
                    for future in as_completed(futures):
                        progress.console.print(f"{futures[future].id}: {future.result()}")
                        progress.advance(task)
                except KeyboardInterrupt:
                    children.stop_all()
                    pool.shutdown(cancel_futures=True)
                    console.print("batch interrupted: run the same command again to resume")
                    raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for worker in warm.values():
            worker.close()
    summary = write_gradebook(results)
    write_report(results)  # the class report, beside the gradebook
    return summary
