"""The grader end to end: the solution passes, the student notebook fails each check with its
message, and bad inputs are one clear line with a non-zero exit. Broken and adversarial variants of
the solution are the catalogue in tests/adversarial.py (tests/test_adversarial.py)."""

from __future__ import annotations

import json
import os

import layouts
import pytest
from helpers import SOLUTION, run_grader, solution_with

pytestmark = pytest.mark.notebook


def test_solution_passes_every_check_through_the_cli_on_an_fp16_only_pod_folder(tmp_path):
    """The CLI path (the README's command grades the unchanged solution on the built-in model:
    tests/test_project.py) on a pod folder as ``variant="fp16"`` downloads leave it — only
    ``*.fp16.safetensors`` files: the grader resolves it, the sandboxed kernel loads it again."""
    out = tmp_path / "report.json"
    notebook = solution_with(quick=True)(tmp_path)
    model = layouts.fp16_only(tmp_path / "sd15-fp16")
    (tmp_path / "results" / "regenerated").mkdir(parents=True)
    (tmp_path / "results" / "regenerated" / "0123.png").write_bytes(b"an earlier grading's")
    result = run_grader(
        str(notebook), "--model", str(model), "--json", str(out), "--results", str(tmp_path / "results")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    feedback = (tmp_path / "results" / "feedback.md").read_text()
    assert "## Your adapter file" in feedback and "- findings: none" in feedback
    assert "all checks passed" in result.stdout
    report = json.loads(out.read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == {"parameter_count", "adapter_gradients", "pixel_difference"}
    assert all(c["passed"] for c in checks.values())
    assert checks["parameter_count"]["value"] == 43_008  # rank 4 on to_q/k/v/out of the tiny U-Net
    assert checks["adapter_gradients"]["measured"] == "112/112"
    assert checks["pixel_difference"]["value"] > 0.5
    assert report["score"] == report["max_score"] == 3
    # step 5 is optional and no default check reads it: the grader does not run it
    assert report["execution"]["failure"] is None and report["execution"]["steps_completed"] == 4
    assert "step 5 was not run: none of this course's checks reads it" in report["notes"]
    assert {"kernel start", "step 4", "check pixel_difference"} <= set(report["timings"])
    assert "step 5" not in report["timings"]
    assert report["model"] == str(model) and report["environment"]["kind"] == "folder"
    assert "Traceback" not in result.stderr
    # the instructor raises the bar after grading: recomputed from the kept artefacts, no kernel
    assert (tmp_path / "results" / "artefacts" / "adapter" / "adapter_model.safetensors").is_file()
    strict = tmp_path / "strict.toml"
    strict.write_text("[checks.pixel_difference]\nmin_mean_abs_diff = 250\npoints = 5\n")
    again = run_grader("regrade", str(tmp_path / "results"), "--checks", str(strict))
    assert again.returncode == 0 and "regraded 1 submission(s)" in again.stdout, again.stdout + again.stderr
    regraded = json.loads((tmp_path / "results" / "report.json").read_text())
    pixels = next(c for c in regraded["checks"] if c["name"] == "pixel_difference")
    assert not pixels["passed"] and pixels["expected"] == "> 250" and pixels["max_points"] == 5
    assert pixels["value"] == pytest.approx(checks["pixel_difference"]["value"])  # the same regeneration
    assert regraded["score"] == 2 and regraded["max_score"] == 7
    assert "regrade" in regraded["timings"] and "kernel start" not in regraded["timings"]
    # the grading kept its own three regenerations (the baseline twice, the adapted image), and only
    # those; the regrade, on the same machine with the same adapter, made none of them again
    assert len(list((tmp_path / "results" / "regenerated").glob("*.png"))) == 3
    assert not (tmp_path / "results" / "regenerated" / "0123.png").exists()
    assert "3 image(s) the gradings regenerated were used again" in again.stdout
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["score"] == 2
    assert "**Score: 2 / 7**" in (tmp_path / "results" / "feedback.md").read_text()


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (None, ["--model", "/no/such/sd15"], "error: model '/no/such/sd15' not found"),
        (None, ["--model", "someone/sd15"], "cannot be downloaded offline (HF_HUB_OFFLINE=1)"),
        ("{not json", [], "is not a notebook: Notebook does not appear to be JSON"),
        ('{"cells": 3}', [], "is not a notebook"),
        (None, ["--timeout", "0"], "--timeout must be positive"),
    ],
)
def test_bad_inputs_are_one_line_and_exit_2(tmp_path, make, args, message):
    notebook = SOLUTION
    if make is not None:
        notebook = tmp_path / "broken.ipynb"
        notebook.write_text(make)
    result = run_grader(str(notebook), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_missing_notebook_is_one_line(tmp_path):
    result = run_grader(str(tmp_path / "nope.ipynb"))
    assert (
        result.returncode == 2
        and result.stderr.strip() == f"error: notebook '{tmp_path / 'nope.ipynb'}' does not exist"
    )


def test_with_little_memory_the_grader_loads_its_model_after_the_kernel(tmp_path, monkeypatch):
    """Below 1.5 GB (Gradescope's 0.75 GB machine) the base model is not loaded beside the kernel's:
    no load starts while the kernel runs (it would fail here), the checks load it afterwards."""
    import nbformat

    import grader.grade
    from grader.grade import grade_notebook

    def not_now(model):
        raise AssertionError("the base model was loaded while the kernel ran")

    monkeypatch.setattr(grader.grade, "load_base", not_now)
    monkeypatch.setattr(grader.grade, "memory_limit", lambda: 2**29)
    path = tmp_path / "empty.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), path)
    report = grade_notebook(path, "tiny")
    assert report.status == "graded" and not report.passed  # no adapter: every check fails, none crashes
    assert report.environment["kind"] == "tiny" and "base model load" in report.timings
    monkeypatch.setattr(grader.grade, "memory_limit", lambda: 2**31)  # with room: loaded in the thread
    with pytest.raises(AssertionError, match="loaded while the kernel ran"):
        grade_notebook(path, "tiny")


def test_memory_limit_is_the_control_group_s_cap_where_one_is_set(tmp_path, monkeypatch):
    import grader.execute.processes as processes

    (tmp_path / "grading").mkdir()
    (tmp_path / "grading" / "memory.max").write_text("805306368\n")
    monkeypatch.setattr(processes, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(processes, "own_cgroup_paths", lambda: {"": "/grading"})
    assert processes.memory_limit() == 805306368
    (tmp_path / "grading" / "memory.max").write_text("max\n")  # no cap: the machine's memory
    assert processes.memory_limit() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
