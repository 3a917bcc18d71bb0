"""The class report: one self-contained HTML file, on hand-built results (the report is under test),
rendered in the system Chromium through Playwright as the JupyterLab test does."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import ROOT, run_grader
from PIL import Image

from grader.checks import CHECKS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"


def check(name: str, passed: bool, cause: str | None = None) -> dict:
    return {
        "name": name,
        "title": CHECKS[name].title,
        "passed": passed,
        "points": 1.0 if passed else 0.0,
        "max_points": 1.0,
        "cause": cause,
        "cause_id": None if passed else "x",
    }


def make_results(folder: Path) -> Path:
    """Four graded submissions as `batch` leaves them: report.json, images, feedback.md."""
    people = {
        "alice": ([True, True, True], None, 12.5),
        "bob": ([True, False, False], "step 3 failed: NameError: name 'loss' is not defined", 9.1),
        "carol": ([True, True, False], None, 14.0),
        "<b onclick=alert(1)>x": ([False, False, False], "step 1 failed: <b>not closed", 3.2),
    }
    for index, (name, (passes, failure, seconds)) in enumerate(people.items()):
        out = folder / name
        out.mkdir(parents=True)
        checks = [
            check(n, p, None if p else f"{n} failed: <i>cause</i> {index}")
            for n, p in zip(("parameter_count", "adapter_gradients", "pixel_difference"), passes, strict=True)
        ]
        report = {
            "submission": name,
            "status": "graded",
            "passed": all(passes),
            "score": float(sum(passes)),
            "max_score": 3.0,
            "seconds": seconds,
            "checks": checks,
            "execution": {"failure": failure},
        }
        (out / "report.json").write_text(json.dumps(report))
        (out / "feedback.md").write_text(f"# Feedback — {name}\n")
        for file, colour in (("baseline.png", "red"), ("adapted.png", "blue"), ("difference.png", "yellow")):
            Image.new("RGB", (64, 64), colour).save(out / file)
    return folder


def test_the_report_is_self_contained_and_escapes_what_learners_wrote(tmp_path):
    results = make_results(tmp_path / "results")
    result = run_grader("report", str(results))
    assert result.returncode == 0, result.stderr
    html = (results / "report.html").read_text()
    assert "<b onclick=alert(1)>x" not in html and "&lt;b onclick=alert(1)&gt;x" in html
    assert "<b>not closed" not in html and "<i>cause</i>" not in html
    assert "http://" not in html and "https://" not in html and 'src="data:image/png;base64,' in html
    assert html.count("<img ") == 12 and 'href="alice/feedback.md"' in html
    assert "4</b> submissions" in html and "1</b> passed every check" in html
    assert 'id="unsandboxed"' not in html
    bob = json.loads((results / "bob" / "report.json").read_text())
    bob["execution"]["sandbox"] = "none"
    (results / "bob" / "report.json").write_text(json.dumps(bob))
    assert run_grader("report", str(results)).returncode == 0
    html = (results / "report.html").read_text()
    assert "1 of 4 submissions were graded without a sandbox (--sandbox none)" in html


@pytest.mark.browser
@pytest.mark.skipif(
    not CHROMIUM and not os.environ.get("CI"), reason="no system Chromium (apt-get install chromium)"
)
def test_the_report_renders_sorts_and_filters_in_chromium(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    results = make_results(tmp_path / "results")
    assert run_grader("report", str(results), "-o", str(tmp_path / "class.html")).returncode == 0
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox"], headless=True
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((tmp_path / "class.html").resolve().as_uri())
        assert page.title() == "SD LoRA Lab — class report"
        assert page.locator("#histogram rect").count() == 4  # scores 0, 1, 2, 3
        widths = page.eval_on_selector_all("img", "images => images.map(i => i.naturalWidth)")
        assert len(widths) == 12 and all(w > 0 for w in widths)
        first = lambda: page.locator("#submissions tbody tr").first.locator("td").first.inner_text()  # noqa: E731
        assert first() == "<b onclick=alert(1)>x"  # sorted by name, shown as text
        total = page.locator("#submissions th", has_text="total")
        total.click()  # ascending
        assert first() == "<b onclick=alert(1)>x"
        total.click()  # descending: the full marks first
        assert first() == "alice"
        page.fill("#filter", "NameError")
        visible = page.locator("#submissions tbody tr:visible")
        assert visible.count() == 1 and visible.first.locator("td").first.inner_text() == "bob"
        page.fill("#filter", "")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "class-report.png"), full_page=True)
        browser.close()
