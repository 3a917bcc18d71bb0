"""The grader at course scale: checks files, partial credit, results.json, feedback, batch grading
with resume, the gradebook, the learner's self-check, and the GPU workflow."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from helpers import (
    CHECKS_FILE,
    DIE_AT_3,
    ROOT,
    SOLUTION,
    STUDENT,
    grade_artefacts,
    lab_artefacts,
    lab_namespace,
    run_grader,
    solution_with,
)

from grader import GradingConfig, grade_notebook, load_config
from grader.config import CheckSettings
from grader.outputs.feedback import write_feedback
from grader.outputs.gradescope import SCHEMA, write_results
from lab_utils.errors import LabError
from lab_utils.models import resolve_model

SCHEMA_JSON = json.loads(SCHEMA.read_text())


def batch(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_grader(*args, timeout=1200, **kwargs)


# --- the checks file -------------------------------------------------------------------------------


def test_shipped_checks_file_reproduces_the_seed_lab_defaults():
    assert load_config(CHECKS_FILE) == GradingConfig()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "checks.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[lora]\nrank = 'four'", "[lora].rank must be int (got 'four')"),
        ("[lora]\nrank = 0", "[lora] rank must be ≥ 1"),
        ("[lora]\ntargets = 'mlp'", "[lora] targets 'mlp' is not one of"),
        ("[lora]\nrnak = 4", "[lora]: unknown key 'rnak'"),
        ("[timeouts]\ntotal = -1", "[timeouts] total must be positive"),
        ("[checks.pixel_diff]\npoints = 1", "[checks]: unknown key 'pixel_diff'"),
        ("[checks.pixel_difference]\nvisibility = 'secret'", "visibility must be 'visible' or 'hidden'"),
        ("[checks.parameter_count]\npoints = -2", "points must be ≥ 0"),
        ("[checks.parameter_count]\nmin_mean_abs_diff = 1", "unknown key 'min_mean_abs_diff'"),
        ("[lora\nrank = 4", "is not valid TOML"),
        ("grading = true", "unknown key 'grading'"),
        ("[timeouts]\ncell = inf", "[timeouts].cell must be a finite number"),
        ("[limits]\nsandbox = 'docker'", "[limits] sandbox must be one of auto, bwrap, namespaces, none"),
        ("[limits]\nmemory_gb = 0", "[limits] memory_gb must be positive"),
        ("[limits]\ngpu_memory_fraction = 1.5", "gpu_memory_fraction must be in (0, 1]"),
        ("[limits]\nprocesses = 2.5", "[limits].processes must be int"),
        ("[lora]\nalpha = 0", "[lora] alpha must be positive"),
        ("[lora]\nuse_rslora = 1", "[lora].use_rslora must be bool"),
        (
            "[checks.export_reloads]\nimage_tolerance = -1",
            "[checks.export_reloads] image_tolerance must be ≥ 0",
        ),
    ],
)
def test_invalid_checks_files_are_one_clear_error_naming_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(LabError) as info:
        load_config(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_checks_file_sets_points_visibility_and_thresholds(tmp_path):
    config = load_config(
        write(
            tmp_path,
            "[lora]\nrank = 8\ntargets = ['to_q', 'to_v']\n[checks.pixel_difference]\n"
            "points = 2.5\nvisibility = 'hidden'\nmin_mean_abs_diff = 1.0\n",
        )
    )
    assert config.lora.rank == 8 and config.lora.targets == ("to_q", "to_v")
    assert config.option("pixel_difference", "min_mean_abs_diff") == 1.0
    assert config.checks["pixel_difference"] == CheckSettings(
        points=2.5, step=4, visibility="hidden", options={"min_mean_abs_diff": 1.0, "image_tolerance": 0.5}
    )
    assert config.max_score == 4.5


def test_the_required_lora_config_is_enforced_whole_rslora_too(tmp_path, pipe):
    """Hand-built artefacts: an rsLoRA adapter where the course's checks file asks for plain LoRA."""
    folder = lab_artefacts(tmp_path / "artefacts", lab_namespace(pipe, use_rslora=True))
    report, _ = grade_artefacts(folder, load_config(write(tmp_path, "[lora]\nuse_rslora = false\n")))
    count = report.checks[0]
    assert not count.passed and count.cause_id == "wrong_rslora" and count.measured == "43,008"
    assert count.cause.startswith("use_rslora=True instead of False: the update is scaled by alpha/√rank")
    assert [c.passed for c in report.checks[1:]] == [True, True]
    unset, _ = grade_artefacts(folder)  # the default config does not look at use_rslora
    assert unset.checks[0].passed


def test_grader_cli_rejects_a_bad_checks_file_in_one_line(tmp_path):
    result = batch(str(SOLUTION), "--checks", str(write(tmp_path, "[lora]\nrank = 0")))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "rank must be ≥ 1" in result.stderr


# --- one submission: partial credit, results.json, feedback ---------------------------------------


def test_a_notebook_that_dies_at_step_3_keeps_step_2_credit_and_writes_valid_results(tmp_path):
    path = solution_with(**DIE_AT_3, quick=True)(tmp_path)
    out = tmp_path / "results"
    report = grade_notebook(path, output=out, submission="dies-at-3")
    checks = {c.name: c for c in report.checks}
    assert (
        report.execution["failure"] == "step 3 failed: the kernel died (os._exit, a crash or out of memory)"
    )
    assert report.execution["snapshot"] == "after-step-2" and report.execution["steps_completed"] == 2
    assert checks["parameter_count"].passed and checks["parameter_count"].points == 1
    for name in ("adapter_gradients", "pixel_difference"):
        assert not checks[name].passed and checks[name].cause == report.execution["failure"]
    assert report.score == 1 and report.max_score == 3

    results = json.loads((out / "results.json").read_text())
    jsonschema.validate(results, SCHEMA_JSON)
    assert results["score"] == 1 and results["extra_data"]["status"] == "graded"
    assert [t["status"] for t in results["tests"]] == ["passed", "failed", "failed"]
    assert (
        results["extra_data"]["environment"]["model"] == "tiny"
        and results["extra_data"]["environment"]["hash"]
    )
    feedback = (out / "feedback.md").read_text()
    assert "step 3 failed: the kernel died" in feedback and "**Score: 1 / 3**" in feedback
    assert (out / "baseline.png").is_file() and not (out / "adapted.png").exists()
    assert "### Step 4" in feedback  # the reflections are collected for the instructor


def test_hidden_checks_show_only_pass_or_fail(tmp_path, pipe):
    """On hand-built artefacts (the outputs are what is under test, not the execution)."""
    checks = write(tmp_path, "[checks.pixel_difference]\nvisibility = 'hidden'\npoints = 2\n")
    folder = lab_artefacts(tmp_path / "artefacts", lab_namespace(pipe, adapted_seed=1))
    report, artefacts = grade_artefacts(folder, load_config(checks))
    out = tmp_path / "results"
    out.mkdir()
    write_results(report, out / "results.json")
    write_feedback(report, artefacts, out)
    results = json.loads((out / "results.json").read_text())
    jsonschema.validate(results, SCHEMA_JSON)
    hidden = results["tests"][2]
    assert (
        hidden["visibility"] == "hidden"
        and hidden["output"] == "hidden check: failed"
        and hidden["max_score"] == 2
    )
    feedback = (out / "feedback.md").read_text()
    assert "(hidden) | ❌ fail | — | — |" in feedback and "seed 0 vs 1" not in feedback


def test_results_json_is_written_before_the_checks_run(tmp_path):
    """A grader killed mid-way (a platform time limit) still leaves a valid results.json."""
    out = tmp_path / "results"
    process = subprocess.Popen(
        [sys.executable, "-m", "grader", str(STUDENT), "--results", str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "results.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    results = json.loads((out / "results.json").read_text())
    jsonschema.validate(results, SCHEMA_JSON)
    assert results["extra_data"]["status"] == "running" and results["score"] == 0


# --- batch grading and the gradebook ---------------------------------------------------------------


def make_submissions(folder: Path, tmp_path: Path) -> None:
    def edited(name: str, *edits, **extra) -> Path:  # quicker solutions: the batch is under test
        return solution_with(*edits, **extra, quick=True)(tmp_path / name)

    folder.mkdir()
    sources = {
        "alice": edited("alice"),
        "bob": STUDENT,
        # (a learning rate of 0, a wrong rank, another seed: their verdicts are tested on hand-built
        # artefacts in the catalogue; the batch path is what is here)
        "frank": edited("frank", **DIE_AT_3),
    }
    for name, source in sources.items():
        (folder / f"{name}.ipynb").write_bytes(source.read_bytes())
    (folder / "grace.ipynb").write_text("this is not a notebook")


def read_gradebook(path: Path) -> dict[str, dict]:
    with path.open() as handle:
        return {row["submission"]: row for row in csv.DictReader(handle)}


def test_batch_of_mixed_submissions_with_two_workers_and_resume(tmp_path):
    submissions, results = tmp_path / "submissions", tmp_path / "results"
    make_submissions(submissions, tmp_path)
    result = batch("batch", str(submissions), "-o", str(results), "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    book = read_gradebook(results / "gradebook.csv")
    expected = {  # submission: (parameter_count, adapter_gradients, pixel_difference, status)
        "alice": (1, 1, 1, "passed"),
        "bob": (0, 0, 0, "failed"),
        "frank": (1, 0, 0, "failed"),
        "grace": (0, 0, 0, "error"),
    }
    assert set(book) == set(expected)
    for name, (count, grads, pixels, status) in expected.items():
        row = book[name]
        got = (float(row["parameter_count"]), float(row["adapter_gradients"]), float(row["pixel_difference"]))
        assert got == (count, grads, pixels) and row["status"] == status, (name, row)
        assert float(row["total"]) == count + grads + pixels and float(row["duration_s"]) > 0
    assert "is not a notebook" in book["grace"]["failure"]
    for name in expected:
        if name != "grace":
            jsonschema.validate(json.loads((results / name / "results.json").read_text()), SCHEMA_JSON)
            assert (results / name / "feedback.md").is_file()
    summary = json.loads((results / "summary.json").read_text())
    assert summary["submissions"] == 4 and summary["passed"] == 1
    assert any(c["cause"].startswith("execution: the kernel died") for c in summary["most_common_causes"])
    assert "most common failure causes" in result.stdout
    assert (
        "<h1>SD LoRA Lab — class report</h1>" in (results / "report.html").read_text()
    )  # beside the gradebook

    # a second run grades nothing again; a changed submission is regraded
    again = batch("batch", str(submissions), "-o", str(results), "--workers", "2")
    assert "resuming: 4 of 4 submissions already graded" in again.stderr
    assert read_gradebook(results / "gradebook.csv") == book
    merged = batch("gradebook", str(results))
    assert merged.returncode == 0 and read_gradebook(results / "gradebook.csv") == book


def test_an_interrupted_batch_resumes_without_regrading(tmp_path):
    submissions, results = tmp_path / "submissions", tmp_path / "results"
    submissions.mkdir()
    quick = solution_with(quick=True)(tmp_path / "quick")  # the batch's resume is under test
    for name in ("a1", "a2"):
        (submissions / f"{name}.ipynb").write_bytes(quick.read_bytes())
    process = subprocess.Popen(
        [sys.executable, "-m", "grader", "batch", str(submissions), "-o", str(results)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    graded: list[Path] = []
    while not graded and time.monotonic() < deadline:
        time.sleep(0.5)
        graded = [
            p
            for p in results.glob("*/report.json")
            if json.loads(p.read_text() or "{}").get("status") == "graded"
        ]
    assert graded, "no submission finished within 300 s"
    process.send_signal(signal.SIGTERM)  # a scheduler stopping the job
    assert process.wait(timeout=60) == 130
    first = {p.parent.name: p.stat().st_mtime_ns for p in graded}
    result = batch("batch", str(submissions), "-o", str(results))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming: 1 of 2 submissions already graded" in result.stderr
    assert {name: (results / name / "report.json").stat().st_mtime_ns for name in first} == first
    book = read_gradebook(results / "gradebook.csv")
    assert set(book) == {"a1", "a2"} and all(row["status"] == "passed" for row in book.values())
    pixel = {  # the notebook seeds the LoRA init, so one notebook grades the same every time
        name: {c["name"]: c for c in json.loads((results / name / "report.json").read_text())["checks"]}[
            "pixel_difference"
        ]["value"]
        for name in ("a1", "a2")
    }
    assert abs(pixel["a1"] - pixel["a2"]) < 0.01, pixel  # unseeded, gradings differed by ~1


# --- the learner's self-check ------------------------------------------------------------------------


def test_self_check_agrees_with_the_grader_on_visible_checks(tmp_path, pipe, capsys):
    """grader.check() on a notebook's variables (its own clean `python -m grader verify` process)
    gives the grader's verdicts and messages for the visible checks, and says it ran only those."""
    import grader

    checks = write(tmp_path, "[checks.adapter_gradients]\nvisibility = 'hidden'\n")
    namespace = lab_namespace(pipe, adapted_seed=1)
    report, _ = grade_artefacts(lab_artefacts(tmp_path / "artefacts", namespace), load_config(checks))
    own = grader.check(namespace=namespace, checks=str(checks))
    assert "visible checks only" in capsys.readouterr().out
    rows = [[r["name"], r["passed"], r["measured"], r["cause"]] for r in own]
    graded = [[c.name, c.passed, c.measured, c.cause] for c in report.checks if c.visibility == "visible"]
    assert rows == graded and [name for name, *_ in rows] == ["parameter_count", "pixel_difference"]
    assert rows[1][1] is False and "seed 0 vs 1" in rows[1][3]


# --- CI on a GPU runner ----------------------------------------------------------------------------


def test_gpu_workflow_grades_the_solution_with_the_model_variable():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "gpu-lab.yml").read_text())
    job = workflow["jobs"]["grade-solution"]
    assert "gpu" in job["runs-on"] and job["env"]["SD_LORA_LAB_MODEL"] == "${{ vars.SD15_PATH }}"
    commands = "\n".join(step.get("run", "") for step in job["steps"])
    assert "pip install -e ." in commands
    assert 'python -m grader notebooks/sd_lora_lab_solution.ipynb --model "$SD_LORA_LAB_MODEL"' in commands
    assert any(step.get("uses", "").startswith("actions/upload-artifact") for step in job["steps"])


@pytest.mark.parametrize("warm", [True, False], ids=["warm-workers", "a-process-each"])
def test_batch_spreads_workers_over_gpus_and_splits_cpu_cores(tmp_path, monkeypatch, warm):
    """Which environment each grader process gets (the processes themselves are stubbed out): a warm
    worker per slot where memory allows, else a grader process per submission."""
    from grader import batch as batch_module

    seen: list[dict] = []

    class Finished:  # a grader process that ends at once; as a worker, it answers every job
        pid = 0

        def __init__(self) -> None:
            read, write = os.pipe()
            os.write(write, b'{"code": 1}\n' * 4)
            os.close(write)
            self.stdout = os.fdopen(read, "rb")
            self.stdin = self

        def write(self, data):
            time.sleep(0.2)  # overlap, so both worker slots are in use

        def flush(self):
            pass

        def poll(self):  # still running
            return None

        def close(self):
            pass

        def wait(self, timeout=None):
            time.sleep(0.2)
            return 0

    def start(self, command, **kwargs):
        assert ("worker" in command) == warm
        seen.append(kwargs["env"])
        return Finished()

    monkeypatch.setattr(batch_module._Children, "start", start)
    monkeypatch.setattr(batch_module, "memory_limit", lambda: 2**40 if warm else 2**29)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    submissions = tmp_path / "subs"
    submissions.mkdir()
    for i in range(4):
        (submissions / f"s{i}.ipynb").write_text("{}")
    config = GradingConfig()
    tiny = resolve_model("tiny")
    started = 2 if warm else 4  # a worker per slot, or a process per submission
    batch_module.run_batch(submissions, tmp_path / "gpu", tiny, config, workers=2, gpus=["0", "1"])
    assert len(seen) == started and {env["CUDA_VISIBLE_DEVICES"] for env in seen} == {"0", "1"}
    assert all("OMP_NUM_THREADS" not in env for env in seen)
    seen.clear()
    batch_module.run_batch(submissions, tmp_path / "cpu", tiny, config, workers=2)
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert len(seen) == started and all(env["OMP_NUM_THREADS"] == threads for env in seen)
    assert all(
        "CUDA_VISIBLE_DEVICES" not in env
        or env["CUDA_VISIBLE_DEVICES"] == os.environ.get("CUDA_VISIBLE_DEVICES")
        for env in seen
    )


@pytest.mark.notebook
def test_the_student_notebook_filled_with_diffusers_idioms_finishes_reads_right_and_gets_full_marks(tmp_path):
    """Issue 29: steps 1–4 written as a diffusers user writes them, step 5 left as it is — run top to
    bottom as JupyterLab runs it (the self-check cell too), then graded."""
    import nbformat
    from honest import notebook, student_filled
    from nbclient import NotebookClient

    submission = notebook(source=STUDENT, change=student_filled)(tmp_path)  # the quick settings
    nb = nbformat.read(submission, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert "gradients were cleared by zero_grad after the step" in printed  # not "0/112"
    assert "mean_abs_diff = " in printed and "step 5 (optional): export skipped" in printed
    assert "step 5 (optional): held-out evaluation skipped" in printed
    assert "self-check" in printed and printed.count("PASS") == 3 and "FAIL" not in printed
    assert "to_out.0" in printed  # the per-projection table reflection 2 asks about
    report = grade_notebook(submission, output=tmp_path / "results")
    assert report.passed and report.score == report.max_score, {c.name: c.cause for c in report.checks}
