"""The SD LoRA Lab autograder: execute a notebook headlessly, then verify what it produced.

The pipeline, one stage per module or package, each importing only the stages before it:

- ``types`` — the shared data (``CheckResult``, ``GradeReport``, ``StepFailure``, the submission key),
  standard library only; ``config`` — the typed grading config and its one validator; ``notebook`` —
  reading notebooks and their steps;
- ``execute/`` — the notebook in a fresh kernel (nbclient), inside the sandbox, through the kernel entry;
- ``artefacts`` — the trust boundary: what the kernel saved, read back as untrusted files;
- ``checks/`` — one module per check, each declared once, run by ``verify``;
- ``outputs/`` — the console table, Gradescope's results.json, the feedback, the gradebook;
- ``grade`` — one submission through the stages; ``batch`` — many, as separate processes;
  ``release`` — student and solution notebooks from one source; ``selfcheck`` — ``grader.check()``;
- ``platforms/`` — Gradescope's autograder zip and its run, nbgrader's exchange layout and gradebook.

Names are imported on first use, so the sandbox launcher, the kernel entry point and the light
commands (``gradebook``, ``release``) start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GradingConfig": "grader.config",
    "load_config": "grader.config",
    "GradeReport": "grader.types",
    "CheckResult": "grader.types",
    "grade_notebook": "grader.grade",
    "check": "grader.selfcheck",
    "course_config": "grader.selfcheck",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'grader' has no attribute {name!r}")
