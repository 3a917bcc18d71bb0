"""The SD LoRA Lab autograder: execute a notebook headlessly, then verify what it produced."""

from grader.config import GradingConfig
from grader.grade import GradeReport, grade_notebook

__all__ = ["GradeReport", "GradingConfig", "grade_notebook"]
