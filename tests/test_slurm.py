"""Batch grading on a real one-node Slurm cluster (Debian's slurm-wlm + munge, started by the fixture
as root): one job array for a mixed class, a task cancelled mid-run reported as cancelled, the rerun
resuming it, a bad partition in one line, and a job submitted without waiting merged later."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, STUDENT, SlurmCluster, solution_with

needed = [
    name
    for name in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")
    if not shutil.which(name)
]
pytestmark = pytest.mark.skipif(
    bool(needed) or os.geteuid() != 0,
    reason=f"needs Debian's slurm-wlm and munge ({', '.join(needed)} missing)" if needed else "needs root",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield started
    finally:
        started.stop()


def grader(cluster: SlurmCluster, *args: str, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "grader", *args],
        cwd=ROOT,
        env=cluster.env,
        capture_output=True,
        text=True,
        **kwargs,
    )


def read_gradebook(path: Path) -> dict[str, dict]:
    with path.open() as handle:
        return {row["submission"]: row for row in csv.DictReader(handle)}


def squeue(cluster: SlurmCluster) -> list[str]:
    result = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T"], env=cluster.env, capture_output=True, text=True
    )
    return result.stdout.split("\n")


@pytest.mark.notebook
def test_a_mixed_class_as_one_array_with_a_cancelled_task_then_resumed(cluster, tmp_path):
    submissions, results = tmp_path / "submissions", tmp_path / "results"
    submissions.mkdir()
    sources = {
        "alice": solution_with(quick=True)(tmp_path / "a"),
        "bob": STUDENT,
        "dave": solution_with(after="import torch", cell="import time\ntime.sleep(20)", quick=True)(
            tmp_path / "d"
        ),
    }
    for name, source in sources.items():
        (submissions / f"{name}.ipynb").write_bytes(source.read_bytes())
    (submissions / "carol.ipynb").write_text("this is not a notebook")
    command = [sys.executable, "-m", "grader", "batch", str(submissions), "-o", str(results), "--slurm"]
    command += ["--max-parallel", "2", "--sbatch-arg=--comment=sd-lora-lab-test"]
    batch = subprocess.Popen(
        command, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # dave (task 3, the last) sleeps at step 1: cancel it once it runs, as an administrator would
    deadline = time.monotonic() + 240
    job = None
    while time.monotonic() < deadline and batch.poll() is None:
        job_file = results / "slurm" / "job.json"
        if job is None and job_file.is_file():
            job = json.loads(job_file.read_text()).get("job")
        if job and f"{job}_3 RUNNING" in squeue(cluster):
            time.sleep(2)
            subprocess.run(["scancel", f"{job}_3"], env=cluster.env, check=True)
            break
        time.sleep(0.5)
    output, _ = batch.communicate(timeout=240)
    assert batch.returncode == 0, output
    assert f"submitted Slurm job {job}: 4 tasks" in output
    script = (results / "slurm" / "grade.sbatch").read_text()
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --comment=sd-lora-lab-test" in script
    book = read_gradebook(results / "gradebook.csv")
    assert {name: row["status"] for name, row in book.items()} == {
        "alice": "passed",
        "bob": "failed",
        "carol": "error",
        "dave": "cancelled",
    }
    assert book["alice"]["total"] == "3.0" and "is not a notebook" in book["carol"]["failure"]
    assert "cancelled by the scheduler" in book["dave"]["failure"]
    assert json.loads((results / "summary.json").read_text())["submissions"] == 4

    # the rerun resumes: only the cancelled submission goes to Slurm again, and finishes
    again = grader(cluster, "batch", str(submissions), "-o", str(results), "--slurm", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming: 3 of 4 submissions already graded" in again.stderr
    assert "1 tasks" in again.stderr
    book = read_gradebook(results / "gradebook.csv")
    assert book["dave"]["status"] == "passed" and book["dave"]["total"] == "3.0"
    assert not [line for line in squeue(cluster) if line.strip() and "RUNNING" in line]


def test_a_bad_partition_is_one_line_and_writes_nothing(cluster, tmp_path):
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "a.ipynb").write_text("{}")
    results = tmp_path / "results"
    result = grader(
        cluster, "batch", str(tmp_path / "subs"), "-o", str(results), "--slurm", "--partition", "nope"
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "sbatch refused the job: invalid partition specified: nope" in result.stderr
    assert not (results / "slurm").exists()


def test_no_wait_submits_and_gradebook_merges_later(cluster, tmp_path):
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "erin.ipynb").write_text("not a notebook either")
    results = tmp_path / "results"
    result = grader(
        cluster, "batch", str(tmp_path / "subs"), "-o", str(results), "--slurm", "--no-wait", "--time", "5"
    )
    assert result.returncode == 0 and "not waiting" in result.stderr, result.stderr
    assert "#SBATCH --time=5" in (results / "slurm" / "grade.sbatch").read_text()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (results / "erin" / "report.json").is_file():
        time.sleep(0.5)
    while time.monotonic() < deadline and any(
        "RUNNING" in line or "PENDING" in line for line in squeue(cluster)
    ):
        time.sleep(0.5)
    merged = grader(cluster, "gradebook", str(results))
    assert merged.returncode == 0, merged.stderr
    assert read_gradebook(results / "gradebook.csv")["erin"]["status"] == "error"
