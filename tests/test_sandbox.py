"""The kernel's sandbox: what each mode enforces, the limits, GPU memory errors with partial credit,
and the one-line errors for a sandbox this machine cannot provide."""

from __future__ import annotations

import json
import os

import nbformat
import pytest
import torch
from helpers import STEP3, config, solution_with

import grader.execute.sandbox
from grader import grade_notebook
from grader.config import Limits
from grader.execute.run import _error_line
from grader.execute.sandbox import bwrap_works, descendants, prepare
from lab_utils.errors import LabError

pytestmark = pytest.mark.notebook

PROBE = """
import json, os, socket
found = {"env": sorted(os.environ), "home": os.environ["HOME"], "cwd": os.getcwd(),
         "tmp": os.environ["TMPDIR"], "secret": os.environ.get("SD_LORA_LAB_TEST_SECRET")}
try:
    socket.create_connection(("1.1.1.1", 443), timeout=3)
    found["network"] = "open"
except OSError as error:
    found["network"] = f"{type(error).__name__}: {error}"
try:
    with open(CANARY, "w") as f:
        f.write("written")
    found["canary"] = "written"
except OSError as error:
    found["canary"] = type(error).__name__
open(RESULT, "w").write(json.dumps(found))
"""


@pytest.mark.parametrize("mode", ["basic", "bwrap"])
def test_each_mode_scrubs_the_environment_cuts_the_network_and_reports_its_gaps(tmp_path, mode, monkeypatch):
    if mode == "bwrap" and not bwrap_works():
        pytest.skip("needs bubblewrap (apt install bubblewrap; .ci/run installs it)")
    monkeypatch.setenv("SD_LORA_LAB_TEST_SECRET", "hunter2")
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    result = tmp_path / "probe.json"
    cell = nbformat.v4.new_code_cell(f"CANARY = {str(canary)!r}\nRESULT = {str(result)!r}\n{PROBE}")
    path = tmp_path / "probe.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    # the probe reports through a file beside the notebook: allowed in basic mode only, so in
    # bwrap mode it writes into its working directory and the assertion reads the failure instead
    before = descendants(os.getpid())  # another test's orphans may be re-parented to this process
    report = grade_notebook(path, config=config(limits={"sandbox": mode}))
    assert report.execution["sandbox"] == mode
    gaps = report.execution["isolation_gaps"]
    if mode == "basic":
        assert report.execution["failure"] is None, report.execution
        found = json.loads(result.read_text())
        assert found["secret"] is None and "SD_LORA_LAB_TEST_SECRET" not in found["env"]
        assert found["home"].startswith(found["cwd"].rsplit("/work", 1)[0]) and found["tmp"] != "/tmp"
        assert found["canary"] == "written" and any("filesystem not isolated" in g for g in gaps)
        if os.geteuid() == 0:  # a new network namespace needs root or user namespaces
            assert found["network"] != "open" and not any("network" in g for g in gaps)
    else:
        # the probe cannot write its result outside the sandbox: that write is the failure
        failure = report.execution["failure"]
        assert "Read-only file system" in failure or "No such file or directory" in failure, failure
        assert canary.read_text() == "untouched" and not result.exists()
        assert not any("filesystem" in g or "network" in g for g in gaps), gaps
    assert descendants(os.getpid()) - before == set()  # the grading left nothing running


def test_sandbox_bwrap_without_bubblewrap_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(grader.execute.sandbox, "bwrap_works", lambda: False)
    with pytest.raises(LabError, match=r"--sandbox bwrap: bubblewrap is not installed"):
        prepare(tmp_path / "run", Limits(sandbox="bwrap"))
    sandbox = prepare(tmp_path / "run2", Limits(sandbox="auto"))
    sandbox.kill_all()  # removes the control groups it made
    assert sandbox.mode == "basic"  # auto falls back, and says so
    assert any("filesystem not isolated" in n for n in sandbox.notes)
    assert all(not group.exists() for group in sandbox.cgroups)


def test_gpu_out_of_memory_at_step_3_keeps_step_2_credit(tmp_path):
    """torch's CUDA OOM, raised where the training loop would raise it: "step 3 failed: out of GPU
    memory", with the adapter's count (step 2) still credited."""
    oom = "import torch\nraise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')"
    report = grade_notebook(solution_with(after="<" + STEP3, cell=oom, quick=True)(tmp_path))
    assert report.execution["failure"].startswith("step 3 failed: out of GPU memory")
    assert [c.passed for c in report.checks] == [True, False, False] and report.score == 1


def test_error_lines_name_memory_exhaustion():
    class Error(Exception):
        def __init__(self, ename, evalue):
            self.ename, self.evalue = ename, evalue

    assert _error_line(Error("OutOfMemoryError", "CUDA out of memory. Tried")).startswith("out of GPU memory")
    assert _error_line(Error("LabError", "out of GPU memory during training: lower")).startswith(
        "out of GPU memory"
    )
    assert _error_line(Error("MemoryError", "")).startswith("out of memory")
    assert _error_line(Error("ValueError", "bad")) == "ValueError: bad"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_memory_fraction_is_applied_in_the_kernel(tmp_path):
    result = tmp_path / "fraction.txt"
    cell = nbformat.v4.new_code_cell(
        f"import torch\nopen({str(result)!r}, 'w').write(str(torch.cuda.get_per_process_memory_fraction()))"
    )
    path = tmp_path / "gpu.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    grade_notebook(path, config=config(limits={"sandbox": "basic", "gpu_memory_fraction": 0.25}))
    assert float(result.read_text()) == pytest.approx(0.25)


def test_cli_names_the_sandbox_and_what_it_could_not_enforce(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "empty.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hello')")]), path)
    result = subprocess.run(
        [sys.executable, "-m", "grader", str(path), "--sandbox", "basic"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # no work done: checks fail
    assert "sandbox basic: filesystem not isolated" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "grader", str(path), "--sandbox", "docker"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid choice: 'docker'" in bad.stderr
