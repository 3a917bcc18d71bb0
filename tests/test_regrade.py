"""`python -m grader regrade`: checks recomputed from the artefacts a grading kept, on hand-built
gradings (the lab's steps in this process, no notebook); the end-to-end path — grade with
--results, then regrade — is in tests/test_grader.py."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import lab_artefacts, lab_namespace

from grader.__main__ import main
from grader.artefacts import KEPT, keep_artefacts
from grader.config import GradingConfig
from grader.regrade import regrade, rerun_reason


def saved_report(submission: str, **execution) -> dict:
    """report.json as a grading writes it, before its checks (regrade recomputes them)."""
    return {
        "submission": submission,
        "notebook": f"/gone/{submission}.ipynb",
        "model": "tiny",
        "key": "old",
        "status": "graded",
        "max_score": 3.0,
        "execution": {
            "steps_total": 4,
            "steps_completed": 4,
            "steps_in_notebook": 5,
            "failure": None,
            "failure_step": None,
            "failure_reason": None,
            "run_settings": GradingConfig().run_settings(),
            **execution,
        },
    }


@pytest.fixture(scope="module")
def lab_folder(tmp_path_factory):
    """One correct lab's artefacts, saved by the grader's own artefact cell."""
    import lab_utils

    pipe = lab_utils.load_pipeline("tiny")
    return lab_artefacts(tmp_path_factory.mktemp("lab"), lab_namespace(pipe))


def test_a_class_regrades_once_per_record_and_rewrites_its_gradebook(tmp_path, lab_folder, monkeypatch):
    import lab_utils.generation

    calls = []
    real = lab_utils.generation.regenerate
    monkeypatch.setattr(lab_utils.generation, "regenerate", lambda *a: calls.append(a) or real(*a))
    for name in ("ada", "bo", "cy"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copytree(lab_folder, folder / KEPT)
        (folder / "report.json").write_text(json.dumps(saved_report(name)))
    checks = tmp_path / "pixels.toml"
    checks.write_text("[checks.pixel_difference]\npoints = 2\n")
    done = regrade(tmp_path, checks)
    assert done.regraded == ["ada", "bo", "cy"] and done.rerun == {}
    # the baseline (twice: the noise floor) on the untouched base once for the class; each adapted image
    assert len(calls) == 2 + 3
    reports = [json.loads((tmp_path / n / "report.json").read_text()) for n in ("ada", "bo", "cy")]
    assert all(r["score"] == r["max_score"] == 4 for r in reports)
    assert [c["value"] for c in reports[0]["checks"]] == [c["value"] for c in reports[2]["checks"]]
    gradebook = (tmp_path / "gradebook.csv").read_text().splitlines()
    assert gradebook[1].startswith("ada,1.0,1.0,2.0,4.0,4.0,passed")
    assert (tmp_path / "report.html").is_file()


def test_images_a_grading_made_are_used_again_only_while_all_that_made_them_is_the_same(
    tmp_path, lab_folder, monkeypatch
):
    from safetensors.torch import load_file, save_file

    import lab_utils.generation

    calls = []
    real = lab_utils.generation.regenerate
    monkeypatch.setattr(lab_utils.generation, "regenerate", lambda *a: calls.append(a) or real(*a))
    for name in ("ada", "bo"):
        (tmp_path / name).mkdir()
        shutil.copytree(lab_folder, tmp_path / name / KEPT)
        (tmp_path / name / "report.json").write_text(json.dumps(saved_report(name)))
    first = regrade(tmp_path)
    assert len(calls) == 2 + 2 and first.reused == 0
    values = [c["value"] for c in json.loads((tmp_path / "bo" / "report.json").read_text())["checks"]]
    calls.clear()
    again = regrade(tmp_path)  # nothing changed: every image is found again, the verdicts the same
    assert calls == [] and again.reused == 2 * 3
    assert [c["value"] for c in json.loads((tmp_path / "bo" / "report.json").read_text())["checks"]] == values
    weights = next((tmp_path / "bo" / KEPT).rglob("adapter_model.safetensors"))
    save_file({k: v * 3 for k, v in load_file(weights).items()}, weights)  # another adapter for bo
    changed = regrade(tmp_path)
    assert len(calls) == 1 and changed.reused == 2 * 3 - 1  # bo's adapted image alone is made again
    bo = json.loads((tmp_path / "bo" / "report.json").read_text())["checks"]
    assert bo[2]["value"] != values[2]
    calls.clear()
    regrade(tmp_path, regenerate=True)
    assert len(calls) == 2 + 2  # --regenerate: every image made again, and kept
    calls.clear()
    assert regrade(tmp_path).reused == 2 * 3 and calls == []


def test_what_needs_the_notebook_run_again_is_named_with_why(tmp_path, capsys):
    strict = GradingConfig.from_tables({"timeouts": {"cell": 30}}, "t")
    step5 = GradingConfig.from_tables({"checks": {"export_reloads": {}}}, "t")
    assert rerun_reason(saved_report("a"), GradingConfig(), {}) is None
    late = saved_report("late") | {"status": "timeout"}
    assert rerun_reason(late, GradingConfig(), {}) == "its grading ended with status 'timeout'"
    legacy = saved_report("a")
    del legacy["execution"]["run_settings"]
    assert rerun_reason(legacy, GradingConfig(), {}) == "it was graded before the grader kept artefacts"
    assert rerun_reason(saved_report("a"), strict, {"timeouts": {"cell"}}) == (
        "the checks file changes how the notebook runs (timeouts.cell)"
    )
    assert rerun_reason(saved_report("a"), strict, {}) is None  # a --timeout the batch was given stays
    assert rerun_reason(saved_report("a"), step5, {}) == "a check reads step 5, which its run did not execute"
    assert rerun_reason(saved_report("a", steps_in_notebook=4), step5, {}) is None  # no step 5 to run

    for name, report in (("late", late), ("lost", saved_report("lost"))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "report.json").write_text('{"submission": "torn", ')
    checks = tmp_path / "slower.toml"
    checks.write_text("[timeouts]\ncell = 30\n")
    assert main(["regrade", str(tmp_path), "--checks", str(checks)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "regraded 0 submission(s)" in out
    assert "needs its notebook run again: late — its grading ended with status 'timeout'" in out
    assert "needs its notebook run again: lost — the checks file changes how the notebook runs" in out
    assert "needs its notebook run again: torn — its report.json is not one the grader wrote" in out
    assert "python -m grader batch SUBMISSIONS -o RESULTS" in out


def test_a_folder_without_gradings_is_one_line(tmp_path, capsys):
    assert main(["regrade", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no graded submissions (no report.json)" in err


def test_kept_artefacts_are_the_grader_s_names_only_never_a_planted_link(tmp_path):
    snapshot = tmp_path / "snapshot"
    (snapshot / "adapter").mkdir(parents=True)
    (snapshot / "manifest.json").write_text("{}")
    (snapshot / "adapter" / "adapter_config.json").write_text("{}")
    (snapshot / "secret.txt").write_text("not the grader's")
    (snapshot / "baseline_image.png").symlink_to("/etc/passwd")
    output = tmp_path / "results"
    output.mkdir()
    (output / KEPT).mkdir()
    (output / KEPT / "stale.png").write_text("from an earlier grading")
    kept = keep_artefacts(snapshot, output)
    assert sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*")) == [
        "adapter",
        "adapter/adapter_config.json",
        "manifest.json",
    ]
    assert [p.name for p in output.iterdir()] == [KEPT]  # no staging folder left behind
