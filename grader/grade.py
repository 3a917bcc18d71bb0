"""Grade one notebook: execute it, then verify its artefacts in this (trusted) process.

With an output folder, the grader writes — each file atomically, results.json after every check so
a grader killed by a time limit still leaves the checks done so far:
``results.json`` (Gradescope's format), ``report.json`` (everything), ``feedback.md`` with
``baseline.png``, ``adapted.png`` and ``difference.png`` beside it.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from grader.artefacts import read_artefacts
from grader.checks import CheckResult, verify
from grader.config import GradingConfig
from grader.environment import fingerprint
from grader.files import write_json
from grader.run import execute_notebook, latest_snapshot, read_notebook
from lab_utils.models import resolve_model


@dataclass
class GradeReport:
    submission: str
    notebook: str
    model: str
    key: str  # content hash of notebook + checks + model: a batch skips a submission graded with the same key
    status: str  # "running" until every check is done, then "graded"
    checks: list[CheckResult]
    score: float
    max_score: float
    passed: bool
    execution: dict
    seconds: float
    environment: dict = field(default_factory=dict)
    reflections: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def submission_key(notebook_bytes: bytes, config: GradingConfig, model: str) -> str:
    digest = hashlib.sha256(notebook_bytes)
    digest.update(repr((config, model)).encode())
    return digest.hexdigest()[:20]


def reflections(nb: nbformat.NotebookNode) -> list[dict]:
    """The learner's written answers: markdown cells the release marked as theirs to write."""
    answers = []
    for index, cell in enumerate(nb.cells):
        lab = cell.get("metadata", {}).get("lab", {})
        if cell.cell_type == "markdown" and lab.get("solution"):
            answers.append({"cell": index, "step": lab.get("step"), "text": cell.source})
    return answers


def grade_notebook(
    notebook: str | Path,
    model: str = "tiny",
    config: GradingConfig | None = None,
    output: Path | None = None,
    submission: str | None = None,
) -> GradeReport:
    """Execute ``notebook`` with ``model`` and run every check; write results into ``output``.

    Raises:
        LabError: the notebook or the model cannot be used at all (one line saying why).
    """
    config = config or GradingConfig()
    start = time.monotonic()
    path = Path(notebook)
    nb = read_notebook(path)
    resolve_model(model)  # a bad model is the instructor's error, not the learner's: fail before running
    report = GradeReport(
        submission=submission or path.stem,
        notebook=str(path),
        model=model,
        key=submission_key(path.read_bytes(), config, model),
        status="running",
        checks=[],
        score=0.0,
        max_score=config.max_score,
        passed=False,
        execution={},
        seconds=0.0,
        environment=fingerprint(model),
        reflections=reflections(nb),
    )
    from grader.results import write_results  # late: results imports this module's types

    def save() -> None:
        report.seconds = round(time.monotonic() - start, 2)
        if output is not None:
            write_results(report, output / "results.json")
            write_json(output / "report.json", report.to_dict())

    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    save()
    with tempfile.TemporaryDirectory(prefix="sd-lora-lab-artefacts-") as tmp:
        artefact_dir = Path(tmp)
        execution = execute_notebook(
            nb,
            model,
            artefact_dir,
            config.cell_timeout,
            config.total_timeout,
            config.startup_timeout,
            sandbox_mode=config.sandbox,
            limits=config.limits,
            output_mb=config.output_mb,
        )
        snapshot = latest_snapshot(artefact_dir)
        artefacts = read_artefacts(snapshot)
        report.execution = {
            "steps_total": execution.steps_total,
            "steps_completed": execution.steps_completed,
            "failure": str(execution.failure) if execution.failure else None,
            "cells_run": execution.cells_run,
            "seconds": round(execution.seconds, 2),
            "snapshot": snapshot.name,
            "artefact_errors": artefacts.errors,
            "sandbox": execution.sandbox,
            "isolation_gaps": execution.isolation,
        }
        report.notes = execution.notes
        save()
        for result in verify(artefacts, model, config, execution.failure):
            report.checks.append(result)
            report.score = sum(c.points for c in report.checks)
            save()
        if output is not None:
            from grader.feedback import write_feedback

            write_feedback(report, artefacts, output)
    report.passed = bool(report.checks) and all(c.passed for c in report.checks)
    report.status = "graded"
    save()
    return report
