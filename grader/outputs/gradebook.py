"""The class gradebook: ``gradebook.csv`` (one row per submission, one column per check) and
``summary.json`` (the most common causes across the class) from every ``RESULTS/*/report.json``.
Columns and causes come from the check declarations (grader/checks); no torch is imported."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from pathlib import Path

from grader.checks import CHECKS, STEP_FAILED
from grader.files import write_json, write_text
from lab_utils.errors import LabError


def read_reports(results: Path) -> list[dict]:
    reports = []
    for path in sorted(results.glob("*/report.json")):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return reports


def _cause_key(text: str) -> str:
    """Group similar free-text reasons: the first clause, digits blanked."""
    first = re.split(r"[:(;]", text, maxsplit=1)[0].strip()
    return re.sub(r"\d+(\.\d+)?", "N", first)


def _cause(check: dict) -> str | None:
    """A failed check's cause as the class summary counts it: the check's declared description of
    its cause, else (reports from before causes were declared) the cause's first clause."""
    cause = check.get("cause")
    if check.get("passed") or not cause or check.get("cause_id") == STEP_FAILED:
        return None
    declared = CHECKS.get(check.get("name", ""))
    description = declared.causes.get(check.get("cause_id") or "") if declared else None
    if description is None and str(cause).startswith("step "):
        return None
    return f"{check['name']}: {description or _cause_key(str(cause))}"


def class_causes(reports: list[dict], top: int = 10) -> list[tuple[str, int]]:
    """The most common failure causes across the class: each check's declared cause, and how the
    execution failed (its first clause, numbers blanked)."""
    causes: Counter[str] = Counter()
    for report in reports:
        for check in report.get("checks", []):
            cause = _cause(check)
            if cause:
                causes[cause] += 1
        failure = (report.get("execution") or {}).get("failure") or ""
        if failure:
            reason = re.sub(r"^step \d+ failed: ", "", failure)
            causes[f"execution: {_cause_key(reason)}"] += 1
    return causes.most_common(top)


def write_gradebook(results: Path) -> dict:
    """Write ``gradebook.csv`` (submission, the student id where the layout gave one, per-check
    scores, total, status, duration, failure) and ``summary.json``; return the summary."""
    if not results.is_dir():
        raise LabError(f"results folder '{results}' does not exist")
    reports = read_reports(results)
    graded = {c.get("name") for r in reports for c in r.get("checks", []) if isinstance(c, dict)}
    columns = [c for c in CHECKS.values() if not c.optional or c.name in graded]  # step 5 when turned on
    students = any(r.get("student") for r in reports)  # a course platform's layout: a student column
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "submission",
            *(["student"] if students else []),
            *(c.gradebook_column for c in columns),
            "total",
            "max_total",
            "status",
            "duration_s",
            "failure",
        ]
    )
    for report in reports:
        scores = {c["name"]: c["points"] for c in report.get("checks", [])}
        status = report.get("status")
        if status == "graded":
            status = "passed" if report.get("passed") else "failed"
        failure = (report.get("execution") or {}).get("failure") or ""
        writer.writerow(
            [
                report.get("submission"),
                *([report.get("student") or ""] if students else []),
                *(scores.get(c.name, 0.0) for c in columns),
                report.get("score", 0.0),
                report.get("max_score", 0.0),
                status,
                report.get("seconds", ""),
                failure,
            ]
        )
    write_text(results / "gradebook.csv", buffer.getvalue())
    summary = {
        "submissions": len(reports),
        "passed": sum(1 for r in reports if r.get("status") == "graded" and r.get("passed")),
        "most_common_causes": [{"cause": cause, "count": n} for cause, n in class_causes(reports)],
    }
    write_json(results / "summary.json", summary)
    return summary
