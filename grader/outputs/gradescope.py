"""Gradescope's ``results.json``, exactly as gradescope/autograder_samples ``docs/specs.md`` defines it.

Top level: ``score``, ``execution_time`` (s), ``output`` (markdown: ``output_format: "md"``),
``test_output_format: "md"``, ``tests[]`` and ``extra_data`` — Gradescope stores it, we put the
grading's ``status`` ("running" while checks remain, "graded", "error", "timeout"), its maximum score,
the environment fingerprint and the execution summary there (there is no top-level ``max_score`` in
Gradescope's format). Each test: ``name``, ``number`` (an ordinal, "<step>.<n>": the notebook step
and the check's place in it), ``score``, ``max_score``, ``status``, ``output``, ``tags``,
``visibility`` (visible | hidden | after_due_date | after_published) and ``extra_data`` (the check's
id and cause id). A hidden check's output is only its verdict. The JSON Schema of the format is
``grader/outputs/results.schema.json``.
"""

from __future__ import annotations

from pathlib import Path

from grader.files import write_json
from grader.types import CheckResult, GradeReport

SCHEMA = Path(__file__).with_name("results.schema.json")


def check_output(check: CheckResult) -> str:
    """What the learner reads for one check (hidden checks: the verdict only), as markdown."""
    verdict = "passed" if check.passed else "failed"
    if check.visibility == "hidden":
        return f"hidden check: {verdict}"
    text = f"measured `{check.measured}`, expected `{check.expected}`: **{verdict}**"
    return f"{text}\n\n{check.cause}" if check.cause and not check.passed else text


def ordinals(checks: list[CheckResult]) -> list[str]:
    """Gradescope's test numbers: "<step>.<n>", the n-th check of that notebook step."""
    seen: dict[object, int] = {}
    numbers = []
    for check in checks:
        step = check.step if check.step is not None else 0
        seen[step] = seen.get(step, 0) + 1
        numbers.append(f"{step}.{seen[step]}")
    return numbers


def summary_output(score: float, max_score: float, lines: list[str]) -> str:
    return "\n\n".join([f"**Score: {score:g} / {max_score:g}**", *lines])


def to_results(report: GradeReport) -> dict:
    failure = report.execution.get("failure")
    lines = [f"> {failure}"] if failure else []
    if report.status == "running":
        lines.append("Grading has not finished: the checks below are those done so far.")
    lines += [f"_{note}_" for note in report.notes]
    return {
        "score": report.score,
        "execution_time": report.seconds,
        "output": summary_output(report.score, report.max_score, lines),
        "output_format": "md",
        "test_output_format": "md",
        "tests": [
            {
                "name": check.title,
                "number": number,
                "score": check.points,
                "max_score": check.max_points,
                "status": "passed" if check.passed else "failed",
                "output": check_output(check),
                "tags": [f"step {check.step}"] if check.step is not None else [],
                "visibility": check.visibility,
                "extra_data": {"check": check.name, "cause_id": check.cause_id},
            }
            for number, check in zip(ordinals(report.checks), report.checks, strict=True)
        ],
        "extra_data": {
            "status": report.status,
            "max_score": report.max_score,
            "submission": report.submission,
            "key": report.key,
            "environment": report.environment,
            "execution": report.execution,
        },
    }


def error_results(message: str, status: str = "error", max_score: float = 0.0, seconds: float = 0.0) -> dict:
    """A results.json for a grading that could not run at all (no notebook, a corrupt file, a crash):
    score 0 and the one line that says why — the student always sees something."""
    return {
        "score": 0.0,
        "execution_time": seconds,
        "output": summary_output(0.0, max_score, [message]),
        "output_format": "md",
        "test_output_format": "md",
        "tests": [],
        "extra_data": {"status": status, "max_score": max_score, "error": message},
    }


def write_results(report: GradeReport, path: Path) -> None:
    write_json(path, to_results(report))
