"""Gradescope: results.json exactly as gradescope/autograder_samples docs/specs.md defines it, and the
autograder zip the grader builds — its real run_autograder run here in a temporary /autograder root
for every kind of submission a student can make."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import jsonschema
import pytest
from helpers import (
    DIE_AT_3,
    SOLUTION,
    STUDENT,
    grade_artefacts,
    lab_artefacts,
    lab_namespace,
    run_grader,
    solution_with,
)

from grader.config import load_config
from grader.execute.processes import descendants
from grader.outputs.gradescope import SCHEMA, to_results

SCHEMA_JSON = json.loads(SCHEMA.read_text())

# Gradescope's documented example (docs/specs.md, "Output format"), its comments removed
DOCUMENTED = {
    "score": 44.0,
    "execution_time": 136,
    "output": "Text relevant to the entire submission",
    "output_format": "simple_format",
    "test_output_format": "text",
    "test_name_format": "text",
    "visibility": "after_due_date",
    "stdout_visibility": "visible",
    "extra_data": {},
    "tests": [
        {
            "score": 2.0,
            "max_score": 2.0,
            "status": "passed",
            "name": "Your name here",
            "name_format": "text",
            "number": "1.1",
            "output": "Giant multiline string that will be placed in a <pre> tag and collapsed by default",
            "output_format": "text",
            "tags": ["tag1", "tag2", "tag3"],
            "visibility": "visible",
            "extra_data": {},
        }
    ],
    "leaderboard": [
        {"name": "Accuracy", "value": 0.926},
        {"name": "Time", "value": 15.1, "order": "asc"},
        {"name": "Stars", "value": "*****"},
    ],
}
# ... and its status-only example ("Test case status"): informational tests, no top-level score
STATUS_ONLY = {
    "tests": [
        {"name": "Compilation check", "status": "passed"},
        {"name": "Style check", "status": "failed"},
        {"name": "Test 3", "score": 5, "max_score": 10, "status": "passed"},
    ]
}


@pytest.mark.parametrize("example", [DOCUMENTED, STATUS_ONLY], ids=["documented", "status-only"])
def test_the_schema_accepts_gradescopes_own_examples(example):
    jsonschema.validate(example, SCHEMA_JSON)


def _broken(edit) -> dict:
    data = copy.deepcopy(DOCUMENTED)
    edit(data)
    return data


MALFORMED = {
    "a top-level max_score (Gradescope has none)": lambda d: d.update(max_score=44),
    "a test number that is not an ordinal": lambda d: d["tests"][0].update(number="parameter_count"),
    "a numeric test number": lambda d: d["tests"][0].update(number=1.1),
    "an unknown status": lambda d: d["tests"][0].update(status="ok"),
    "an unknown visibility": lambda d: d["tests"][0].update(visibility="public"),
    "an unknown output format": lambda d: d.update(output_format="markdown"),
    "a score as text": lambda d: d.update(score="44"),
    "an unknown per-test key": lambda d: d["tests"][0].update(points=2),
    "no score anywhere": lambda d: (d.pop("score"), d["tests"][0].pop("score")),
    "a leaderboard entry without a value": lambda d: d["leaderboard"][0].pop("value"),
    "tags that are not strings": lambda d: d["tests"][0].update(tags=[1]),
}


@pytest.mark.parametrize("edit", MALFORMED.values(), ids=MALFORMED.keys())
def test_the_schema_rejects_malformed_results(edit):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_broken(edit), SCHEMA_JSON)


def test_results_json_follows_the_spec_with_ordinals_markdown_and_every_visibility(tmp_path, pipe):
    """On hand-built artefacts (the format is under test): a wrong seed fails the pixel check."""
    checks = tmp_path / "checks.toml"
    checks.write_text(
        "[checks.parameter_count]\nvisibility = 'after_published'\n"
        "[checks.pixel_difference]\nvisibility = 'after_due_date'\npoints = 2\n"
        "[checks.adapter_gradients]\nvisibility = 'hidden'\n"
    )
    folder = lab_artefacts(tmp_path / "artefacts", lab_namespace(pipe, adapted_seed=1))
    report, _ = grade_artefacts(folder, load_config(checks))
    results = to_results(report)
    jsonschema.validate(results, SCHEMA_JSON)
    assert "max_score" not in results and results["extra_data"]["max_score"] == 4
    assert results["output_format"] == results["test_output_format"] == "md"
    tests = {t["extra_data"]["check"]: t for t in results["tests"]}
    assert [t["number"] for t in results["tests"]] == ["2.1", "3.1", "4.1"]
    assert [t["visibility"] for t in tests.values()] == ["after_published", "hidden", "after_due_date"]
    assert tests["adapter_gradients"]["output"] == "hidden check: passed"  # hidden: the verdict only
    pixels = tests["pixel_difference"]  # shown later, in full: measured, expected and the cause
    assert pixels["status"] == "failed" and pixels["max_score"] == 2 and pixels["tags"] == ["step 4"]
    assert "**failed**" in pixels["output"] and "seed" in pixels["output"]
    assert pixels["extra_data"]["cause_id"]
    assert results["output"].startswith("**Score: 2 / 4**")


def test_a_bad_visibility_names_gradescopes_values(tmp_path):
    from lab_utils.errors import LabError

    checks = tmp_path / "checks.toml"
    checks.write_text("[checks.pixel_difference]\nvisibility = 'later'\n")
    with pytest.raises(LabError, match="'visible' or 'hidden' or 'after_due_date' or 'after_published'"):
        load_config(checks)


def test_a_corrupt_notebook_still_gets_a_results_json(tmp_path):
    notebook = tmp_path / "broken.ipynb"
    notebook.write_text('{"cells": [')
    result = run_grader(str(notebook), "--results", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    jsonschema.validate(results, SCHEMA_JSON)
    assert results["score"] == 0 and results["extra_data"]["status"] == "error"
    assert "broken.ipynb" in results["output"] and results["extra_data"]["max_score"] == 3


# --- the autograder zip ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def autograder(tmp_path_factory) -> Path:
    """The zip as `python -m grader gradescope` writes it, unpacked as Gradescope's image has it."""
    folder = tmp_path_factory.mktemp("gradescope")
    result = run_grader("gradescope", "-o", str(folder / "autograder.zip"))
    assert result.returncode == 0 and "upload it in Gradescope" in result.stdout, result.stderr
    root = folder / "image"
    with zipfile.ZipFile(folder / "autograder.zip") as archive:
        archive.extractall(root / "source")
        modes = {info.filename: info.external_attr >> 16 for info in archive.infolist()}
    assert modes["run_autograder"] & 0o111 and modes["setup.sh"] & 0o111
    assert not [name for name in modes if "__pycache__" in name or name.endswith(".pyc")]
    shutil.copy(root / "source" / "run_autograder", root / "run_autograder")  # as Gradescope's build does
    return root


def test_the_zip_has_gradescopes_layout_and_a_pinned_offline_setup(autograder):
    source = autograder / "source"
    assert (source / "setup.sh").is_file() and (source / "run_autograder").is_file()  # at the root
    assert (source / "lab_utils" / "tiny" / "model" / "model_index.json").is_file()
    settings = json.loads((source / "settings.json").read_text())
    assert settings["timeout_s"] == 600 and settings["limit_s"] < 600 and settings["notebook_timeout_s"] < 540
    assert settings["model"] == "tiny" and settings["max_score"] == 3
    requirements = (source / "requirements.txt").read_text().split()
    assert not [line for line in requirements if line.startswith("torch==")] and all(
        "==" in line for line in requirements
    )
    assert not [line for line in requirements if line.startswith(("torchvision", "torchaudio"))]
    setup = (source / "setup.sh").read_text()
    assert "download.pytorch.org/whl/cpu" in setup and "bubblewrap" in setup
    assert subprocess.run(["bash", "-n", str(source / "setup.sh")]).returncode == 0
    assert subprocess.run(["bash", "-n", str(autograder / "run_autograder")]).returncode == 0


def test_build_options_are_checked_in_one_line(tmp_path):
    for args, words in [
        (("--timeout", "60"), "--timeout must be between 180 and 2400"),
        (("--model", "org/some-model"), "takes 'tiny'"),
        (("--checks", str(tmp_path / "missing.toml")), "missing.toml"),
    ]:
        result = run_grader("gradescope", "-o", str(tmp_path / "a.zip"), *args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and words in result.stderr, result
    assert not (tmp_path / "a.zip").exists()


def test_the_zip_carries_the_checks_file_and_keeps_grading_inside_gradescopes_timeout(tmp_path):
    from grader.platforms.gradescope import _config

    checks = tmp_path / "course.toml"
    checks.write_text("[timeouts]\ncell = 900\n[checks.pixel_difference]\npoints = 3\n")
    zip_path = tmp_path / "autograder.zip"
    result = run_grader("gradescope", "-o", str(zip_path), "--checks", str(checks), "--timeout", "300")
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp_path / "source")
    settings = json.loads((tmp_path / "source" / "settings.json").read_text())
    config = _config(tmp_path, settings)
    assert config.timeouts.total == settings["notebook_timeout_s"] < settings["limit_s"] < 300
    assert config.timeouts.cell <= config.timeouts.total and config.max_score == 5
    assert config.limits.memory_gb < settings["memory_gb"]  # the kernel stays inside the machine


def run_autograder(root: Path, tmp_path: Path, files: dict[str, bytes], **env) -> tuple[dict, float, str]:
    """A fresh copy of the image with ``files`` as the submission; run its run_autograder."""
    image = tmp_path / "autograder"
    shutil.copytree(root, image, symlinks=True)
    submission = image / "submission"
    submission.mkdir()
    for name, data in files.items():
        (submission / name).parent.mkdir(parents=True, exist_ok=True)
        (submission / name).write_bytes(data)
    (image / "submission_metadata.json").write_text(json.dumps({"id": 123456, "users": []}))
    environment = {
        **os.environ,
        "SD_LORA_LAB_AUTOGRADER_ROOT": str(image),
        "SD_LORA_LAB_PYTHON": sys_python(),
    }
    before = descendants(os.getpid())
    started = time.monotonic()
    process = subprocess.run(
        ["bash", str(image / "run_autograder")], env={**environment, **env}, capture_output=True, text=True
    )
    seconds = time.monotonic() - started
    assert process.returncode == 0, process.stdout + process.stderr
    assert descendants(os.getpid()) - before == set()  # nothing left running
    results = json.loads((image / "results" / "results.json").read_text())
    jsonschema.validate(results, SCHEMA_JSON)
    return results, seconds, process.stdout


def sys_python() -> str:
    import sys

    return sys.executable


def notebook_bytes(build, tmp_path: Path) -> bytes:
    return build(tmp_path / "built").read_bytes()


@pytest.mark.notebook
def test_run_autograder_gives_the_solution_full_marks(autograder, tmp_path):
    results, _, log = run_autograder(
        autograder, tmp_path, {"sd_lora_lab.ipynb": notebook_bytes(solution_with(quick=True), tmp_path)}
    )
    assert f"the grader from {tmp_path / 'autograder' / 'source'}" in log  # the zip's code, not ours
    assert results["score"] == 3 and results["extra_data"]["status"] == "graded"
    assert [t["status"] for t in results["tests"]] == ["passed"] * 3
    assert results["extra_data"]["submission"] == "sd_lora_lab (submission 123456)"
    assert results["extra_data"]["environment"]["model"] == "tiny"


@pytest.mark.notebook
def test_run_autograder_names_the_causes_for_the_unfinished_student_notebook(autograder, tmp_path):
    """The released student notebook, unfilled (also the grader's own path for it: the report's
    execution and every check's cause)."""
    results, _, _ = run_autograder(autograder, tmp_path, {"lab/sd_lora_lab.ipynb": STUDENT.read_bytes()})
    assert results["score"] == 0 and results["extra_data"]["status"] == "graded"
    assert "step 1 failed" in results["output"] and "TODO" in results["output"]
    assert all(t["status"] == "failed" and "step 1 failed" in t["output"] for t in results["tests"])
    execution = results["extra_data"]["execution"]
    assert execution["failure"].startswith(
        "step 1 failed: NotImplementedError: Step 1: TODO: make baseline_image"
    )
    assert execution["steps_completed"] == 0 and len(results["tests"]) == 3
    # every check belongs to step 2 or later, so each names the step that failed and why
    assert all(execution["failure"] in t["output"] for t in results["tests"])
    assert "Traceback" not in results["output"]


@pytest.mark.notebook
def test_run_autograder_keeps_step_2_credit_when_the_kernel_dies(autograder, tmp_path):
    build = solution_with(**DIE_AT_3, quick=True)
    results, _, _ = run_autograder(
        autograder, tmp_path, {"sd_lora_lab.ipynb": notebook_bytes(build, tmp_path)}
    )
    assert results["score"] == 1 and results["extra_data"]["status"] == "graded"
    assert "the kernel died" in results["output"]
    assert [t["status"] for t in results["tests"]] == ["passed", "failed", "failed"]


@pytest.mark.parametrize(
    "files, words",
    [
        ({"sd_lora_lab.ipynb": b'{"cells": ['}, "sd_lora_lab.ipynb' is not a notebook"),
        ({}, "Nothing was submitted"),
        (
            {"answers.py": b"print(1)\n", "notes.txt": b"x"},
            "holds no notebook (found `answers.py`, `notes.txt`)",
        ),
        ({"a.ipynb": SOLUTION.read_bytes(), "b/b.ipynb": SOLUTION.read_bytes()}, "Several notebooks"),
    ],
    ids=["corrupt notebook", "empty submission", "no notebook", "several notebooks"],
)
def test_run_autograder_explains_a_submission_it_cannot_grade(autograder, tmp_path, files, words):
    results, _, _ = run_autograder(autograder, tmp_path, files)
    assert results["score"] == 0 and results["extra_data"]["status"] == "error"
    assert words in results["output"], results["output"]


@pytest.mark.notebook
def test_run_autograder_stopped_by_its_time_limit_still_leaves_results(autograder, tmp_path):
    build = solution_with(after="adapted_image = ", cell="import time\ntime.sleep(600)", quick=True)
    results, seconds, _ = run_autograder(
        autograder,
        tmp_path,
        {"sd_lora_lab.ipynb": notebook_bytes(build, tmp_path)},
        SD_LORA_LAB_AUTOGRADER_LIMIT="15",
    )
    assert results["extra_data"]["status"] == "timeout" and results["score"] == 0
    assert "stopped by its time limit (15 s)" in results["output"]
    assert seconds < 15 + 10 + 20  # the limit, timeout's kill-after, the finish step
