"""What the grader prints: the per-check table, and a batch's class summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from grader.types import CheckResult, GradeReport


def print_checks(checks: list[CheckResult], title: str, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=title, title_justify="left")
    for column in ("check", "measured", "expected", "result", "points"):
        table.add_column(column, justify="right" if column in {"measured", "expected", "points"} else "left")
    for check in checks:
        table.add_row(
            check.title + (" (hidden)" if check.visibility == "hidden" else ""),
            check.measured,
            check.expected,
            "[green]PASS[/]" if check.passed else "[red]FAIL[/]",
            f"{check.points:g}/{check.max_points:g}",
        )
    console.print(table)
    for check in checks:
        if not check.passed and check.cause:
            console.print(f"[red]✗ {check.name}[/]: {check.cause}", highlight=False)


def print_report(report: GradeReport, console: Console | None = None) -> None:
    console = console or Console()
    print_checks(report.checks, f"{report.notebook}  (model: {report.model})", console)
    if report.execution.get("failure"):
        console.print(f"[yellow]{report.execution['failure']}[/]", highlight=False)
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    gaps = report.execution.get("isolation_gaps") or []
    if gaps:  # the instructor should know what this machine could not enforce
        console.print(
            f"[dim]sandbox {report.execution.get('sandbox')}: {'; '.join(gaps)}[/]", highlight=False
        )
    verdict = "[green]all checks passed[/]" if report.passed else "[red]some checks failed[/]"
    console.print(f"score {report.score:g}/{report.max_score:g} — {verdict} ({report.seconds:.1f} s)")


def print_timings(report: GradeReport, console: Console | None = None) -> None:
    """Where one grading's seconds went: each stage in the order it ran, its share of the wall time
    (the "of which" line is part of the checks above it), and what no stage accounts for."""
    console = console or Console()
    table = Table(title="timings", title_justify="left", show_edge=False)
    for column, justify in (("stage", "left"), ("seconds", "right"), ("share", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    wall = report.seconds or 1.0
    for stage, seconds in report.timings.items():
        table.add_row(stage, f"{seconds:.2f}", f"{100 * seconds / wall:.0f} %")
    counted = sum(s for name, s in report.timings.items() if not name.startswith("of which"))
    table.add_row("[dim]not in a stage[/]", f"{max(0.0, report.seconds - counted):.2f}", "")
    table.add_row("[bold]wall[/]", f"{report.seconds:.2f}", "100 %")
    console.print(table)


def print_summary(summary: dict, results: Path, console: Console | None = None) -> None:
    console = console or Console()
    console.print(
        f"{summary['submissions']} submissions, {summary['passed']} passed every check · "
        f"{results / 'gradebook.csv'}"
    )
    if summary["most_common_causes"]:
        console.print("most common failure causes:")
        for entry in summary["most_common_causes"][:5]:
            console.print(f"  {entry['count']:>3} × {entry['cause']}", highlight=False)
