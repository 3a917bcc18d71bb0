"""The terminal table and the JSON file of a grade report."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from grader.grade import GradeReport


def print_report(report: GradeReport, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"{report.notebook}  (model: {report.model})", title_justify="left")
    for column in ("check", "measured", "expected", "result", "points"):
        table.add_column(column, justify="right" if column in {"measured", "expected", "points"} else "left")
    for check in report.checks:
        table.add_row(
            check.title,
            check.measured,
            check.expected,
            "[green]PASS[/]" if check.passed else "[red]FAIL[/]",
            f"{check.points:g}/{check.max_points:g}",
        )
    console.print(table)
    if report.execution.get("failure"):
        console.print(f"[yellow]{report.execution['failure']}[/]")
    for check in report.checks:
        if not check.passed and check.cause:
            console.print(f"[red]✗ {check.name}[/]: {check.cause}", highlight=False)
    verdict = "[green]all checks passed[/]" if report.passed else "[red]some checks failed[/]"
    console.print(f"score {report.score:g}/{report.max_score:g} — {verdict} ({report.seconds:.1f} s)")


def write_json(report: GradeReport, path: Path) -> None:
    """Write the report as JSON, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(report.to_dict(), handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)
