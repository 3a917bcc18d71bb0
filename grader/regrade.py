"""Regrade without re-running: recompute every check from the artefacts each grading kept (its
``artefacts/`` folder beside ``results.json``) with a changed checks file — a threshold, points,
visibility, an optional check turned on — then rewrite results, feedback, gradebook and report.

No kernel starts and no learner code runs: this process reads the kept files with the same checks
as a grading (``read_artefacts``) and recomputes on its own base model, loaded once for the class.
Each submission gets its own copy of the base U-Net (a learner's adapter never touches another's
grading); regenerations with the adapter off depend on the base model and the record alone, so
identical records (most of a class: the lab's prompt and seed) are regenerated once.

What needs the notebooks to run again is said, with the submissions it concerns: settings that
shaped the run (timeouts, the kernel's limits), a check of a step the run skipped, a grading that
kept no artefacts (an error, a timeout, or one made before artefacts were kept).
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from grader.artefacts import KEPT, REGENERATED, read_artefacts
from grader.checks.memo import Memo
from grader.config import GradingConfig, load_config
from grader.files import write_json
from grader.types import GradeReport, StepFailure, Timings, submission_key
from lab_utils.errors import LabError
from lab_utils.files import readable_folder, shown
from lab_utils.models import resolve_model


@dataclass
class Regrade:
    """What a regrade did: the submissions regraded, and those that must run again, with why."""

    regraded: list[str] = field(default_factory=list)
    rerun: dict[str, str] = field(default_factory=dict)  # submission → why it needs the notebook run
    seconds: float = 0.0
    reused: int = 0  # images found among those the gradings regenerated (not made again)


def graded_folders(results: Path) -> list[Path]:
    """One grading's results folder, or every submission folder of a batch's results."""
    readable_folder(results, "results folder")
    if (results / "report.json").is_file():
        return [results]
    folders = sorted(p.parent for p in results.glob("*/report.json"))
    if not folders:
        raise LabError(
            f"results folder '{shown(results)}' holds no graded submissions (no report.json): grade them "
            "first with python -m grader NOTEBOOK --results DIR or python -m grader batch"
        )
    return folders


def run_keys(checks: Path | None) -> dict[str, set[str]]:
    """The run settings a checks file sets itself ([timeouts], [limits]): only those can differ from
    the saved run's (which may have come from a batch's --timeout)."""
    if checks is None:
        return {}
    data = tomllib.loads(checks.read_text())
    return {part: set(data[part]) for part in ("timeouts", "limits") if isinstance(data.get(part), dict)}


def rerun_reason(data: dict, config: GradingConfig, explicit: dict[str, set[str]]) -> str | None:
    """Why this saved grading cannot be recomputed from its artefacts, or None."""
    execution = data.get("execution") or {}
    if data.get("status") != "graded":
        return f"its grading ended with status '{data.get('status')}'"
    if "run_settings" not in execution:
        return "it was graded before the grader kept artefacts"
    changed = sorted(
        f"{part}.{key}"
        for part, values in config.run_settings().items()
        for key, value in values.items()
        if key in explicit.get(part, ()) and execution["run_settings"].get(part, {}).get(key) != value
    )
    if changed:
        return f"the checks file changes how the notebook runs ({', '.join(changed)})"
    ran = execution.get("steps_total", 0)
    needed = max((s.step for s in config.checks.values()), default=0)
    if needed > ran and execution.get("steps_in_notebook", 0) > ran:
        return f"a check reads step {needed}, which its run did not execute"
    return None


def regrade(
    results: Path, checks: Path | None = None, model: str | None = None, regenerate: bool = False
) -> Regrade:
    """Recompute every submission's checks in ``results`` with the ``checks`` file (default: the
    seed lab's); rewrite each one's results.json, report.json and feedback, then (for a batch) the
    gradebook and class report. ``model``: the base model, if not the one each grading used.
    The images a grading regenerated are found again where everything that made them is the same
    (grader.checks.memo); ``regenerate``: make every one again."""
    from grader.checks import load_base, verify
    from grader.environment import fingerprint
    from grader.outputs.feedback import write_feedback
    from grader.outputs.gradescope import write_results

    start = time.monotonic()
    config = load_config(checks) if checks is not None else GradingConfig()
    explicit = run_keys(checks)
    done = Regrade()
    folders = graded_folders(results)
    bases: dict[tuple, tuple] = {}  # model key → (pipeline, regenerations), loaded once
    environments: dict[tuple, dict] = {}  # model key → this machine's fingerprint
    for folder in folders:
        data = _saved(folder)
        why = (
            "its report.json is not one the grader wrote"
            if data is None
            else rerun_reason(data, config, explicit)
        )
        if why is None and not (folder / KEPT / "manifest.json").is_file():
            why = "its artefacts folder is missing"
        if why is not None:
            done.rerun[(data or {}).get("submission", folder.name)] = why
            continue
        assert data is not None
        spec = resolve_model(model or data["model"])
        if spec.key not in bases:
            bases[spec.key] = (load_base(spec), {})
            environments[spec.key] = fingerprint(spec)
        memo = Memo(folder / REGENERATED, environments[spec.key], reuse=not regenerate)
        report = _report(data)
        report.score, report.max_score = 0.0, config.max_score
        execution = report.execution
        failure = (
            StepFailure(execution["failure_step"], execution["failure_reason"])
            if execution.get("failure_reason")
            else None
        )
        artefacts = read_artefacts(folder / KEPT)
        timings = Timings()
        began = time.monotonic()
        report.checks = list(
            verify(artefacts, spec, config, failure, timings=timings, shared=bases[spec.key], memo=memo)
        )
        done.reused += memo.reused
        report.score = sum(c.points for c in report.checks)
        report.passed = bool(report.checks) and all(c.passed for c in report.checks)
        report.timings = {**timings.stages, "regrade": round(time.monotonic() - began, 3)}
        notebook = Path(report.notebook)
        if notebook.is_file():  # a later batch with this checks file then skips it (same key)
            report.key = submission_key(notebook.read_bytes(), config, spec.key)
        write_results(report, folder / "results.json")
        write_json(folder / "report.json", report.to_dict())
        if (folder / "feedback.md").is_file():
            write_feedback(report, artefacts, folder)
        done.regraded.append(report.submission)
    if folders != [results]:
        from grader.outputs.gradebook import write_gradebook
        from grader.outputs.report import write_report

        write_gradebook(results)
        write_report(results)
    done.seconds = time.monotonic() - start
    return done


def _saved(folder: Path) -> dict | None:
    """A grading's report.json, if it is a JSON object with what a regrade reads."""
    try:
        data = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return None
    keys = {"submission", "notebook", "model", "key", "status", "max_score", "execution"}
    return data if isinstance(data, dict) and keys <= set(data) else None


def _report(data: dict) -> GradeReport:
    """The saved report without its checks (the regrade recomputes them)."""
    known = {f.name for f in fields(GradeReport)}
    return GradeReport(**{k: v for k, v in data.items() if k in known and k != "checks"})
