"""The learner's JupyterLab in a real browser: Debian's Chromium driven headless by Playwright
(the system browser — never a download) against a JupyterLab on 127.0.0.1 with a token."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "sd-lora-lab-browser-test"
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
IDLE = f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']"

pytestmark = pytest.mark.browser

if not CHROMIUM:
    if os.environ.get("CI"):
        raise RuntimeError(
            "the browser test needs Debian's chromium: .ci/run installs it (apt-get install chromium)"
        )
    pytest.skip("no system Chromium (apt-get install chromium)", allow_module_level=True)

playwright_api = pytest.importorskip("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a copy of the notebooks (autosave must not touch the committed ones)."""
    root = tmp_path_factory.mktemp("lab-root")
    for name in ("sd_lora_lab.ipynb", "sd_lora_lab_solution.ipynb"):
        shutil.copy(ROOT / "notebooks" / name, root / name)
    config = tmp_path_factory.mktemp("jupyter-config")
    # render every cell (JupyterLab 4 detaches cells scrolled out of view by default)
    settings = config / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(config / "runtime")}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter",
            "labextension",
            "disable",
            "--level=user",
            "@jupyterlab/apputils-extension:announcements",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = open(config / "lab.log", "wb")  # noqa: SIM115 — closed below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.token={TOKEN}",
            f"--ServerApp.root_dir={root}",
            "--allow-root",
            "--expose-app-in-browser",  # window.jupyterapp, as JupyterLab's own Playwright tests use
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("JupyterLab did not start:\n" + (config / "lab.log").read_text()[-2000:])
            time.sleep(0.5)
    yield base
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


def start_session(lab: str, notebook: str) -> str:
    """Start the notebook's kernel session through JupyterLab's REST API, before any page opens.

    The page then attaches to a running kernel instead of starting one while it settles — which is
    when JupyterLab could drop a Run All or ask "Select Kernel" although the notebook names one."""
    body = json.dumps({"path": notebook, "name": notebook, "type": "notebook", "kernel": {"name": "python3"}})
    request = urllib.request.Request(
        f"{lab}/api/sessions?token={TOKEN}",
        data=body.encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=90) as response:
        return json.load(response)["kernel"]["id"]


# In the page: wait until the notebook's panel is connected to the kernel started above and that
# kernel has answered kernel_info, then start Run All Cells (the command the Run menu runs) without
# waiting for it to finish.
RUN_ALL = """async ([path, kernelId]) => {
  const app = window.jupyterapp;
  await app.restored;
  let panel;
  for (let i = 0; i < 300 && !panel; i++) {
    panel = Array.from(app.shell.widgets('main')).find(w => w.context && w.context.path === path);
    if (!panel) await new Promise(r => setTimeout(r, 200));
  }
  if (!panel) return 'no panel for ' + path;
  await panel.context.ready;
  await panel.sessionContext.ready;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (!kernel) return 'no kernel';
  if (kernel.id !== kernelId) return 'another kernel: ' + kernel.id;
  await kernel.info;
  app.shell.activateById(panel.id);
  app.commands.execute('notebook:run-all-cells');
  return 'ok';
}"""


def run_all(page, lab: str, notebook: str, timeout_s: float = 420) -> None:
    """Open ``notebook`` on a kernel started for it and run every cell; wait until execution stops."""
    kernel_id = start_session(lab, notebook)
    page.goto(f"{lab}/lab/tree/{notebook}?reset&token={TOKEN}")
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=90_000)
    page.wait_for_selector(f"{PANEL} .jp-Notebook", timeout=90_000)
    assert page.evaluate(RUN_ALL, [notebook, kernel_id]) == "ok"

    def prompts() -> list[str]:
        return page.locator(f"{PANEL} .jp-CodeCell .jp-InputArea-prompt").all_inner_texts()

    def problem() -> str | None:
        if page.locator(".jp-Dialog").count() > 0:
            return "a dialog opened: " + page.locator(".jp-Dialog").first.inner_text()[:300]
        if time.monotonic() > deadline:
            return f"still running after {timeout_s} s"
        return None

    deadline = time.monotonic() + timeout_s
    started = False  # a cell is queued or running ([*]) or has run ([1])
    while (failure := problem()) is None:
        texts = prompts()
        started = started or any("*" in p or p.strip()[1:2].isdigit() for p in texts)
        if started and not any("*" in p for p in texts) and page.locator(IDLE).count() > 0:
            return
        time.sleep(1)
    screenshot(page, f"{Path(notebook).stem}-failed")
    pytest.fail(f"{notebook}: {failure}")


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_solution_runs_clean_with_images_and_widget_progress_bars(lab, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 7000})
    run_all(page, lab, "sd_lora_lab_solution.ipynb")
    screenshot(page, "solution")
    prompts = page.locator(f"{PANEL} .jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    assert prompts and all(p.strip().startswith("[") and p.strip()[1].isdigit() for p in prompts), prompts
    errors = page.locator(f"{PANEL} .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert errors.count() == 0, errors.all_inner_texts()[:3]
    widths = page.eval_on_selector_all(
        f"{PANEL} .jp-RenderedImage img", "imgs => imgs.map(i => i.naturalWidth)"
    )
    assert len(widths) >= 3 and all(w > 0 for w in widths), widths  # baseline, loss plot, side by side
    # tqdm.auto progress bars rendered as widgets: loading, baseline generation, training, adapted generation
    bars = page.locator(f"{PANEL} .widget-hprogress").count()
    assert bars >= 4, f"{bars} progress widgets"
    assert page.locator(f"{PANEL} .jp-RenderedHTMLCommon table").count() >= 2  # describe(pipe)
    text = page.locator(PANEL).inner_text()
    assert "visible checks only" in text
    # step 4 on tiny: the 50 overfit steps draw the sks rim the base model never drew (issue 6)
    before, after = map(float, re.search(r"sks style score: (\d+\.\d+) → (\d+\.\d+)", text).groups())
    assert before <= 0.05 and after > 0.12, (before, after)
    page.close()


def test_student_notebook_stops_at_the_first_todo_with_its_message(lab, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 7000})
    run_all(page, lab, "sd_lora_lab.ipynb")
    screenshot(page, "student")
    text = page.locator(PANEL).inner_text()
    assert "NotImplementedError: Step 1: TODO: make baseline_image" in text
    prompts = [
        p.strip() for p in page.locator(f"{PANEL} .jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    ]
    executed = [p for p in prompts if p[1:2].isdigit()]
    assert len(executed) == 3 and prompts[3:] and not any(p[1:2].isdigit() for p in prompts[3:]), prompts
    page.close()
