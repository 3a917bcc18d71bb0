"""The class report: one self-contained HTML file an instructor opens without a server —
``python -m grader report RESULTS [-o FILE]``, also written as ``RESULTS/report.html`` at the end of
every batch. A score histogram, the pass rate of each check, the most common causes with their
counts, and a table of every submission (score per check, total, status, duration, cause) that sorts
by any column and filters, with each submission's baseline | adapted | difference thumbnails (embedded)
linking to its feedback. Everything a learner wrote (names, error text) is escaped."""

from __future__ import annotations

import base64
import io
from collections import Counter
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from grader.checks import CHECKS
from grader.files import write_text
from grader.outputs.gradebook import class_causes, read_reports
from lab_utils.errors import LabError
from lab_utils.files import shown

THUMBNAIL = 96  # px
IMAGES = ("baseline.png", "adapted.png", "difference.png")

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
.cards{display:flex;gap:16px;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:8px;padding:12px 16px}
.bar{background:#4a7;height:14px;display:inline-block;vertical-align:middle}
.track{background:#eee;width:240px;display:inline-block}
table{border-collapse:collapse;margin-top:8px}
th,td{border-bottom:1px solid #eee;padding:4px 8px;text-align:left;vertical-align:middle}
th{cursor:pointer;user-select:none;background:#f6f6f6}
th.sorted-asc::after{content:" ▲"}th.sorted-desc::after{content:" ▼"}
td.num{text-align:right}td.images{white-space:nowrap}
img{border:1px solid #ccc;margin-right:2px;image-rendering:pixelated}
.passed{color:#176}.failed{color:#a30}.error,.timeout,.cancelled{color:#777}input{padding:4px 8px;width:320px}
"""

SCRIPT = """
const table = document.getElementById('submissions');
const body = table.tBodies[0];
table.querySelectorAll('th').forEach((th, column) => th.addEventListener('click', () => {
  const ascending = !th.classList.contains('sorted-asc');
  table.querySelectorAll('th').forEach(h => h.classList.remove('sorted-asc', 'sorted-desc'));
  th.classList.add(ascending ? 'sorted-asc' : 'sorted-desc');
  const key = row => row.cells[column].dataset.sort ?? row.cells[column].textContent;
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
    const order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
    return ascending ? order : -order;
  });
  rows.forEach(row => body.appendChild(row));
}));
document.getElementById('filter').addEventListener('input', event => {
  const words = event.target.value.toLowerCase();
  Array.from(body.rows).forEach(row => { row.hidden = !row.textContent.toLowerCase().includes(words); });
});
"""


def _thumbnail(path: Path) -> str | None:
    """A small PNG of ``path`` as a data URI (the report carries its images), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _histogram(totals: list[float], maximum: float) -> str:
    """An inline SVG bar chart of the totals: one bar per score (per tenth of the range above 20)."""
    width, height, pad = 420, 160, 24
    step = 1.0 if maximum <= 20 else maximum / 10
    bins = [round(i * step, 2) for i in range(int(maximum / step) + 1)] or [0.0]
    counts = Counter(min(bins, key=lambda b: abs(b - total)) for total in totals)
    top = max(counts.values(), default=1)
    bar = (width - 2 * pad) / len(bins)
    parts = [
        f'<svg id="histogram" width="{width}" height="{height}" role="img" aria-label="score histogram">'
    ]
    for index, value in enumerate(bins):
        h = (height - 2 * pad) * counts.get(value, 0) / top
        x, y = pad + index * bar, height - pad - h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.8:.1f}" height="{h:.1f}" fill="#4a7">'
            f"<title>{value:g}: {counts.get(value, 0)}</title></rect>"
            f'<text x="{x + bar * 0.4:.1f}" y="{height - 8}" font-size="11" text-anchor="middle">'
            f"{value:g}</text>"
        )
        if counts.get(value):
            parts.append(
                f'<text x="{x + bar * 0.4:.1f}" y="{y - 3:.1f}" font-size="11" text-anchor="middle">'
                f"{counts[value]}</text>"
            )
    return "".join(parts) + "</svg>"


def _cause(report: dict) -> str:
    failure = (report.get("execution") or {}).get("failure")
    if failure:
        return str(failure)
    return next(
        (str(c.get("cause")) for c in report.get("checks", []) if not c.get("passed") and c.get("cause")), ""
    )


def render_report(results: Path) -> str:
    reports = read_reports(results)
    graded = {c.get("name") for r in reports for c in r.get("checks", []) if isinstance(c, dict)}
    columns = [c for c in CHECKS.values() if not c.optional or c.name in graded]
    totals = [float(r.get("score") or 0.0) for r in reports]
    maximum = max((float(r.get("max_score") or 0.0) for r in reports), default=0.0)
    passed = sum(1 for r in reports if r.get("status") == "graded" and r.get("passed"))
    students = any(r.get("student") for r in reports)
    rates = []
    for check in columns:
        results_of = [c for r in reports for c in r.get("checks", []) if c.get("name") == check.name]
        share = sum(1 for c in results_of if c.get("passed")) / len(results_of) if results_of else 0.0
        rates.append(
            f'<tr><td>{escape(check.title)}</td><td><span class="track"><span class="bar" '
            f'style="width:{240 * share:.0f}px"></span></span> {100 * share:.0f}%'
            f" ({sum(1 for c in results_of if c.get('passed'))}/{len(results_of)})</td></tr>"
        )
    causes = "".join(
        f"<tr><td class='num'>{count}</td><td>{escape(cause)}</td></tr>"
        for cause, count in class_causes(reports)
    )
    header = ["submission", *(["student"] if students else []), *(c.gradebook_column for c in columns)]
    header += ["total", "status", "duration (s)", "cause", "baseline | adapted | difference"]
    rows = []
    for report in sorted(reports, key=lambda r: str(r.get("submission"))):
        name = str(report.get("submission"))
        scores = {c.get("name"): c.get("points", 0.0) for c in report.get("checks", [])}
        status = report.get("status", "")
        if status == "graded":
            status = "passed" if report.get("passed") else "failed"
        folder = results / name
        thumbs = [(file, _thumbnail(folder / file)) for file in IMAGES]
        images = "".join(
            f'<img src="{uri}" alt="{file[:-4]}" title="{file[:-4]}">' for file, uri in thumbs if uri
        )
        link = f"{escape(name)}/feedback.md" if (folder / "feedback.md").is_file() else None
        anchor = f'<a href="{link}">{images or "feedback"}</a>' if link else images
        cells = [f"<td>{escape(name)}</td>"]
        if students:
            cells.append(f"<td>{escape(str(report.get('student') or ''))}</td>")
        cells += [f"<td class='num'>{float(scores.get(c.name, 0.0)):g}</td>" for c in columns]
        total = float(report.get("score") or 0.0)
        cells += [
            f"<td class='num' data-sort='{total}'>{total:g}/{float(report.get('max_score') or 0):g}</td>",
            f"<td class='{escape(status)}'>{escape(status)}</td>",
            f"<td class='num'>{float(report.get('seconds') or 0):.1f}</td>",
            f"<td>{escape(_cause(report))}</td>",
            f"<td class='images'>{anchor}</td>",
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    mean = sum(totals) / len(totals) if totals else 0.0
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    unsandboxed = sum(1 for r in reports if (r.get("execution") or {}).get("sandbox") == "none")
    warning = (
        f'<p class="failed" id="unsandboxed">{unsandboxed} of {len(reports)} submissions were graded '
        "without a sandbox (--sandbox none): their notebooks ran with the grader's privileges</p>"
        if unsandboxed
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SD LoRA Lab — class report</title>
<style>{STYLE}</style></head><body>
<h1>SD LoRA Lab — class report</h1>
<p>{escape(shown(results))} · generated {generated}</p>
{warning}
<div class="cards">
<div class="card"><b>{len(reports)}</b> submissions</div>
<div class="card"><b>{passed}</b> passed every check</div>
<div class="card">mean score <b>{mean:.2f}</b> / {maximum:g}</div>
</div>
<h2>Scores</h2>
{_histogram(totals, maximum)}
<h2>Pass rate per check</h2>
<table id="rates">{"".join(rates)}</table>
<h2>Most common causes</h2>
<table id="causes"><tr><th>count</th><th>cause</th></tr>{causes or "<tr><td colspan=2>none</td></tr>"}</table>
<h2>Submissions</h2>
<input id="filter" placeholder="filter: a name, a status, words of a cause…">
<table id="submissions"><thead><tr>{"".join(f"<th>{escape(h)}</th>" for h in header)}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<script>{SCRIPT}</script>
</body></html>
"""


def write_report(results: Path, output: Path | None = None) -> Path:
    """Write the class report (default ``RESULTS/report.html``); returns its path."""
    if not results.is_dir():
        raise LabError(f"results folder '{results}' does not exist")
    path = output or results / "report.html"
    write_text(path, render_report(results))
    return path
