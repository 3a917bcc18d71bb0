"""The SD LoRA Lab autograder: execute a notebook headlessly, then verify what it produced."""

from grader.config import GradingConfig, load_config
from grader.grade import GradeReport, grade_notebook
from grader.selfcheck import check, course_config

__all__ = ["GradeReport", "GradingConfig", "check", "course_config", "grade_notebook", "load_config"]
