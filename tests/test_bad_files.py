"""Every bad file a clear line: for every command that takes files — a notebook, a checks file, a
model path, a submissions folder, a results or artefact folder, a release source, an adapter — a
zero-byte, truncated or wrong-type file, a folder where a file belongs (and a file where a folder
does), a symlink loop, a broken link, a name that is not UTF-8, and (as an unprivileged user)
unreadable permissions each give one line naming the file, exit 2, and nothing written half."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import ROOT, SOLUTION

from grader.__main__ import main
from lab_utils.errors import LabError

CHECKS = ROOT / "notebooks" / "source" / "sd_lora_lab.checks.toml"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def _file(kind: str, folder: Path, good: bytes, suffix: str) -> Path:
    """A bad file of ``kind`` named ``bad<suffix>`` (the non-UTF-8 one: ``\\xff<suffix>``, empty)."""
    path = folder / f"bad{suffix}"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":  # a checks file cut after "key = ", where any TOML reader must stop
        cut = good.index(b"= ", len(good) // 3) + 2 if suffix == ".toml" else len(good) // 3
        path.write_bytes(good[:cut])
    elif kind == "wrong type":
        path.write_bytes(PNG)
    elif kind == "folder where a file belongs":
        path.mkdir()
    elif kind == "symlink loop":
        path.symlink_to(path.name)
    elif kind == "broken link":
        path.symlink_to(folder / "nowhere")
    elif kind == "non-UTF-8 name":
        path = Path(os.fsdecode(bytes(folder) + b"/\xff" + suffix.encode()))
        path.write_bytes(b"")
    return path


def _folder(kind: str, folder: Path) -> Path:
    path = folder / "bad"
    if kind == "file where a folder belongs":
        path.write_bytes(b"{}")
    elif kind == "symlink loop":
        path.symlink_to(path.name)
    elif kind == "missing":
        pass
    elif kind == "non-UTF-8 name":
        path = Path(os.fsdecode(bytes(folder) + b"/\xff"))
        path.mkdir()
    return path


FILE_KINDS = [
    "empty",
    "truncated",
    "wrong type",
    "folder where a file belongs",
    "symlink loop",
    "broken link",
    "non-UTF-8 name",
]
FOLDER_KINDS = ["file where a folder belongs", "symlink loop", "missing", "non-UTF-8 name"]
SAFETENSORS = (
    ROOT / "lab_utils" / "tiny" / "model" / "vae" / "diffusion_pytorch_model.safetensors"
).read_bytes()
FILE_COMMANDS = {  # command → (argv for the bad path, the good file it is a broken copy of, suffix)
    "grade NOTEBOOK": (lambda bad, out: [bad, "--results", out], SOLUTION.read_bytes(), ".ipynb"),
    "grade --checks": (lambda bad, out: [SOLUTION, "--checks", bad], CHECKS.read_bytes(), ".toml"),
    "grade --model": (lambda bad, out: [SOLUTION, "--model", bad], SAFETENSORS, ".safetensors"),
    "release SOURCE": (lambda bad, out: ["release", bad, "-o", out], SOLUTION.read_bytes(), ".ipynb"),
    "gradescope --checks": (
        lambda bad, out: ["gradescope", "-o", out / "a.zip", "--checks", bad],
        CHECKS.read_bytes(),
        ".toml",
    ),
    "gradescope --model": (
        lambda bad, out: ["gradescope", "-o", out / "a.zip", "--model", bad],
        SAFETENSORS,
        ".safetensors",
    ),
}
FOLDER_COMMANDS = {
    "batch SUBMISSIONS": lambda bad, out: ["batch", bad, "-o", out],
    "gradebook RESULTS": lambda bad, out: ["gradebook", bad],
    "report RESULTS": lambda bad, out: ["report", bad],
    "verify ARTEFACTS": lambda bad, out: ["verify", bad],
}


def _run(argv: list, capsys) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def _assert_one_line(code: int, err: list[str], name: str, tmp_path: Path) -> None:
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    assert name in err[0], (name, err[0])
    assert not list(tmp_path.rglob("*.tmp")), "a file was left half written"


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("command", list(FILE_COMMANDS))
def test_a_bad_file_is_one_line_naming_it(command, kind, tmp_path, capsys):
    argv, good, suffix = FILE_COMMANDS[command]
    bad = _file(kind, tmp_path, good, suffix)
    out = tmp_path / "out"
    code, err = _run(argv(bad, out), capsys)
    name = "\\xff" if kind == "non-UTF-8 name" else "bad"
    _assert_one_line(code, err, name, tmp_path)
    if command == "grade NOTEBOOK":  # the learner still gets a results.json, whole, saying why
        results = json.loads((out / "results.json").read_text())
        assert results["score"] == 0 and err[0].removeprefix("error: ") in results["output"]
    elif command != "grade --model":
        assert not out.exists() or not any(out.iterdir()), "nothing may be written for a bad input"


@pytest.mark.parametrize("kind", FOLDER_KINDS)
@pytest.mark.parametrize("command", list(FOLDER_COMMANDS))
def test_a_bad_folder_is_one_line_naming_it(command, kind, tmp_path, capsys):
    bad = _folder(kind, tmp_path)
    code, err = _run(FOLDER_COMMANDS[command](bad, tmp_path / "out"), capsys)
    _assert_one_line(code, err, "\\xff" if kind == "non-UTF-8 name" else "bad", tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_a_bad_adapter_file_is_one_line_naming_it(kind, tmp_path):
    from lab_utils.adapters.load import read_adapter_file

    bad = _file(kind, tmp_path, SAFETENSORS, ".safetensors")
    with pytest.raises(LabError) as info:
        read_adapter_file(bad)
    message = str(info.value)
    assert "\n" not in message and ("\\xff" if kind == "non-UTF-8 name" else "bad") in message, message
    message.encode("utf-8")  # printable as it is


def test_entries_of_a_submissions_folder_that_are_not_notebooks_are_each_a_graded_error(tmp_path):
    """Inside a class's folder a bad entry is that student's error, never the whole batch's: a
    folder named .ipynb, a symlink loop, an empty file and a non-UTF-8 name are each a submission
    whose grading fails with its line; a link to a folder is not followed into a loop."""
    from grader.batch import find_submissions
    from grader.grade import grade_notebook

    folder = tmp_path / "subs"
    folder.mkdir()
    (folder / "dir.ipynb").mkdir()
    (folder / "loop.ipynb").symlink_to("loop.ipynb")
    (folder / "empty.ipynb").write_bytes(b"")
    Path(os.fsdecode(bytes(folder) + b"/\xfe.ipynb")).write_bytes(b"")
    (folder / "deeper").mkdir()
    (folder / "deeper" / "up").symlink_to("..")  # a loop for a walk that follows links
    found = find_submissions(folder)
    assert len(found) == 4 and len({s.id for s in found}) == 4
    lines = {}
    for submission in found:
        with pytest.raises(LabError) as info:
            grade_notebook(submission.path)
        lines[submission.path.name] = str(info.value)
    assert "is a folder, not a file" in lines["dir.ipynb"]
    assert "is a symlink loop" in lines["loop.ipynb"]
    assert "is empty (0 bytes)" in lines["empty.ipynb"]
    assert all("\n" not in line for line in lines.values())


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_unreadable_files_are_one_line_for_an_unprivileged_instructor():
    """Root reads any file, so permissions are tried as `nobody`: each command, in one process."""
    base = Path(tempfile.mkdtemp(prefix="sd-lora-lab-perm-"))
    try:
        os.chmod(base, 0o755)
        nb, checks, model, adapter = (
            base / n for n in ("a.ipynb", "c.toml", "m.safetensors", "a.safetensors")
        )
        shutil.copy(SOLUTION, nb)
        shutil.copy(CHECKS, checks)
        model.write_bytes(SAFETENSORS)
        adapter.write_bytes(SAFETENSORS)
        subs = base / "subs"
        subs.mkdir()
        for path in (nb, checks, model, adapter, subs):
            os.chmod(path, 0)
        script = f"""
import contextlib, io, json, sys
from grader.__main__ import main
from lab_utils.adapters.load import read_adapter_file
from lab_utils.errors import LabError
found = {{}}
for name, argv in {{
    "notebook": [{str(nb)!r}],
    "checks": ["{SOLUTION}", "--checks", {str(checks)!r}],
    "model": ["{SOLUTION}", "--model", {str(model)!r}],
    "submissions": ["batch", {str(subs)!r}, "-o", "/nonexistent/out"],
}}.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    found[name] = [code, err.getvalue().strip().splitlines()]
try:
    read_adapter_file({str(adapter)!r})
except LabError as error:
    found["adapter"] = [2, ["error: " + str(error)]]
print(json.dumps(found))
"""
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
        if subprocess.run([*nobody, "-c", "import grader"], cwd=ROOT, capture_output=True).returncode:
            pytest.skip("this Python environment cannot be run by an unprivileged user")
        result = subprocess.run(
            [*nobody, "-c", script],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env={**os.environ, "HOME": str(base)},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        found = json.loads(result.stdout.strip().splitlines()[-1])
        for name, (code, err) in found.items():
            assert code == 2 and len(err) == 1, (name, err)
            assert "cannot be read (Permission denied): check its permissions" in err[0], (name, err)
    finally:
        shutil.rmtree(base, ignore_errors=True)
