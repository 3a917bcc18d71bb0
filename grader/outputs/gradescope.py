"""Gradescope's ``results.json``: the contract autograder platforms read.

Top level: ``score``, ``max_score``, ``execution_time`` (s), ``output``, ``tests[]`` and ``extra_data``
(the environment fingerprint, the execution summary and ``status``: "running" while checks remain,
"graded" when done). Each test: ``name``, ``score``, ``max_score``, ``status`` ("passed" |
"failed"), ``output``, ``visibility`` ("visible" | "hidden"). A hidden check's output is only its
verdict. The JSON Schema is ``grader/outputs/results.schema.json``.
"""

from __future__ import annotations

from pathlib import Path

from grader.files import write_json
from grader.types import CheckResult, GradeReport

SCHEMA = Path(__file__).with_name("results.schema.json")


def check_output(check: CheckResult) -> str:
    """What the learner reads for one check (hidden checks: the verdict only)."""
    verdict = "passed" if check.passed else "failed"
    if check.visibility == "hidden":
        return f"hidden check: {verdict}"
    text = f"measured {check.measured}, expected {check.expected}: {verdict}"
    return f"{text}\n{check.cause}" if check.cause and not check.passed else text


def to_results(report: GradeReport) -> dict:
    failure = report.execution.get("failure")
    lines = [f"score {report.score:g}/{report.max_score:g}"] + ([failure] if failure else [])
    return {
        "score": report.score,
        "max_score": report.max_score,
        "execution_time": report.seconds,
        "output": "\n".join(lines),
        "tests": [
            {
                "name": check.title,
                "number": check.name,
                "score": check.points,
                "max_score": check.max_points,
                "status": "passed" if check.passed else "failed",
                "output": check_output(check),
                "visibility": check.visibility,
            }
            for check in report.checks
        ],
        "extra_data": {
            "status": report.status,
            "submission": report.submission,
            "key": report.key,
            "environment": report.environment,
            "execution": report.execution,
        },
    }


def write_results(report: GradeReport, path: Path) -> None:
    write_json(path, to_results(report))
