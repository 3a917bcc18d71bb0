"""Batch grading on a real one-node Slurm cluster (Debian's slurm-wlm + munge, started by the fixture
as root): one job array for a mixed class, a task cancelled mid-run reported as cancelled, the rerun
resuming it, a bad partition in one line, and a job submitted without waiting merged later."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from helpers import ROOT, STUDENT, SlurmCluster, solution_with

needed = [
    name
    for name in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")
    if not shutil.which(name)
]
needs_slurm = pytest.mark.skipif(
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


@needs_slurm
@pytest.mark.notebook
def test_a_mixed_class_as_one_array_with_a_cancelled_task_then_resumed(cluster, tmp_path):
    submissions, results = tmp_path / "submissions", tmp_path / "results"
    submissions.mkdir()
    sources = {
        "alice": solution_with(quick=True)(tmp_path / "a"),
        "bob": STUDENT,
    }
    # dave is cancelled while it runs, then graded on the rerun: a notebook that only takes its time
    dave = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time\ntime.sleep(12)")])
    for name, source in sources.items():
        (submissions / f"{name}.ipynb").write_bytes(source.read_bytes())
    nbformat.write(dave, submissions / "dave.ipynb")
    (submissions / "carol.ipynb").write_text("this is not a notebook")
    command = [sys.executable, "-m", "grader", "batch", str(submissions), "-o", str(results), "--slurm"]
    command += ["--max-parallel", "2", "--sbatch-arg=--comment=sd-lora-lab-test"]
    batch = subprocess.Popen(
        command, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # dave (task 3, the last): cancel it once it runs, as an administrator would
    deadline = time.monotonic() + 240
    job = None
    while time.monotonic() < deadline and batch.poll() is None:
        job_file = results / "slurm" / "job.json"
        if job is None and job_file.is_file():
            job = json.loads(job_file.read_text()).get("job")
        if job and f"{job}_3 RUNNING" in squeue(cluster):
            time.sleep(1)
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
    assert 'href="alice/feedback.md"' in (results / "report.html").read_text()  # the class report too

    # the rerun resumes: only the cancelled submission goes to Slurm again, and finishes
    again = grader(cluster, "batch", str(submissions), "-o", str(results), "--slurm", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming: 3 of 4 submissions already graded" in again.stderr
    assert "1 tasks" in again.stderr
    book = read_gradebook(results / "gradebook.csv")
    assert book["dave"]["status"] == "failed" and "cancelled" not in book["dave"]["failure"]  # graded: 0/3
    assert not [line for line in squeue(cluster) if line.strip() and "RUNNING" in line]


@needs_slurm
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


@needs_slurm
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


# --- Kubernetes: a manifest (no cluster here: its fields are what is tested) ------------------------


def test_kubernetes_writes_an_indexed_job_with_one_index_per_submission(tmp_path):
    import yaml

    from grader.platforms import array

    course = tmp_path / "course"
    (course / "subs").mkdir(parents=True)
    for name in ("a", "b", "c"):
        (course / "subs" / f"{name}.ipynb").write_text("{}")
    results = course / "results"
    command = ["batch", str(course / "subs"), "-o", str(results), "--kubernetes", "--image", "lab:1"]
    command += ["--max-parallel", "2", "--gpus-per-task", "1", "--cpus-per-task", "4", "--mem", "16"]
    result = subprocess.run(
        [sys.executable, "-m", "grader", *command], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0 and "kubectl apply -f" in result.stdout, result.stderr
    manifest = yaml.safe_load((results / "kubernetes" / "manifest.json").read_text())  # JSON is YAML
    spec = manifest["spec"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 2)
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["restartPolicy"] == "Never" and container["image"] == "lab:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "16384Mi"}
    assert container["volumeMounts"] == [{"name": "course", "mountPath": str(course.resolve())}]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "sd-lora-lab-course"
    assert (
        "$JOB_COMPLETION_INDEX" in container["command"][-1]
        and "grader.platforms.array task" in container["command"][-1]
    )
    job = array.read_job_file(results / "kubernetes")
    assert [s.id for s in array.submissions_of(job)] == ["a", "b", "c"]
    # the task a pod runs, run here for index 1: its submission's report lands in RESULTS/b
    task = subprocess.run(
        [sys.executable, "-m", "grader.platforms.array", "task", str(results / "kubernetes"), "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert task.returncode == 0 and "b: error" in task.stdout, task.stdout + task.stderr
    assert json.loads((results / "b" / "report.json").read_text())["status"] == "error"


def test_kubernetes_refuses_paths_no_shared_folder_holds(tmp_path):
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "a.ipynb").write_text("{}")
    command = ["batch", str(tmp_path / "subs"), "-o", str(tmp_path / "r"), "--kubernetes", "--image", "lab:1"]
    result = subprocess.run(
        [sys.executable, "-m", "grader", *command, "--mount", str(tmp_path / "elsewhere")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "must all be under one shared folder" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "grader", *command[:-2]], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and "--kubernetes needs --image" in result.stderr


@needs_slurm
def test_sigterm_cancels_the_array_and_says_so(cluster, tmp_path):
    (tmp_path / "subs").mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time\ntime.sleep(120)")])
    nbformat.write(nb, tmp_path / "subs" / "slow.ipynb")
    results = tmp_path / "results"
    command = [sys.executable, "-m", "grader", "batch", str(tmp_path / "subs"), "-o", str(results), "--slurm"]
    batch = subprocess.Popen(
        command, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 60
    job = None
    while time.monotonic() < deadline:
        if job is None and (results / "slurm" / "job.json").is_file():
            job = json.loads((results / "slurm" / "job.json").read_text()).get("job")
        if job and f"{job}_0 RUNNING" in squeue(cluster):
            break
        time.sleep(0.3)
    batch.send_signal(signal.SIGTERM)  # the scheduler stopping the login-node job, or `kill`
    output, _ = batch.communicate(timeout=60)
    assert batch.returncode == 130 and f"cancelled Slurm job {job}: run the same command again" in output, (
        output
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        line.startswith(f"{job}_") and ("RUNNING" in line or "PENDING" in line) for line in squeue(cluster)
    ):
        time.sleep(0.3)
    assert not [line for line in squeue(cluster) if line.startswith(f"{job}_") and "RUNNING" in line]


@pytest.mark.parametrize(
    "state, status, words",
    [
        ("TIMEOUT", "timeout", "killed by Slurm at the task's time limit (--time 7 min)"),
        ("NODE_FAIL", "node_failure", "its node failed while it was grading"),
        ("OUT_OF_MEMORY", "error", "out of memory (--mem 4.0 GB)"),
        ("PREEMPTED", "cancelled", "preempted by the scheduler"),
        ("FAILED", "error", "the Slurm task ended (FAILED) without a report: Traceback line"),
    ],
)
def test_a_task_the_scheduler_stopped_becomes_a_report_with_its_cause(tmp_path, state, status, words):
    """On a hand-built job file and scheduler states (the mapping is under test, not Slurm)."""
    from grader.batch import Submission
    from grader.config import GradingConfig
    from grader.platforms import array
    from grader.platforms.slurm import reconcile
    from lab_utils.models import resolve_model

    notebook = tmp_path / "subs" / "erin.ipynb"
    notebook.parent.mkdir()
    notebook.write_text("{}")
    results = tmp_path / "results"
    data = array.job_file([Submission("erin", notebook)], resolve_model("tiny"), GradingConfig(), None)
    array.write_job_file(results / "slurm", data | {"job": "41", "time_min": 7, "mem_gb": 4.0})
    (results / "slurm" / "task-41_0.log").write_text("grading erin\nTraceback line\n")
    assert reconcile(results, {0: state}) == 1
    report = json.loads((results / "erin" / "report.json").read_text())
    assert report["status"] == status and words in report["execution"]["failure"], report
    assert reconcile(results, {0: state}) == 0  # a report is there now: nothing to add


def test_without_sbatch_on_path_it_says_where_to_run(tmp_path):
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "a.ipynb").write_text("{}")
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # python, but no Slurm commands
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grader",
            "batch",
            str(tmp_path / "subs"),
            "-o",
            str(tmp_path / "r"),
            "--slurm",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--slurm needs Slurm's sbatch on PATH" in result.stderr
    assert not (tmp_path / "r" / "slurm").exists()
