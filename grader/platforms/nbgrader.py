"""nbgrader courses: their collected submissions graded by ``batch``, the scores written back.

``python -m grader batch COURSE/submitted -o RESULTS --nbgrader-assignment ps1
[--nbgrader-db COURSE/gradebook.db]``

- ``exchange_submissions`` reads nbgrader's layout of collected work, ``submitted/<student>/<assignment>/
  <notebook>.ipynb``, and keys each submission by the student id (``<student>__<notebook>`` when an
  assignment has several notebooks), so ``gradebook.csv`` has one row per student.
- ``write_scores`` puts each check's score into the course's gradebook database through nbgrader's
  own API (``nbgrader.api.Gradebook``): the source notebook's grade cells carry the checks' names as
  ``grade_id`` (``parameter_count``, ``adapter_gradients``, ``pixel_difference``), so each check's
  score lands on its cell as an automatic score, scaled to the cell's points; the reflections stay
  for manual grading in formgrader. The assignment must be in the database (``nbgrader
  generate_assignment`` put it there).
"""

from __future__ import annotations

import json
from pathlib import Path

from grader.batch import Submission
from grader.checks import CHECKS
from lab_utils.errors import LabError


def exchange_submissions(folder: Path, assignment: str) -> list[Submission]:
    """Every ``<student>/<assignment>/*.ipynb`` under ``folder``, keyed by student id.

    Raises:
        LabError: the folder is missing, or no student submitted the assignment.
    """
    if not folder.is_dir():
        raise LabError(f"submissions folder '{folder}' does not exist")
    found = []
    for student in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        notebooks = sorted((student / assignment).glob("*.ipynb"))
        for notebook in notebooks:
            key = student.name if len(notebooks) == 1 else f"{student.name}__{notebook.stem}"
            found.append(Submission(key, notebook, student=student.name))
    if not found:
        raise LabError(
            f"no submission of assignment '{assignment}' under '{folder}': nbgrader's layout is "
            f"submitted/<student>/{assignment}/<notebook>.ipynb: give batch the course's submitted/ folder"
        )
    return found


def write_scores(results: Path, database: Path, assignment: str) -> int:
    """Write every graded report's check scores into nbgrader's gradebook; returns the grades written.

    Raises:
        LabError: nbgrader is not installed, the database or the assignment is not there.
    """
    try:
        from nbgrader.api import Gradebook, MissingEntry
    except ImportError:
        raise LabError("--nbgrader-db needs nbgrader in this environment: pip install nbgrader") from None
    if not database.is_file():
        raise LabError(f"nbgrader gradebook '{database}' does not exist (the course's gradebook.db)")
    written = 0
    with Gradebook(f"sqlite:///{database.resolve()}") as gradebook:
        try:
            known = gradebook.find_assignment(assignment)
        except MissingEntry:
            raise LabError(
                f"assignment '{assignment}' is not in '{database}': run `nbgrader generate_assignment "
                f"{assignment}` in the course first"
            ) from None
        cells = {(nb.name, cell.name): cell.max_score for nb in known.notebooks for cell in nb.grade_cells}
        for path in sorted(results.glob("*/report.json")):
            report = json.loads(path.read_text())
            student, notebook = report.get("student"), Path(report.get("notebook", "")).stem
            if not student:
                continue
            gradebook.update_or_create_student(student)
            try:
                gradebook.find_submission(assignment, student)
            except MissingEntry:
                gradebook.add_submission(assignment, student)
            checks = {check["name"]: check for check in report.get("checks", [])}
            for (cell_notebook, cell_name), max_score in cells.items():
                if cell_notebook != notebook or cell_name not in CHECKS:
                    continue  # another notebook's cell, or a reflection (graded by hand in formgrader)
                check = checks.get(cell_name)  # None: the grader could not grade it (an error report)
                fraction = check["points"] / check["max_points"] if check and check["max_points"] else 0.0
                grade = gradebook.find_grade(cell_name, notebook, assignment, student)
                grade.auto_score = round(fraction * max_score, 4)
                grade.needs_manual_grade = False
                written += 1
            gradebook.db.commit()
    return written
