"""The SD LoRA Lab autograder: execute a notebook headlessly, then verify what it produced.

Names are imported on first use, so the sandbox launcher and the kernel entry point
(``python -m grader.sandbox``, ``python -m grader.kernel``) start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GradingConfig": "grader.config",
    "load_config": "grader.config",
    "GradeReport": "grader.grade",
    "grade_notebook": "grader.grade",
    "check": "grader.selfcheck",
    "course_config": "grader.selfcheck",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'grader' has no attribute {name!r}")
