"""One source notebook → the student notebook and the solution notebook.

Markers are nbgrader's, so courses can move over: ``### BEGIN SOLUTION`` / ``### END SOLUTION``
(a region the student writes) and ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` (removed
from the student version). The student's stub raises with the cell's ``lab.todo`` text, so running
the unfinished notebook stops at the first TODO with a message saying what to write.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from grader.notebook import cell_steps, read_notebook, write_notebook
from lab_utils.errors import LabError

_MARKER = re.compile(r"^(\s*)###\s*(BEGIN|END)\s+(SOLUTION|HIDDEN TESTS)\s*$")
MARKDOWN_STUB = "_Your answer here._"


def _regions(source: str, where: str) -> list[tuple[str, str, list[str]]]:
    """Split ``source`` into ('text'|'SOLUTION'|'HIDDEN TESTS', indent, lines) pieces."""
    pieces: list[tuple[str, str, list[str]]] = [("text", "", [])]
    open_kind: str | None = None
    for number, line in enumerate(source.splitlines(), 1):
        match = _MARKER.match(line)
        if not match:
            pieces[-1][2].append(line)
            continue
        indent, edge, kind = match.groups()
        if edge == "BEGIN":
            if open_kind is not None:
                raise LabError(
                    f"{where}, line {number}: '### BEGIN {kind}' inside an open {open_kind} region"
                )
            open_kind = kind
            pieces.append((kind, indent, []))
        else:
            if open_kind != kind:
                raise LabError(f"{where}, line {number}: '### END {kind}' without a matching BEGIN")
            open_kind = None
            pieces.append(("text", "", []))
    if open_kind is not None:
        raise LabError(f"{where}: '### BEGIN {open_kind}' is never closed")
    return pieces


def _stub(cell, indent: str, step: int | None) -> list[str]:
    if cell.cell_type == "markdown":
        return [MARKDOWN_STUB]
    todo = cell.get("metadata", {}).get("lab", {}).get("todo") or "complete this cell"
    prefix = f"Step {step}: " if step is not None else ""
    return [f"{indent}# TODO: {todo}", f"{indent}raise NotImplementedError({prefix + 'TODO: ' + todo!r})"]


def make_versions(
    source_nb: nbformat.NotebookNode, name: str = "source"
) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    """(student, solution): outputs cleared in both; graded cells marked ``lab.solution = true``."""
    student, solution = copy.deepcopy(source_nb), copy.deepcopy(source_nb)
    steps = cell_steps(source_nb)
    hidden_only: list[int] = []
    for index, (s_cell, a_cell) in enumerate(zip(student.cells, solution.cells, strict=True)):
        step = steps[index]
        pieces = _regions(s_cell.source, f"{name}, cell {index}")
        student_lines: list[str] = []
        solution_lines: list[str] = []
        for kind, indent, lines in pieces:
            if kind == "text":
                student_lines += lines
                solution_lines += lines
            elif kind == "SOLUTION":
                student_lines += _stub(s_cell, indent, step)
                solution_lines += lines
            else:  # HIDDEN TESTS: graders keep them, students never see them
                solution_lines += lines
        has_solution = any(kind == "SOLUTION" for kind, _, _ in pieces)
        if any(kind == "HIDDEN TESTS" for kind, _, _ in pieces) and not "\n".join(student_lines).strip():
            hidden_only.append(index)  # a hidden-check cell: the student version drops it
        for cell, lines in ((s_cell, student_lines), (a_cell, solution_lines)):
            cell.source = "\n".join(lines)
            if cell.cell_type == "code":
                cell.outputs = []
                cell.execution_count = None
            if has_solution:
                cell.metadata.setdefault("lab", {})["solution"] = True
    student.cells = [cell for index, cell in enumerate(student.cells) if index not in hidden_only]
    return student, solution


def release_notebook(source: Path, output: Path) -> list[Path]:
    """Write ``<stem>.ipynb`` (student) and ``<stem>_solution.ipynb`` into ``output``."""
    student, solution = make_versions(read_notebook(source), str(source))
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for nb, path in (
        (student, output / f"{source.stem}.ipynb"),
        (solution, output / f"{source.stem}_solution.ipynb"),
    ):
        if path.resolve() == source.resolve():
            raise LabError(f"release would overwrite the source '{source}': choose another -o folder")
        write_notebook(nb, path)
        written.append(path)
    return written
