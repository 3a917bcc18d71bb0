"""Grade one notebook: execute it, then verify its artefacts in this (trusted) process."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from grader.artefacts import read_artefacts
from grader.checks import CheckResult, verify
from grader.config import GradingConfig
from grader.run import execute_notebook, read_notebook
from lab_utils.models import resolve_model


@dataclass
class GradeReport:
    notebook: str
    model: str
    checks: list[CheckResult]
    score: float
    max_score: float
    passed: bool
    execution: dict
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def grade_notebook(
    notebook: str | Path, model: str = "tiny", config: GradingConfig | None = None
) -> GradeReport:
    """Execute ``notebook`` with ``model`` and run every check.

    Raises:
        LabError: the notebook or the model cannot be used at all (one line saying why).
    """
    config = config or GradingConfig()
    start = time.monotonic()
    path = Path(notebook)
    nb = read_notebook(path)
    resolve_model(model)  # a bad model is the instructor's error, not the learner's: fail before running
    with tempfile.TemporaryDirectory(prefix="sd-lora-lab-artefacts-") as tmp:
        artefact_dir = Path(tmp)
        execution = execute_notebook(
            nb, model, artefact_dir, config.cell_timeout, config.total_timeout, config.startup_timeout
        )
        artefacts = read_artefacts(artefact_dir)
        failure = str(execution.failure) if execution.failure else None
        stopped = None
        if execution.failure is not None:
            step = execution.failure.step
            stopped = (
                f"the notebook stopped at step {step}" if step is not None else "the notebook stopped early"
            )
        verification = verify(artefacts, model, config, stopped)
    checks = verification.checks
    score = sum(c.points for c in checks)
    max_score = sum(c.max_points for c in checks)
    notes = execution.notes + verification.notes + ([failure] if failure else [])
    return GradeReport(
        notebook=str(path),
        model=model,
        checks=checks,
        score=score,
        max_score=max_score,
        passed=all(c.passed for c in checks),
        execution={
            "steps_total": execution.steps_total,
            "steps_completed": execution.steps_completed,
            "failure": failure,
            "cells_run": execution.cells_run,
            "seconds": round(execution.seconds, 2),
            "artefact_errors": artefacts.errors if execution.artefacts_saved else [],
        },
        seconds=round(time.monotonic() - start, 2),
        notes=notes,
    )
