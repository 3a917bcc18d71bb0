"""The feedback report a learner (and their instructor) reads: ``feedback.md`` with images beside it."""

from __future__ import annotations

from pathlib import Path

from grader.artefacts import Artefacts
from grader.files import write_text
from grader.types import GradeReport
from lab_utils.display import difference_heatmap

LATER = {
    "hidden": "hidden",
    "after_due_date": "shown after the due date",
    "after_published": "shown when published",
}


def write_feedback(report: GradeReport, artefacts: Artefacts, output: Path) -> Path:
    """Write ``feedback.md`` and the learner's images (baseline, adapted, difference) into ``output``.

    Visible checks show measured vs expected and, when failed, the cause and fix; every other check
    (hidden, or one Gradescope shows only after the due date or when published) only pass/fail.
    The learner's reflection answers are collected at the end for the instructor.
    """
    lines = [
        f"# Feedback — {report.submission}",
        "",
        f"**Score: {report.score:g} / {report.max_score:g}**"
        f" · model `{report.model}` on {report.environment.get('gpu') or report.environment.get('device')}",
        "",
    ]
    failure = report.execution.get("failure")
    if failure:
        lines += [f"> {failure}", ""]
    lines += ["| check | result | measured | expected | points |", "|---|---|---|---|---|"]
    for check in report.checks:
        verdict = "✅ pass" if check.passed else "❌ fail"
        if check.visibility != "visible":  # hidden, or shown on Gradescope only after a date
            lines.append(
                f"| {check.title} ({LATER.get(check.visibility, 'hidden')}) | {verdict} | — | — "
                f"| {check.points:g}/{check.max_points:g} |"
            )
        else:
            lines.append(
                f"| {check.title} | {verdict} | {check.measured} | {check.expected} "
                f"| {check.points:g}/{check.max_points:g} |"
            )
    fixes = [c for c in report.checks if not c.passed and c.cause and c.visibility == "visible"]
    if fixes:
        lines += ["", "## What to fix", ""] + [f"- **{c.title}**: {c.cause}" for c in fixes]

    images = []
    for name in ("baseline_image", "adapted_image"):
        if name in artefacts.images:
            file = f"{name.removesuffix('_image')}.png"
            artefacts.images[name].save(output / file)
            images.append((name.removesuffix("_image"), file))
    base, adapted = artefacts.images.get("baseline_image"), artefacts.images.get("adapted_image")
    if base is not None and adapted is not None and base.size == adapted.size:
        difference_heatmap(base, adapted).save(output / "difference.png")
        images.append(("difference (yellow = largest change)", "difference.png"))
    if images:
        lines += ["", "## Your images", "", " ".join(f"![{label}]({file})" for label, file in images)]
        lines += ["", " · ".join(label for label, _ in images)]

    if artefacts.adapter_dir is not None:
        lines += ["", "## Your adapter file", ""] + adapter_summary(artefacts.adapter_dir)

    if report.reflections:
        lines += ["", "## Your reflections", ""]
        for answer in report.reflections:
            lines += [f"### Step {answer['step']}", "", answer["text"].strip(), ""]
    path = output / "feedback.md"
    write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def adapter_summary(folder: Path) -> list[str]:
    """What ``lab_utils.adapters.diagnose_adapter`` reads in the saved adapter, as Markdown bullets
    (the file only: the checks above already regenerated the images)."""
    from lab_utils.adapters import diagnose_adapter
    from lab_utils.errors import LabError

    try:
        found = diagnose_adapter(folder)
    except (LabError, OSError, ValueError) as error:
        return [f"- could not be read: {str(error).splitlines()[0] if str(error) else type(error).__name__}"]
    blocks = ", ".join(f"{block} {count}" for block, count in sorted(found.targets_by_block.items()))
    return [
        f"- {found.scheme} adapter: {found.modules} modules, rank {', '.join(map(str, found.ranks))}, "
        f"alpha {', '.join(f'{a:g}' if a is not None else 'none' for a in found.alphas)}, "
        f"scale {', '.join(f'{s:g}' for s in found.scales)}",
        f"- modules by block: {blocks}",
        f"- size of the update (‖ΔW‖ summed over modules): {found.delta_norm:.4g}",
        "- findings: " + ("; ".join(found.findings) if found.findings else "none"),
    ]
