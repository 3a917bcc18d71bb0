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
from grader.execute.processes import descendants
from grader.execute.run import _error_line
from grader.execute.sandbox import UNSANDBOXED_NOTE, namespaces_problem, prepare
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
raise RuntimeError("PROBE " + json.dumps(found))  # the findings come back as the cell's error
"""


@pytest.mark.parametrize("mode", ["namespaces", "none"])
def test_each_mode_scrubs_the_environment_and_none_is_marked(tmp_path, mode, monkeypatch):
    """The kernel's environment is an allow-list in every mode. The grader's own namespaces keep the
    probe from writing beside the notebook and from the network; ``none`` does not, and the report
    and results.json say the notebook ran unsandboxed."""
    if mode == "namespaces" and namespaces_problem() is not None:
        pytest.skip(f"namespaces cannot be built here: {namespaces_problem()}")
    monkeypatch.setenv("SD_LORA_LAB_TEST_SECRET", "hunter2")
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    cell = nbformat.v4.new_code_cell(f"CANARY = {str(canary)!r}\n{PROBE}")
    path = tmp_path / "probe.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    before = descendants(os.getpid())  # another test's orphans may be re-parented to this process
    report = grade_notebook(path, config=config(limits={"sandbox": mode}), output=tmp_path / "out")
    assert report.execution["sandbox"] == mode, report.execution
    snapshot = json.loads((tmp_path / "out" / "results.json").read_text())
    found = json.loads(report.execution["failure"].split("PROBE ", 1)[1])
    assert found["secret"] is None and "SD_LORA_LAB_TEST_SECRET" not in found["env"]
    assert found["home"].startswith(found["cwd"].rsplit("/work", 1)[0]) and found["tmp"] != "/tmp"
    if mode == "none":
        assert found["canary"] == "written"
        assert UNSANDBOXED_NOTE in report.notes and UNSANDBOXED_NOTE in snapshot["output"]
        assert any("sandbox off" in gap for gap in report.execution["isolation_gaps"])
    else:
        assert found["canary"] != "written" and canary.read_text() == "untouched"
        assert found["network"] != "open"
        gaps = report.execution["isolation_gaps"]
        assert UNSANDBOXED_NOTE not in snapshot["output"] and not any("isolated" in g for g in gaps), gaps
    assert descendants(os.getpid()) - before == set()  # the grading left nothing running


def test_without_bubblewrap_or_namespaces_grading_refuses_with_one_line(monkeypatch, tmp_path, capsys):
    from grader.__main__ import main

    monkeypatch.setattr(grader.execute.sandbox, "bwrap_works", lambda: False)
    if namespaces_problem() is None:  # auto falls back to the grader's own namespaces
        sandbox = prepare(tmp_path / "run", Limits(sandbox="auto"))
        sandbox.kill_all()  # removes the control groups it made
        assert sandbox.mode == "namespaces" and not sandbox.notes
        assert all(not group.exists() for group in sandbox.cgroups)
    with pytest.raises(LabError, match=r"--sandbox bwrap: bubblewrap is not installed"):
        prepare(tmp_path / "run2", Limits(sandbox="bwrap"))
    monkeypatch.setattr(
        grader.execute.sandbox, "namespaces_problem", lambda: "unshare: Operation not permitted"
    )
    with pytest.raises(LabError, match=r"--sandbox namespaces: unshare: Operation not permitted"):
        prepare(tmp_path / "run3", Limits(sandbox="namespaces"))
    path = tmp_path / "hello.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hello')")]), path)
    assert main([str(path), "--results", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: no sandbox can be built on this machine (bubblewrap not found; unshare: Operation not "
        "permitted): install bubblewrap (apt install bubblewrap), or grade without isolation with "
        "--sandbox none"
    ]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["score"] == 0 and "install bubblewrap" in results["output"]


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
    grade_notebook(path, config=config(limits={"sandbox": "none", "gpu_memory_fraction": 0.25}))
    assert float(result.read_text()) == pytest.approx(0.25)


def test_cli_names_the_sandbox_and_what_it_could_not_enforce(tmp_path, capsys):
    from grader.__main__ import main

    path = tmp_path / "empty.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hello')")]), path)
    assert main([str(path), "--sandbox", "none"]) == 1  # no work done: checks fail
    out = " ".join(capsys.readouterr().out.split())
    assert "sandbox none: sandbox off (--sandbox none)" in out and "graded without a sandbox" in out
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--sandbox", "basic"])
    assert exit_info.value.code == 2 and "invalid choice: 'basic'" in capsys.readouterr().err
