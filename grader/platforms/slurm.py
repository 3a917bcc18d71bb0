"""Batch grading on a Slurm cluster: one job array, one task per submission, each task the same
per-submission grader as local ``batch`` (same results layout, same resume key).

``python -m grader batch SUBS -o RESULTS --slurm [--partition P] [--gpus-per-task N]
[--cpus-per-task N] [--mem G] [--time MIN] [--max-parallel K] [--sbatch-arg ARG ...] [--no-wait]``

- writes ``RESULTS/slurm/grade.sbatch`` (readable: it can be submitted by hand with ``sbatch``) and
  ``RESULTS/slurm/job.json`` (which task grades which submission, with the grading settings);
- submits it with ``sbatch`` and follows the array with a progress bar from ``squeue``'s own state;
- when the array ends, a task the scheduler stopped (cancelled, time limit, node failure, out of
  memory) becomes that submission's report with the cause — never a missing row — and
  ``gradebook.csv`` and ``summary.json`` are written;
- Ctrl-C or SIGTERM cancels the array (``scancel``) and says so; running the same command again
  resumes: graded submissions are skipped, cancelled ones and the rest are submitted again.

Slurm is driven through its own commands (sbatch, squeue, scancel); nothing here schedules.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from grader.batch import Submission, _failed_report, already_graded
from grader.config import GradingConfig
from grader.files import write_json, write_text
from grader.outputs.gradebook import write_gradebook
from grader.outputs.report import write_report
from grader.platforms import array
from grader.platforms.options import TaskOptions
from lab_utils.errors import LabError
from lab_utils.models import ModelSpec

ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING"}
# a task the scheduler ended without a report: (report status, cause). "cancelled" and
# "node_failure" are not final, so a rerun grades those submissions again.
STOPPED = {
    "CANCELLED": ("cancelled", "cancelled by the scheduler (scancel or an administrator) before it finished"),
    "PREEMPTED": ("cancelled", "preempted by the scheduler before it finished"),
    "TIMEOUT": ("timeout", "killed by Slurm at the task's time limit (--time {time} min)"),
    "NODE_FAIL": ("node_failure", "its node failed while it was grading"),
    "BOOT_FAIL": ("node_failure", "its node failed to boot"),
    "OUT_OF_MEMORY": ("error", "killed by Slurm: out of memory (--mem {mem} GB)"),
    "DEADLINE": ("cancelled", "the job reached its deadline before it ran"),
}


def _slurm_folder(results: Path) -> Path:
    return results / "slurm"


def job_script(results: Path, count: int, options: TaskOptions, config: GradingConfig) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# SD LoRA Lab: one array task per submission, written by `python -m grader batch --slurm`.",
        f"# Submit by hand with: sbatch {shlex.quote(str(results / 'slurm' / 'grade.sbatch'))}",
        "#SBATCH --job-name=sd-lora-lab",
        f"#SBATCH --array=0-{count - 1}" + (f"%{options.max_parallel}" if options.max_parallel else ""),
        f"#SBATCH --output={results / 'slurm' / 'task-%A_%a.log'}",
        f"#SBATCH --cpus-per-task={options.cpus_per_task}",
        f"#SBATCH --mem={math.ceil(options.mem_gb * 1024)}M",
        f"#SBATCH --time={options.time_limit(config)}",
    ]
    if options.partition:
        lines.append(f"#SBATCH --partition={options.partition}")
    if options.gpus_per_task:
        lines.append(f"#SBATCH --gpus-per-task={options.gpus_per_task}")
    lines += [f"#SBATCH {arg}" for arg in options.sbatch_args]
    lines += [
        f"export OMP_NUM_THREADS={options.cpus_per_task} MKL_NUM_THREADS={options.cpus_per_task}",
        f"exec {shlex.quote(sys.executable)} -m grader.platforms.array task "
        f'{shlex.quote(str(results / "slurm"))} "$SLURM_ARRAY_TASK_ID"',
    ]
    return "\n".join(lines) + "\n"


def _run(command: list[str]) -> subprocess.CompletedProcess:
    if shutil.which(command[0]) is None:
        raise LabError(f"--slurm needs Slurm's {command[0]} on PATH: run batch on the cluster's login node")
    return subprocess.run(command, capture_output=True, text=True)


def _states(job: str) -> dict[int, str] | None:
    """{array index: state} from squeue (finished tasks stay listed for Slurm's MinJobAge); None
    when squeue itself failed (the controller busy or restarting)."""
    result = _run(["squeue", "-h", "-r", "-j", job, "--states=all", "-o", "%K %T"])
    if result.returncode != 0:
        return None
    states = {}
    for line in result.stdout.splitlines():
        index, _, state = line.strip().partition(" ")
        if index.isdigit():
            states[int(index)] = state.split()[0] if state else "UNKNOWN"
    return states


def submit(script: Path) -> str:
    """``sbatch --parsable``; returns the job id. Raises LabError with sbatch's own reason."""
    result = _run(["sbatch", "--parsable", str(script)])
    if result.returncode != 0:
        lines = [line.removeprefix("sbatch: error: ") for line in result.stderr.strip().splitlines()]
        reason = next(
            (line for line in lines if "submission failed" not in line.lower()), lines[-1] if lines else ""
        )
        raise LabError(f"sbatch refused the job: {reason or f'exit code {result.returncode}'}")
    return result.stdout.strip().split(";")[0]


def run_slurm(
    submissions: list[Submission],
    results: Path,
    model: ModelSpec,
    config: GradingConfig,
    checks: Path | None,
    options: TaskOptions,
    wait: bool = True,
    console=None,
) -> dict | None:
    """Grade ``submissions`` as one job array; return the class summary (None with ``wait=False``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    todo = [s for s in submissions if not already_graded(s, results, config, model)]
    if len(todo) < len(submissions):
        console.print(
            f"resuming: {len(submissions) - len(todo)} of {len(submissions)} submissions already graded"
        )
    if not todo:
        summary = write_gradebook(results)
        write_report(results)
        return summary
    folder = _slurm_folder(results)
    script, manifest = folder / "grade.sbatch", folder / "job.json"
    job_file = array.job_file(
        todo,
        model,
        config,
        checks,
        cpus_per_task=options.cpus_per_task,
        time_min=options.time_limit(config),
        mem_gb=options.mem_gb,
    )
    previous_files = {path: path.read_bytes() for path in (script, manifest) if path.is_file()}
    write_json(manifest, job_file)  # in place before sbatch: a task may start at once and read it
    write_text(script, job_script(results.resolve(), len(todo), options, config))
    try:
        job = submit(script)
    except LabError:  # nothing written half: a refused job leaves the folder as it was
        for path in (script, manifest):
            if path in previous_files:
                write_text(path, previous_files[path].decode())
            else:
                path.unlink(missing_ok=True)
        if not any(folder.iterdir()):
            folder.rmdir()
        raise
    write_json(manifest, job_file | {"job": job})
    console.print(f"submitted Slurm job {job}: {len(todo)} tasks ({script})")
    if not wait:
        console.print(
            f"not waiting: `squeue -j {job}` follows it; then `python -m grader gradebook {results}`"
        )
        return None

    def cancel(signum=None, frame=None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        with Progress(
            TextColumn("grading on Slurm"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("slurm", total=len(todo))
            states: dict[int, str] = {}
            failures = 0
            while True:
                polled = _states(job)
                if polled is None:  # squeue failed: ask again, give up after a minute
                    failures += 1
                    if failures > 60:
                        raise LabError(f"squeue cannot report job {job}: `scancel {job}` or rerun later")
                    time.sleep(1.0)
                    continue
                states, failures = polled, 0
                done = [i for i in range(len(todo)) if states.get(i, "GONE") not in ACTIVE]
                progress.update(bar, completed=len(done))
                if len(done) == len(todo):
                    break
                time.sleep(1.0)
    except KeyboardInterrupt:
        _run(["scancel", job])
        console.print(f"cancelled Slurm job {job}: run the same command again to resume")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    reconcile(results, states)
    summary = write_gradebook(results)
    write_report(results)  # the class report, beside the gradebook
    return summary


def reconcile(results: Path, states: dict[int, str] | None = None) -> int:
    """Give every task of the last array that left no finished report one saying what stopped it.
    Returns how many were written. ``states``: the scheduler's final state per task (else squeue)."""
    job_file = array.read_job_file(_slurm_folder(results))
    if job_file is None:
        return 0
    if states is None:
        if not job_file.get("job") or not shutil.which("squeue"):
            return 0  # not on the cluster: the scheduler cannot say what stopped a task
        polled = _states(job_file["job"])
        if polled is None or any(state in ACTIVE for state in polled.values()):
            return 0  # still running, or the scheduler cannot say: nothing to reconcile yet
        states = polled
    config, model = array.grading(job_file)
    written = 0
    for index, submission in enumerate(array.submissions_of(job_file)):
        out = results / submission.id
        try:
            status = json.loads((out / "report.json").read_text()).get("status")
        except (OSError, ValueError):
            status = None
        if status in ("graded", "error", "timeout", "cancelled", "node_failure"):
            continue
        state = states.get(index, "UNKNOWN")
        status, cause = STOPPED.get(state, ("error", f"the Slurm task ended ({state}) without a report"))
        cause = cause.format(time=job_file.get("time_min"), mem=job_file.get("mem_gb"))
        log = _slurm_folder(results) / f"task-{job_file.get('job')}_{index}.log"
        if state not in STOPPED and log.is_file():
            last = log.read_text(errors="replace").strip().splitlines()
            cause += f": {last[-1]}" if last else ""
        out.mkdir(parents=True, exist_ok=True)
        _failed_report(out, submission, config, model, status, cause, time.monotonic())
        written += 1
    return written
