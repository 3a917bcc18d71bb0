"""One source notebook → the student notebook and the solution notebook.

Markers are nbgrader's and are matched as nbgrader matches them — the marker text anywhere in a
line, so ``### BEGIN SOLUTION``, ``# BEGIN SOLUTION`` and ``### BEGIN SOLUTION  # note`` all open a
region: ``BEGIN SOLUTION`` / ``END SOLUTION`` (a region the student writes) and ``BEGIN HIDDEN
TESTS`` / ``END HIDDEN TESTS`` (removed from the student version). A cell nbgrader marks as a
solution (``nbgrader.solution: true``) without markers is a solution as a whole. The student's stub
raises with the cell's ``lab.todo`` text, so running the unfinished notebook stops at the first
TODO with a message saying what to write — except in a cell marked ``lab.optional``, whose stub is the
TODO comment alone (the cell's own code prints that it was skipped). Before anything is written,
every student cell is checked:
no marker and no line of a solution or hidden-test region may survive (one error naming the cell).
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nbformat

from grader.notebook import cell_steps, read_notebook, write_notebook
from lab_utils.errors import LabError

MARKDOWN_STUB = "_Your answer here._"
SOLUTION, HIDDEN = "SOLUTION", "HIDDEN TESTS"


@dataclass(frozen=True)
class Markers:
    """The region delimiters (nbgrader's defaults), each matched anywhere in a line."""

    begin_solution: str = "BEGIN SOLUTION"
    end_solution: str = "END SOLUTION"
    begin_hidden: str = "BEGIN HIDDEN TESTS"
    end_hidden: str = "END HIDDEN TESTS"

    def match(self, line: str) -> tuple[str, str] | None:
        """("BEGIN" | "END", SOLUTION | HIDDEN) for a marker line, else None."""
        for edge, kind, text in (
            ("BEGIN", HIDDEN, self.begin_hidden),
            ("END", HIDDEN, self.end_hidden),
            ("BEGIN", SOLUTION, self.begin_solution),
            ("END", SOLUTION, self.end_solution),
        ):
            if text in line:
                return edge, kind
        return None

    def texts(self) -> tuple[str, ...]:
        return (self.begin_solution, self.end_solution, self.begin_hidden, self.end_hidden)


def _regions(source: str, where: str, markers: Markers) -> list[tuple[str, str, list[str]]]:
    """Split ``source`` into ('text' | SOLUTION | HIDDEN, indent, lines) pieces."""
    pieces: list[tuple[str, str, list[str]]] = [("text", "", [])]
    open_kind: str | None = None
    for number, line in enumerate(source.splitlines(), 1):
        match = markers.match(line)
        if match is None:
            pieces[-1][2].append(line)
            continue
        edge, kind = match
        indent = line[: len(line) - len(line.lstrip())]
        if edge == "BEGIN":
            if open_kind is not None:
                raise LabError(f"{where}, line {number}: 'BEGIN {kind}' inside an open {open_kind} region")
            open_kind = kind
            pieces.append((kind, indent, []))
        else:
            if open_kind != kind:
                raise LabError(f"{where}, line {number}: 'END {kind}' without a matching BEGIN")
            open_kind = None
            pieces.append(("text", "", []))
    if open_kind is not None:
        raise LabError(f"{where}: 'BEGIN {open_kind}' is never closed")
    return pieces


def _whole_cell_solution(cell) -> bool:
    """nbgrader's solution cell: ``metadata.nbgrader.solution`` true."""
    nbgrader = cell.get("metadata", {}).get("nbgrader", {})
    return isinstance(nbgrader, dict) and nbgrader.get("solution") is True


def _stub(cell, indent: str, step: int | None) -> list[str]:
    if cell.cell_type == "markdown":
        return [MARKDOWN_STUB]
    lab = cell.get("metadata", {}).get("lab", {})
    todo = lab.get("todo") or "complete this cell"
    if lab.get("optional"):  # the cell's own code says it was skipped while this is left
        return [f"{indent}# TODO (optional: leave it and the cell prints that it was skipped): {todo}"]
    prefix = f"Step {step}: " if step is not None else ""
    return [f"{indent}# TODO: {todo}", f"{indent}raise NotImplementedError({prefix + 'TODO: ' + todo!r})"]


def _check_no_leak(pieces, student_lines: list[str], markers: Markers, where: str) -> None:
    """Refuse a student cell that keeps a marker, or a line of a solution or hidden-test region more
    often than the cell's own text outside those regions has it."""
    for line in student_lines:
        if any(text in line for text in markers.texts()):
            raise LabError(f"{where}: the student version would keep the marker line {line.strip()!r}")
    hidden = Counter(line.strip() for kind, _, lines in pieces if kind != "text" for line in lines)
    shown = Counter(line.strip() for kind, _, lines in pieces if kind == "text" for line in lines)
    kept = Counter(line.strip() for line in student_lines)
    for line in hidden:
        if line and kept[line] > shown[line]:
            raise LabError(f"{where}: the student version would show the solution line {line!r}")


def make_versions(
    source_nb: nbformat.NotebookNode, name: str = "source", markers: Markers | None = None
) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    """(student, solution): outputs cleared in both; graded cells marked ``lab.solution = true``.

    Raises:
        LabError: broken markers, or a student cell that would still show a solution (names the cell).
    """
    markers = markers or Markers()
    student, solution = copy.deepcopy(source_nb), copy.deepcopy(source_nb)
    steps = cell_steps(source_nb)
    hidden_only: list[int] = []
    for index, (s_cell, a_cell) in enumerate(zip(student.cells, solution.cells, strict=True)):
        step, where = steps[index], f"{name}, cell {index}"
        pieces = _regions(s_cell.source, where, markers)
        if _whole_cell_solution(s_cell) and not any(kind == SOLUTION for kind, _, _ in pieces):
            # the whole cell is the answer (hidden-test regions in it stay hidden)
            pieces = [
                (SOLUTION if k == "text" else k, i, lines) for k, i, lines in pieces if k != "text" or lines
            ]
        student_lines: list[str] = []
        solution_lines: list[str] = []
        for kind, indent, lines in pieces:
            if kind == "text":
                student_lines += lines
                solution_lines += lines
            elif kind == SOLUTION:
                student_lines += _stub(s_cell, indent, step)
                solution_lines += lines
            else:  # HIDDEN TESTS: graders keep them, students never see them
                solution_lines += lines
        _check_no_leak(pieces, student_lines, markers, where)
        has_solution = any(kind == SOLUTION for kind, _, _ in pieces)
        if any(kind == HIDDEN for kind, _, _ in pieces) and not "\n".join(student_lines).strip():
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
