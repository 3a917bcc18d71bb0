"""One source → student + solution notebooks; the committed versions never drift from the source."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from grader.release import make_versions, release_notebook
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


def test_student_has_stubs_and_no_solutions_solution_has_no_markers():
    student = nbformat.read(ROOT / "notebooks" / "sd_lora_lab.ipynb", as_version=4)
    solution = nbformat.read(ROOT / "notebooks" / "sd_lora_lab_solution.ipynb", as_version=4)
    student_code = "\n".join(c.source for c in student.cells)
    solution_code = "\n".join(c.source for c in solution.cells)
    assert "get_peft_model(pipe.unet, lora_config)" in solution_code
    assert "get_peft_model(pipe.unet, lora_config)" not in student_code
    assert "loss.backward()" not in student_code and "loss.backward()" in solution_code
    assert "### BEGIN" not in student_code + solution_code and "### END" not in student_code + solution_code
    assert student_code.count("raise NotImplementedError(") == 6  # steps 1–4, and two in optional step 5
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
