"""Step 5 (optional): the exported adapter and the held-out evaluation, graded only when a checks
file turns them on — and then recomputed by the grader, never read from the notebook's numbers."""

from __future__ import annotations

import json

import pytest
from helpers import grade_artefacts, lab_artefacts, lab_namespace, solution_with

from grader import GradingConfig, grade_notebook, load_config
from grader.artefacts import read_artefacts
from grader.types import StepFailure
from lab_utils.errors import LabError

STEP5 = """[checks.export_reloads]
points = 1
[checks.held_out_evaluation]
points = 2
visibility = 'hidden'
"""
EXPORT = (
    'kohya_file = export_adapter(unet, "my-lora-kohya.safetensors", "kohya", '
    'trigger="sks", steps=TRAIN_STEPS)'
)


def step5_namespace(pipe, tmp_path) -> dict:
    """The lab's steps 1–4 and step 5's calls (export, evaluate on held-out prompts), in this process."""
    import lab_utils
    from lab_utils.adapters import export_adapter

    namespace = lab_namespace(pipe)
    unet = namespace["unet"]
    namespace["kohya_file"] = export_adapter(
        unet, tmp_path / "my-lora-kohya.safetensors", "kohya", trigger="sks"
    )
    held_out = {
        "held-out + trigger": lab_utils.held_out_prompts(2),
        "held-out, no trigger": lab_utils.held_out_prompts(1, styled=False),
    }
    image, prompt = lab_utils.training_example(lab_utils.native_size(pipe))
    namespace["evaluation"] = lab_utils.evaluate(
        pipe, image, prompt, held_out=held_out, seeds=(0, 1), steps=10
    )
    return namespace


def step5_config(tmp_path):
    path = tmp_path / "step5.toml"
    path.write_text(STEP5)
    return load_config(path)


def test_step5_checks_are_off_by_default_and_a_checks_file_turns_them_on(tmp_path):
    assert set(GradingConfig().checks) == {"parameter_count", "adapter_gradients", "pixel_difference"}
    config = step5_config(tmp_path)
    assert config.checks["export_reloads"].points == 1 and config.checks["export_reloads"].step == 5
    assert config.checks["held_out_evaluation"].visibility == "hidden" and config.max_score == 6
    bad = tmp_path / "bad.toml"
    bad.write_text("[checks.export_reloads]\npoints = 1\nthreshold = 2\n")
    with pytest.raises(LabError, match=r"bad.toml: \[checks.export_reloads\]: unknown key 'threshold'"):
        load_config(bad)


@pytest.mark.notebook
def test_the_solution_earns_step5_and_the_grader_recomputes_it(tmp_path):
    report = grade_notebook(solution_with(quick=True)(tmp_path), config=step5_config(tmp_path))
    checks = {c.name: c for c in report.checks}
    assert all(c.passed for c in checks.values()), [(c.name, c.cause) for c in report.checks]
    assert report.score == report.max_score == 6 and report.execution["steps_completed"] == 5
    export = checks["export_reloads"]
    assert export.step == 5 and export.details["mean_abs_diff_to_adapted"] == {"kohya_file": 0.0}
    held = checks["held_out_evaluation"]
    assert held.value == 6  # (two prompts + one) × two seeds, each regenerated base and adapted
    groups = held.details["groups"]
    assert set(groups) == {"held-out + trigger", "held-out, no trigger"}
    assert all(g["recomputed"] == pytest.approx(g["reported"], abs=1e-6) for g in groups.values())


def test_a_wrong_alpha_and_a_forged_evaluation_fail_with_their_causes(tmp_path, pipe):
    """Hand-built artefacts: the export rewritten with alpha 8 for an adapter trained with alpha 4 (the
    classic converter trap: scale 2, not 1) and a nicer held-out number than the adapter made."""
    import torch
    from safetensors.torch import load_file, save_file

    namespace = step5_namespace(pipe, tmp_path)
    tensors = load_file(namespace["kohya_file"])
    save_file(
        {k: (torch.tensor(8.0) if k.endswith(".alpha") else v) for k, v in tensors.items()},
        namespace["kohya_file"],
    )
    namespace["evaluation"].groups[2].pixel_change += 3.0
    report, _ = grade_artefacts(lab_artefacts(tmp_path / "artefacts", namespace), step5_config(tmp_path))
    checks = {c.name: c for c in report.checks}
    required = ("parameter_count", "adapter_gradients", "pixel_difference")
    assert all(checks[name].passed for name in required)
    export, held = checks["export_reloads"], checks["held_out_evaluation"]
    assert not export.passed and export.value > 0.5
    assert "kohya_file redraws the adapted image" in export.cause and "alpha" in export.cause
    assert not held.passed
    assert held.cause.startswith("inconsistent: the evaluation's numbers are not this adapter's")
    assert "held-out, no trigger reported" in held.cause and report.score == 3


def test_a_learner_who_skips_step5_keeps_steps_1_to_4(tmp_path, pipe):
    folder = lab_artefacts(tmp_path / "artefacts", lab_namespace(pipe))
    skipped = StepFailure(5, "NotImplementedError: step 5 TODO: export the adapter")
    report, _ = grade_artefacts(folder, step5_config(tmp_path), failure=skipped)
    assert report.execution["failure"].startswith("step 5 failed")
    assert [c.passed for c in report.checks] == [True, True, True, False, False] and report.score == 3
    assert report.checks[3].cause == str(skipped) and report.checks[3].cause_id == "step_failed"


def test_forged_exports_and_evaluation_in_the_manifest_are_refused(tmp_path):
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "ok.safetensors").write_bytes(b"x")
    manifest = {
        "images": {},
        "adapter": None,
        "errors": [],
        "exports": {
            "../escape": "exports/../escape.safetensors",
            "ok": "exports/ok.safetensors",
            "gone": "x",
        },
        "evaluation": "evaluation.json",
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "evaluation.json").write_text("[1, 2]")
    found = read_artefacts(tmp_path)
    assert list(found.exports) == ["ok"] and found.evaluation is None
    assert "exports: a variable name that Python would not accept" in found.errors
    assert "exports: gone's file is missing" in found.errors
    assert "evaluation: evaluation.json is missing or not a JSON object" in found.errors
