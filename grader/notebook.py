"""Notebooks as the grader reads and writes them: validated reading (one clear error for a file
that is not a notebook), the lab step of every cell, and atomic writing."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from lab_utils.errors import LabError
from lab_utils.files import atomic_path, readable_file, shown


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Read and validate a notebook; a missing, corrupt or non-notebook file is one clear LabError."""
    readable_file(path, "notebook")
    try:
        nb = nbformat.from_dict(nbformat.read(path, as_version=4))  # old formats come back as v2 nodes
    except Exception as error:  # nbformat raises several types for malformed files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LabError(f"'{shown(path)}' is not a notebook: {shown(first)}") from None
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as error:
        raise LabError(f"'{shown(path)}' is not a valid notebook: {str(error).splitlines()[0]}") from None
    return nb


def cell_step(cell, current: int | None) -> int | None:
    """The lab step a cell belongs to: its ``lab.step`` metadata, else a "Step N" markdown heading."""
    step = cell.get("metadata", {}).get("lab", {}).get("step")
    if isinstance(step, int):
        return step
    if cell.cell_type == "markdown":
        match = re.search(r"^#+\s*Step\s+(\d+)", cell.source, flags=re.MULTILINE | re.IGNORECASE)
        if match:
            return int(match.group(1))
    return current


def cell_steps(nb: nbformat.NotebookNode) -> list[int | None]:
    """The step of every cell: its own marker, else the nearest one above it."""
    steps: list[int | None] = []
    step = None
    for cell in nb.cells:
        step = cell_step(cell, step)
        steps.append(step)
    return steps


def write_notebook(nb: nbformat.NotebookNode, path: Path) -> None:
    """nbformat.write to a temporary file, then rename: readers never see half a notebook."""
    with atomic_path(path) as tmp:
        nbformat.write(nb, tmp)
