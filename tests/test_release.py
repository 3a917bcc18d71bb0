"""One source → student + solution notebooks; the committed versions never drift from the source."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grader.release import Markers, make_versions, release_notebook
from lab_utils.errors import LabError

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "notebooks" / "source" / "sd_lora_lab.ipynb"


def test_committed_notebooks_match_a_fresh_release(tmp_path):
    release_notebook(SOURCE, tmp_path)
    for name in ("sd_lora_lab.ipynb", "sd_lora_lab_solution.ipynb"):
        assert (tmp_path / name).read_text() == (ROOT / "notebooks" / name).read_text(), (
            f"notebooks/{name} drifted from the source: run "
            "`python -m grader release notebooks/source/sd_lora_lab.ipynb -o notebooks`"
        )


def test_released_notebooks_are_readable_by_the_class(tmp_path):
    """Atomic writes go through mkstemp (0600): the released files get open()'s permissions instead."""
    umask = os.umask(0o022)
    try:
        for path in release_notebook(SOURCE, tmp_path):
            assert path.stat().st_mode & 0o777 == 0o644, oct(path.stat().st_mode)
    finally:
        os.umask(umask)


def test_student_has_stubs_and_no_solutions_solution_has_no_markers():
    student = nbformat.read(ROOT / "notebooks" / "sd_lora_lab.ipynb", as_version=4)
    solution = nbformat.read(ROOT / "notebooks" / "sd_lora_lab_solution.ipynb", as_version=4)
    student_code = "\n".join(c.source for c in student.cells)
    solution_code = "\n".join(c.source for c in solution.cells)
    assert "get_peft_model(pipe.unet, lora_config)" in solution_code
    assert "get_peft_model(pipe.unet, lora_config)" not in student_code
    assert "loss.backward()" not in student_code and "loss.backward()" in solution_code
    assert "### BEGIN" not in student_code + solution_code and "### END" not in student_code + solution_code
    assert student_code.count("raise NotImplementedError(") == 4  # steps 1–4
    optional = [c for c in student.cells if c.metadata.get("lab", {}).get("optional")]
    assert len(optional) == 2 and all("# TODO (optional" in c.source for c in optional)  # step 5
    assert all("NotImplementedError" not in c.source and "skipped" in c.source for c in optional)
    graded = [c for c in student.cells if c.metadata.get("lab", {}).get("solution")]
    assert len(graded) == 10  # six code TODOs and four reflection answers
    assert all(c.get("outputs", []) == [] for c in student.cells + solution.cells)


def _nb(*sources, kinds=None):
    kinds = kinds or ["code"] * len(sources)
    make = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell}
    return nbformat.v4.new_notebook(cells=[make[k](s) for k, s in zip(kinds, sources, strict=True)])


def test_stub_keeps_indentation_and_names_the_step_and_todo():
    lines = ["for i in range(2):", "    x = i", "    ### BEGIN SOLUTION", "    y = x * 2"]
    nb = _nb("\n".join([*lines, "    ### END SOLUTION", "    print(y)"]))
    nb.cells[0].metadata["lab"] = {"step": 3, "todo": "double x"}
    student, solution = make_versions(nb)
    assert student.cells[0].source.splitlines() == [
        "for i in range(2):",
        "    x = i",
        "    # TODO: double x",
        "    raise NotImplementedError('Step 3: TODO: double x')",
        "    print(y)",
    ]
    assert solution.cells[0].source == "for i in range(2):\n    x = i\n    y = x * 2\n    print(y)"


def test_hidden_tests_and_markdown_answers():
    nb = _nb(
        "Answer:\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION",
        "x = 1\n### BEGIN HIDDEN TESTS\nassert x == 1\n### END HIDDEN TESTS",
        kinds=["markdown", "code"],
    )
    nb.cells.append(nbformat.v4.new_code_cell("### BEGIN HIDDEN TESTS\nassert x > 0\n### END HIDDEN TESTS"))
    student, solution = make_versions(nb)
    assert student.cells[0].source == "Answer:\n_Your answer here._"
    assert student.cells[1].source == "x = 1"
    assert len(student.cells) == 2  # the hidden-check cell is gone from the student version
    assert solution.cells[1].source == "x = 1\nassert x == 1"
    assert solution.cells[2].source == "assert x > 0"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("### BEGIN SOLUTION\nx = 1", "is never closed"),
        ("### END SOLUTION", "without a matching BEGIN"),
        ("### BEGIN SOLUTION\n### BEGIN HIDDEN TESTS", "inside an open SOLUTION region"),
    ],
)
def test_broken_markers_are_clear_errors(source, message):
    with pytest.raises(LabError, match=message):
        make_versions(_nb(source), "course.ipynb")


def test_release_refuses_to_overwrite_its_source(tmp_path):
    src = tmp_path / "lab.ipynb"
    nbformat.write(_nb("x = 1"), src)
    with pytest.raises(LabError, match="would overwrite the source"):
        release_notebook(src, tmp_path)  # the student version would be tmp_path/lab.ipynb
    assert nbformat.read(src, as_version=4).cells[0].source == "x = 1"


@pytest.mark.parametrize(
    "source",
    [
        "x = 1\n# BEGIN SOLUTION\nanswer = 42\n# END SOLUTION\nprint(x)",  # one comment mark
        "x = 1\n### BEGIN SOLUTION  # note\nanswer = 42\n### END SOLUTION  # done\nprint(x)",  # trailing text
        "x = 1\n    ## BEGIN SOLUTION\n    answer = 42\n    ## END SOLUTION\nprint(x)",  # indented
    ],
)
def test_markers_match_anywhere_in_a_line_as_nbgrader_matches_them(source):
    student, solution = make_versions(_nb(source))
    assert "answer = 42" not in student.cells[0].source and "SOLUTION" not in student.cells[0].source
    assert (
        student.cells[0].source.splitlines()[0] == "x = 1"
        and "raise NotImplementedError(" in student.cells[0].source
    )
    assert "answer = 42" in solution.cells[0].source and "SOLUTION" not in solution.cells[0].source


def test_a_whole_cell_nbgrader_solution_without_markers_is_stubbed():
    nb = _nb("answer = 42\nprint(answer)", "It is 42 because.", kinds=["code", "markdown"])
    for cell in nb.cells:
        cell.metadata["nbgrader"] = {"solution": True, "grade": False, "grade_id": "q", "schema_version": 3}
    student, solution = make_versions(nb)
    assert "answer" not in student.cells[0].source and "raise NotImplementedError(" in student.cells[0].source
    assert student.cells[1].source == "_Your answer here._"
    assert solution.cells[0].source == "answer = 42\nprint(answer)"
    assert student.cells[0].metadata["lab"]["solution"] is True


def test_a_student_version_that_would_keep_a_marker_is_refused_naming_the_cell():
    nb = _nb("x = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION")
    nb.cells[0].metadata["lab"] = {"todo": "write the BEGIN SOLUTION line away"}  # the stub repeats a marker
    with pytest.raises(
        LabError, match=r"course.ipynb, cell 0: the student version would keep the marker line"
    ):
        make_versions(nb, "course.ipynb")


def test_custom_markers_are_recognised():
    student, _ = make_versions(
        _nb("a = 1\n# <<answer\nb = 2\n# answer>>"), markers=Markers("<<answer", "answer>>")
    )
    assert "b = 2" not in student.cells[0].source and "answer>>" not in student.cells[0].source


_plain = st.text(alphabet="abcxyz =()+1234\t", max_size=12).filter(lambda t: t.strip())
_marker_style = st.tuples(st.sampled_from(["###", "##", "#", ""]), st.sampled_from(["", "  # note", " !"]))


@st.composite
def _cells(draw) -> tuple[str, set[str]]:
    """A cell source with solution and hidden-test regions in every style nbgrader accepts, and the
    lines only those regions hold."""
    lines: list[str] = []
    secret: set[str] = set()
    for _ in range(draw(st.integers(1, 4))):
        lines += draw(st.lists(_plain, max_size=3))
        kind = draw(st.sampled_from(["SOLUTION", "HIDDEN TESTS"]))
        (mark, tail), indent = draw(_marker_style), draw(st.sampled_from(["", "    "]))
        body = [
            f"{indent}secret_{draw(st.integers(0, 10**6))} = {draw(_plain)}"
            for _ in range(draw(st.integers(1, 3)))
        ]
        lines += [f"{indent}{mark} BEGIN {kind}{tail}"]
        lines += body + [f"{indent}{mark} END {kind}{tail}"]
        secret |= {line.strip() for line in body}
    return "\n".join(lines), secret


@settings(max_examples=150, derandomize=True, deadline=None)
@given(cells=st.lists(_cells(), min_size=1, max_size=3), markdown=st.booleans())
def test_no_solution_line_ever_reaches_the_student_notebook(cells, markdown):
    nb = _nb(*(source for source, _ in cells), kinds=["markdown" if markdown else "code"] * len(cells))
    student, solution = make_versions(nb)
    shown = "\n".join(cell.source for cell in student.cells)
    secrets = set().union(*(secret for _, secret in cells))
    assert not [line for line in secrets if line in shown]
    assert "BEGIN" not in shown and "END SOLUTION" not in shown and "END HIDDEN" not in shown
    assert all(line in "\n".join(c.source for c in solution.cells) for line in secrets)
