"""The grader end to end: the solution passes, the student notebook and broken variants fail the
right check with the right cause, and bad inputs are one clear line with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader import GradingConfig, grade_notebook

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "notebooks" / "sd_lora_lab_solution.ipynb"
STUDENT = ROOT / "notebooks" / "sd_lora_lab.ipynb"

pytestmark = pytest.mark.notebook


def run_grader(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "grader", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ,
        timeout=600,
    )


def variant(tmp_path: Path, *edits: tuple[str, str], extra_after: str | None = None, extra: str = "") -> Path:
    """The solution notebook with text replacements (each must apply) and optionally a cell added
    after the first cell containing ``extra_after``."""
    nb = nbformat.read(SOLUTION, as_version=4)
    for old, new in edits:
        hits = [c for c in nb.cells if old in c.source]
        assert hits, f"edit target not found: {old!r}"
        for cell in hits:
            cell.source = cell.source.replace(old, new)
    if extra_after is not None:
        index = next(i for i, c in enumerate(nb.cells) if extra_after in c.source)
        cell = nbformat.v4.new_code_cell(extra)
        cell.metadata["lab"] = dict(nb.cells[index].metadata.get("lab", {}))
        nb.cells.insert(index + 1, cell)
    path = tmp_path / "submission.ipynb"
    nbformat.write(nb, path)
    return path


def by_name(report) -> dict:
    return {c.name: c for c in report.checks}


def test_solution_passes_every_check_through_the_cli(tmp_path):
    out = tmp_path / "report.json"
    result = run_grader(str(SOLUTION), "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
    report = json.loads(out.read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == {"parameter_count", "adapter_gradients", "pixel_difference"}
    assert all(c["passed"] for c in checks.values())
    assert checks["parameter_count"]["value"] == 14_080  # rank 4 on to_q/k/v/out of the tiny U-Net
    assert checks["adapter_gradients"]["measured"] == "96/96"
    assert checks["pixel_difference"]["value"] > 0.5
    assert report["score"] == report["max_score"] == 3
    assert report["execution"]["failure"] is None and report["execution"]["steps_completed"] == 4
    assert "Traceback" not in result.stderr


def test_unfilled_student_notebook_fails_each_check_with_its_message(tmp_path):
    out = tmp_path / "report.json"
    result = run_grader(str(STUDENT), "--json", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["execution"]["failure"].startswith(
        "step 1 failed: NotImplementedError: Step 1: TODO: make baseline_image"
    )
    assert report["execution"]["steps_completed"] == 0
    assert [c["passed"] for c in report["checks"]] == [False, False, False]
    # every check belongs to step 2 or later, so each names the step that failed and why
    assert all(c["cause"] == report["execution"]["failure"] for c in report["checks"])
    assert "Traceback" not in result.stdout + result.stderr


def test_learning_rate_zero_fails_gradients_and_pixels(tmp_path):
    path = variant(
        tmp_path, ("TRAIN_STEPS, LEARNING_RATE = 30, 1e-3", "TRAIN_STEPS, LEARNING_RATE = 30, 0.0")
    )
    checks = by_name(grade_notebook(path))
    assert checks["parameter_count"].passed
    assert (
        not checks["adapter_gradients"].passed
        and "lora_B weight is still zero" in checks["adapter_gradients"].cause
    )
    assert checks["adapter_gradients"].measured == "48/96"  # B gets gradients, A cannot while B = 0
    assert not checks["pixel_difference"].passed and checks["pixel_difference"].value == 0.0
    assert "mean_abs_diff = 0.0" in checks["pixel_difference"].cause


def test_adapter_never_attached_fails_the_count(tmp_path):
    path = variant(tmp_path, ("unet = get_peft_model(pipe.unet, lora_config)", "unet = pipe.unet"))
    report = grade_notebook(path)
    checks = by_name(report)
    assert report.execution["failure"].startswith("step 3 failed: ValueError")  # AdamW got no parameters
    assert (
        not checks["parameter_count"].passed
        and "no LoRA adapter was found" in checks["parameter_count"].cause
    )
    assert not checks["adapter_gradients"].passed and not checks["pixel_difference"].passed
    assert checks["adapter_gradients"].cause.startswith("step 3 failed: ValueError")
    assert checks["pixel_difference"].cause == report.execution["failure"]


def test_adapted_image_from_another_seed_fails_the_pixel_check(tmp_path):
    path = variant(
        tmp_path,
        (
            "adapted_image = lab_utils.generate(pipe, PROMPT, seed=SEED,",
            "adapted_image = lab_utils.generate(pipe, PROMPT, seed=SEED + 1,",
        ),
    )
    checks = by_name(grade_notebook(path))
    assert checks["parameter_count"].passed and checks["adapter_gradients"].passed
    assert not checks["pixel_difference"].passed
    assert "seed 0 vs 1" in checks["pixel_difference"].cause


def test_lora_on_the_wrong_modules_fails_the_count_naming_them(tmp_path):
    path = variant(tmp_path, ('TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]', 'TARGETS = ["to_q", "to_v"]'))
    checks = by_name(grade_notebook(path))
    count = checks["parameter_count"]
    assert not count.passed and count.value == 14_080 // 2
    assert "wrong target modules (missing attn1.to_k, attn1.to_out, attn2.to_k, attn2.to_out)" in count.cause


def test_wrong_rank_fails_the_count_naming_the_rank(tmp_path):
    path = variant(tmp_path, ("RANK, ALPHA = 4, 4", "RANK, ALPHA = 8, 8"))
    count = by_name(grade_notebook(path))["parameter_count"]
    assert not count.passed and count.value == 2 * 14_080 and "rank 8 instead of 4" in count.cause


def test_faked_adapted_image_is_reported_inconsistent(tmp_path):
    """lr 0 (nothing learned), then the adapted image replaced by baseline + noise with its record."""
    fake = (
        "import numpy as np\nfrom PIL import Image\n"
        "noise = np.random.default_rng(0).integers(-3, 4, (64, 64, 3))\n"
        "noisy = np.asarray(baseline_image, dtype=np.int16) + noise\n"
        "fake = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))\n"
        "fake.info.update(adapted_image.info)\nadapted_image = fake\n"
        "print(lab_utils.mean_abs_diff(baseline_image, adapted_image))"
    )
    path = variant(
        tmp_path,
        ("TRAIN_STEPS, LEARNING_RATE = 30, 1e-3", "TRAIN_STEPS, LEARNING_RATE = 30, 0.0"),
        extra_after="adapted_image = lab_utils.generate",
        extra=fake,
    )
    pixels = by_name(grade_notebook(path))["pixel_difference"]
    assert not pixels.passed and pixels.cause.startswith(
        "inconsistent: the saved image was not produced by this adapter"
    )
    assert pixels.value == 0.0  # the grader's own regeneration: the adapter changes nothing


def child_processes() -> list[str]:
    """Live (non-zombie) processes whose parent is this test process."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            children.append(stat.parent.name)
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_timeouts_and_a_dead_kernel_keep_the_grader_in_control(tmp_path):
    loop = tmp_path / "loop.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("while True:\n    pass")]), loop)
    report = grade_notebook(loop, config=GradingConfig(cell_timeout=3, total_timeout=60))
    assert "per-cell timeout of 3 s" in report.execution["failure"] and not report.passed
    assert child_processes() == []  # the looping kernel was killed, not left spinning
    report = grade_notebook(loop, config=GradingConfig(cell_timeout=60, total_timeout=3))
    assert "total timeout of 3 s" in report.execution["failure"]
    assert child_processes() == []
    dead = tmp_path / "dead.ipynb"
    nbformat.write(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nos._exit(0)")]), dead
    )
    report = grade_notebook(dead)
    assert "the kernel died" in report.execution["failure"] and report.score == 0


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
