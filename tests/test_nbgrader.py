"""nbgrader courses can move over: nbgrader's own generate_assignment accepts the source and makes the
student notebook ours is (only the stub wording differs), its ClearSolutions agrees with `release`
on which lines go, and `batch` grades a course's exchange layout into its gradebook database."""

from __future__ import annotations

import copy
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from helpers import SOURCE, STUDENT, run_grader, solution_with
from hypothesis import given, settings
from hypothesis import strategies as st

from grader.release import make_versions

pytest.importorskip("nbgrader")  # a test dependency: the judge of nbgrader compatibility
from nbgrader.api import Gradebook  # noqa: E402
from nbgrader.preprocessors import ClearSolutions  # noqa: E402

NBGRADER = Path(sys.executable).with_name("nbgrader")
NBGRADER_KEYS = ("solution", "grade", "locked", "grade_id", "points", "schema_version")


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A course folder with the lab's source as assignment ps1, released by nbgrader itself."""
    root = tmp_path_factory.mktemp("course")
    (root / "source" / "ps1").mkdir(parents=True)
    (root / "source" / "ps1" / "sd_lora_lab.ipynb").write_bytes(SOURCE.read_bytes())
    (root / "nbgrader_config.py").write_text(f"c = get_config()\nc.CourseDirectory.root = {str(root)!r}\n")
    env = {**os.environ, "PATH": f"{NBGRADER.parent}{os.pathsep}{os.environ['PATH']}"}  # it runs alembic
    result = subprocess.run(
        [str(NBGRADER), "generate_assignment", "ps1"], cwd=root, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return root


STUBS = [  # (ours, nbgrader's): each line of a stub, as a pattern on the stripped line
    (r"# TODO: .+", r"# YOUR CODE HERE"),
    (r"raise NotImplementedError\(.+\)", r"raise NotImplementedError\(\)"),
    (r"_Your answer here\._", r"YOUR ANSWER HERE"),
]
# ours in an optional cell (step 5): a comment alone, the cell's own code prints that it was skipped
OPTIONAL_STUB = r"# TODO \(optional: .+"


def normalised(source: str, ours: bool) -> list[str]:
    """The cell's lines, each stub line replaced by a token naming which stub line it is (so the
    stubs' wording and indentation are not compared: nbgrader indents its markdown stub, we do not)."""
    lines: list[str] = []
    for line in source.split("\n"):
        if ours and re.fullmatch(OPTIONAL_STUB, line.strip()):
            lines += ["<stub 0>", "<stub 1>"]  # nbgrader has one stub for every cell: its raise
            continue
        for index, pair in enumerate(STUBS):
            if re.fullmatch(pair[0 if ours else 1], line.strip()):
                line = f"<stub {index}>"
                break
        lines.append(line)
    return lines


def test_nbgrader_generate_assignment_accepts_the_source_and_agrees_cell_by_cell(course):
    theirs = nbformat.read(course / "release" / "ps1" / "sd_lora_lab.ipynb", as_version=4)
    ours = nbformat.read(STUDENT, as_version=4)
    assert len(theirs.cells) == len(ours.cells)
    for index, (their, our) in enumerate(zip(theirs.cells, ours.cells, strict=True)):
        assert their.cell_type == our.cell_type, index
        assert normalised(their.source, ours=False) == normalised(our.source, ours=True), index
        wanted = {k: v for k, v in our.metadata.get("nbgrader", {}).items() if k in NBGRADER_KEYS}
        assert {k: v for k, v in their.metadata.get("nbgrader", {}).items() if k in NBGRADER_KEYS} == wanted
    stubs = sum(line.startswith("<stub") for c in ours.cells for line in normalised(c.source, ours=True))
    assert stubs == 6 * 2 + 4  # six code stubs of two lines, four reflection answers
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        (notebook,) = gradebook.find_assignment("ps1").notebooks
        cells = {cell.name: cell.max_score for cell in notebook.grade_cells}
    checks = {"parameter_count": 1, "adapter_gradients": 1, "pixel_difference": 1}
    assert cells == {**checks, **{f"reflection_{n}": 1 for n in range(1, 5)}}


_plain = st.text(alphabet="abcxyz =()+1234\t", max_size=12).filter(lambda t: t.strip())
_style = st.tuples(st.sampled_from(["###", "##", "#", ""]), st.sampled_from(["", "  # note", " !"]))


@st.composite
def _solution_cell(draw) -> tuple[str, str, bool]:
    """(cell type, source, whole-cell solution): solution regions in every marker style nbgrader
    accepts, or a cell nbgrader's metadata marks as a solution as a whole."""
    kind = draw(st.sampled_from(["code", "markdown"]))
    if draw(st.booleans()) and draw(st.booleans()):
        return kind, "\n".join(draw(st.lists(_plain, min_size=1, max_size=4))), True
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        lines += draw(st.lists(_plain, max_size=3))
        (mark, tail), indent = draw(_style), draw(st.sampled_from(["", "    "]))
        lines.append(f"{indent}{mark} BEGIN SOLUTION{tail}")
        lines += [
            f"{indent}secret_{draw(st.integers(0, 10**6))} = {draw(_plain)}"
            for _ in range(draw(st.integers(1, 3)))
        ]
        lines.append(f"{indent}{mark} END SOLUTION{tail}")
    lines += draw(st.lists(_plain, max_size=2))
    return kind, "\n".join(lines), False


@settings(max_examples=150, derandomize=True, deadline=None)
@given(cells=st.lists(_solution_cell(), min_size=1, max_size=4))
def test_nbgrader_clear_solutions_agrees_with_release_on_which_lines_go(cells):
    make = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell}
    nb = nbformat.v4.new_notebook(cells=[make[kind](source) for kind, source, _ in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    for index, cell in enumerate(nb.cells):
        cell.metadata["nbgrader"] = {"schema_version": 3, "solution": True, "grade": False, "locked": False}
        cell.metadata["nbgrader"]["grade_id"] = f"cell_{index}"
    theirs, _ = ClearSolutions().preprocess(copy.deepcopy(nb), {})
    ours, _ = make_versions(nb)
    for their, our in zip(theirs.cells, ours.cells, strict=True):  # stub lines compared as tokens
        assert normalised(our.source, ours=True) == normalised(their.source, ours=False), (their, our)


# --- an nbgrader course's submissions ----------------------------------------------------------------


@pytest.mark.notebook
def test_batch_grades_an_nbgrader_exchange_into_the_course_gradebook(course, tmp_path):
    submitted = tmp_path / "submitted"
    notebooks = {
        "alice": solution_with(quick=True)(tmp_path / "alice").read_bytes(),
        "bob": b'{"cells": [',  # a corrupt upload
        "carol": STUDENT.read_bytes(),  # nothing filled in
    }
    for student, data in notebooks.items():
        (submitted / student / "ps1").mkdir(parents=True)
        (submitted / student / "ps1" / "sd_lora_lab.ipynb").write_bytes(data)
    (submitted / "dave" / "ps0").mkdir(parents=True)  # another assignment: not this batch's
    (submitted / "dave" / "ps0" / "other.ipynb").write_bytes(STUDENT.read_bytes())
    database = course / "gradebook.db"
    results = tmp_path / "results"
    args = ["batch", str(submitted), "-o", str(results), "--workers", "2", "--nbgrader-assignment", "ps1"]
    result = run_grader(*args, "--nbgrader-db", str(database))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"wrote 9 grades into {database}" in result.stdout  # 3 students × 3 checks
    with (results / "gradebook.csv").open() as handle:
        rows = {row["submission"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"alice", "bob", "carol"} and rows["alice"]["student"] == "alice"
    assert (rows["alice"]["total"], rows["alice"]["status"]) == ("3.0", "passed")
    assert rows["bob"]["status"] == "error" and "is not a notebook" in rows["bob"]["failure"]
    assert rows["carol"]["total"] == "0.0" and "step 1 failed" in rows["carol"]["failure"]
    with Gradebook(f"sqlite:///{database}") as gradebook:
        for student, expected in {"alice": 1.0, "bob": 0.0, "carol": 0.0}.items():
            for check in ("parameter_count", "adapter_gradients", "pixel_difference"):
                grade = gradebook.find_grade(check, "sd_lora_lab", "ps1", student)
                assert (grade.auto_score, grade.needs_manual_grade) == (expected, False), (student, check)
            reflection = gradebook.find_grade("reflection_1", "sd_lora_lab", "ps1", student)
            assert reflection.auto_score is None  # the reflections stay for formgrader
        assert gradebook.find_submission("ps1", "alice").score == 3


def test_exchange_layout_problems_are_one_line(tmp_path):
    (tmp_path / "submitted" / "alice" / "ps0").mkdir(parents=True)
    result = run_grader(
        "batch", str(tmp_path / "submitted"), "-o", str(tmp_path / "r"), "--nbgrader-assignment", "ps1"
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert (
        "no submission of assignment 'ps1'" in result.stderr and "submitted/<student>/ps1/" in result.stderr
    )
    result = run_grader("batch", str(tmp_path), "-o", str(tmp_path / "r"), "--nbgrader-db", "gradebook.db")
    assert result.returncode == 2 and "--nbgrader-db needs --nbgrader-assignment" in result.stderr
