"""A batch's warm workers: one ``python -m grader worker`` process per worker slot, which grades the
submissions the batch sends it one after another — each in a sandboxed kernel of its own, exactly as
``python -m grader NOTEBOOK`` does — while the grader's imports, its base model, the environment
fingerprint and the images the untouched base made stay loaded from one submission to the next.

No learner code runs in a worker: a submission's code runs in its kernel (a child in the sandbox,
killed with everything it started when its notebook ends); the worker reads its artefacts as files
and verifies on its own copy of the base U-Net. What one submission's grading prints goes to its own
``grader.log``. A worker that dies or runs past the time limit is killed with its kernel, that
submission is recorded as an error or a timeout, and the next one starts a fresh worker.

The batch and its worker speak JSON lines: a job ``{"notebook", "results", "submission", "student"}``
on the worker's stdin, an answer ``{"code": N}`` (``python -m grader``'s exit code) on its stdout.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from lab_utils.errors import LabError

if TYPE_CHECKING:
    from grader.batch import _Children
    from grader.config import GradingConfig
    from lab_utils.models import ModelSpec


def serve(spec: ModelSpec, config: GradingConfig) -> int:
    """The worker's side: grade each job read from stdin; answer each on stdout. Ends at EOF."""
    from grader.grade import Warm

    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a stray print between jobs must not corrupt the answers
    warm = None
    for line in sys.stdin:
        job = json.loads(line)
        results = Path(job["results"])
        with _logged_to(results / "grader.log"):
            if warm is None:  # the first job's kernel runs while it loads, as in one grading
                warm = Warm(spec, keep=True)
            code = _grade(job, spec, config, warm)
        _reap()
        answers.write(json.dumps({"code": code}) + "\n")
    return 0


def _grade(job: dict, spec: ModelSpec, config: GradingConfig, warm) -> int:
    """What ``python -m grader NOTEBOOK --results DIR`` prints and returns for one job."""
    from grader.files import write_json
    from grader.grade import grade_notebook
    from grader.outputs.console import print_report
    from grader.outputs.gradescope import error_results

    results = Path(job["results"])
    try:
        report = grade_notebook(
            job["notebook"],
            spec,
            config,
            output=results,
            submission=job["submission"],
            student=job.get("student"),
            warm=warm,
        )
    except LabError as error:  # a corrupt notebook: the learner still gets a results.json
        write_json(results / "results.json", error_results(str(error), max_score=config.max_score))
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 — a grader bug on one submission: its log has the traceback
        traceback.print_exc()
        return 1
    print_report(report)
    return 0 if report.passed else 1


class _logged_to:
    """This process's stdout and stderr (file descriptors 1 and 2) go to ``path`` for a while."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = os.dup(1), os.dup(2)
        log = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)

    def __exit__(self, *exc) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)


def _reap() -> None:
    """Collect the exit status of the kernel's orphans the sandbox killed (this process is their
    subreaper): over a batch of hundreds they would fill the process table as zombies."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Worker:
    """The batch's side of one worker slot: starts the worker when a job needs one, sends it one
    job at a time and waits at most ``limit`` seconds for the answer."""

    def __init__(self, command: list[str], env: dict[str, str], children: _Children) -> None:
        self.command, self.env, self.children = command, env, children
        self.process: subprocess.Popen | None = None

    def grade(self, job: dict, limit: float) -> int | str | None:
        """The worker's exit code for ``job``; "timeout", "stopped" (the batch is stopping), or None
        (the worker died: its log's last line says why)."""
        if self.process is not None and self.process.poll() is not None:
            self.kill()  # it ended between two jobs (the OOM killer, a signal): this job gets a fresh one
        if self.process is None:
            self.process = self.children.start(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=self.env,
            )
            if self.process is None:
                return "stopped"
        try:
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write((json.dumps(job) + "\n").encode())
            self.process.stdin.flush()
            ready, _, _ = select.select([self.process.stdout], [], [], limit)
            line = self.process.stdout.readline() if ready else None
        except (BrokenPipeError, OSError):
            line = b""
        if line:
            return json.loads(line)["code"]
        self.kill()
        return "timeout" if line is None else None

    def kill(self) -> None:
        """The worker and its kernel, now (bubblewrap's sandbox dies with its parent)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.children.done(self.process)
        self.process = None

    def close(self) -> None:
        """No more jobs: the worker ends at the end of its input (killed if it does not)."""
        if self.process is None:
            return
        try:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()
            return
        self.children.done(self.process)
        self.process = None
