"""The learner's JupyterLab in a real browser: Debian's Chromium driven headless by Playwright
(the system browser — never a download) against a JupyterLab on 127.0.0.1 with a token."""

from __future__ import annotations

import os
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


def run_all(page, lab: str, notebook: str, timeout_s: float = 420) -> None:
    """Open ``notebook`` in a fresh kernel and run every cell; wait until execution stops.

    Run → Run All Cells on the kernel the page just started: "Restart Kernel and Run All" replaces
    the kernel's websocket, and jupyter_server sometimes fails to decode the browser's first message
    on the replaced connection ("struct.error: unpack requires a buffer"), leaving the page waiting
    for a kernel it is no longer connected to."""
    page.goto(f"{lab}/lab/tree/{notebook}?reset&token={TOKEN}")
    page.wait_for_selector(f"{PANEL} .jp-Notebook", timeout=90_000)
    page.wait_for_selector(IDLE, timeout=90_000)

    def prompts() -> list[str]:
        return page.locator(f"{PANEL} .jp-CodeCell .jp-InputArea-prompt").all_inner_texts()

    def started() -> bool:  # a cell is running ([*]) or has run ([1])
        return any("*" in p or p.strip()[1:2].isdigit() for p in prompts())

    def accept_kernel_dialog() -> None:
        # JupyterLab sometimes asks for the kernel although the notebook names one (its session is
        # still being set up as Run All arrives): accept the notebook's own kernel
        dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
        if dialog.count() > 0:
            dialog.locator(".jp-mod-accept").click()
            page.wait_for_selector(IDLE, timeout=90_000)

    # Run All can also be dropped while the page settles: click again until a cell has started
    for _ in range(4):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()
        wait_until = time.monotonic() + 15
        while time.monotonic() < wait_until and not started():
            accept_kernel_dialog()
            time.sleep(0.5)
        if started():
            break
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        accept_kernel_dialog()
        busy = any("*" in p for p in prompts())
        if not busy and page.locator(IDLE).count() > 0:
            return
        time.sleep(1)
    pytest.fail(f"{notebook} still running after {timeout_s} s")


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
    assert "visible checks only" in page.locator(PANEL).inner_text()
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
