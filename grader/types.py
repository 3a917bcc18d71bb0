"""The data every stage of the grader shares: what a check found, one grading's report, how the
execution went, and the key a batch resumes by. Standard library only, so any stage — the CSV
merge of ``python -m grader gradebook`` included — can read them without torch."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Option:
    """One configuration key: the TOML types it takes, its default, what it means, and its rule
    (which returns what is wrong with a value, e.g. "must be ≥ 0 (got -1)", or None)."""

    types: type | tuple[type, ...]
    default: Any
    doc: str
    rule: Callable[[Any], str | None] | None = None


# Rules for Option.rule: each returns what is wrong with a value, or None.


def show(value: object) -> str:
    """A value as a one-line error quotes it: numbers plain, anything else repr()."""
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else repr(value)


def at_least(minimum: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= minimum else f"must be ≥ {minimum:g} (got {show(v)})"


def positive(value: Any) -> str | None:
    return None if value > 0 else f"must be positive (got {show(value)})"


def one_of(choices: tuple[str, ...], quoted: bool = False) -> Callable[[Any], str | None]:
    names = " or ".join(f"'{c}'" for c in choices) if quoted else ", ".join(choices)
    return lambda v: None if v in choices else f"must be {'' if quoted else 'one of '}{names} (got {v!r})"


@dataclass(frozen=True)
class Check:
    """A check, declared once: everything config validation, verification, results, feedback and
    the gradebook know about it. ``run(context, settings)`` computes it (grader/checks/)."""

    name: str
    title: str
    step: int
    run: Callable[..., CheckResult]
    points: float = 1.0
    visibility: str = "visible"
    optional: bool = False  # off unless a checks file names it (step 5)
    options: Mapping[str, Option] = field(default_factory=dict)  # its own keys in [checks.NAME]
    causes: Mapping[str, str] = field(default_factory=dict)  # cause id → what it means, for class summaries
    column: str = ""  # its gradebook column (default: its name)

    @property
    def gradebook_column(self) -> str:
        return self.column or self.name

    def result(self, **fields: Any) -> CheckResult:
        """A result of this check, failed until the check says otherwise."""
        return CheckResult(name=self.name, title=self.title, step=self.step, **fields)


@dataclass
class CheckResult:
    """One check's verdict, as the outputs (table, results.json, feedback, gradebook) show it."""

    name: str
    title: str
    passed: bool = False
    measured: str = "n/a"
    expected: str = ""
    points: float = 0.0
    max_points: float = 0.0
    value: float | None = None
    cause: str | None = None  # for a failure: the most likely cause and the fix, in words
    cause_id: str | None = (
        None  # which of the check's declared causes (grader/checks): the gradebook counts them
    )
    step: int | None = None  # the notebook step that earns it
    visibility: str = "visible"  # "hidden": feedback shows pass/fail only
    details: dict = field(default_factory=dict)  # numbers behind the verdict (noise floor, ...)

    def fail(self, cause_id: str, cause: str) -> CheckResult:
        """Record a failure with one of the check's declared causes; returns ``self``."""
        self.passed, self.cause_id, self.cause = False, cause_id, cause
        return self


@dataclass
class StepFailure:
    """Where the notebook stopped and why, in the learner's words ("step 3 failed: …")."""

    step: int | None
    reason: str

    def __str__(self) -> str:
        where = f"step {self.step}" if self.step is not None else "the notebook"
        return f"{where} failed: {self.reason}"


@dataclass
class Timings:
    """Wall seconds per stage of one grading, in the order the stages first ran (report.json's
    ``timings``; ``python -m grader NOTEBOOK --timings`` prints them). A stage entered twice adds up."""

    stages: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.stages[name] = round(self.stages.get(name, 0.0) + seconds, 3)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - start)


@dataclass
class GradeReport:
    """Everything one grading found; ``report.json`` is this, and every output is made from it."""

    submission: str
    notebook: str
    model: str
    key: str  # submission_key(): a batch skips a submission already graded with the same key
    status: str  # "running" until every check is done, then "graded" ("error" | "timeout" from a batch)
    max_score: float
    checks: list[CheckResult] = field(default_factory=list)
    score: float = 0.0
    passed: bool = False
    execution: dict = field(default_factory=dict)
    seconds: float = 0.0
    environment: dict = field(default_factory=dict)
    reflections: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    student: str | None = None  # the student id, where a course platform gave one (nbgrader's exchange)
    timings: dict[str, float] = field(default_factory=dict)  # Timings.stages: where the seconds went

    def to_dict(self) -> dict:
        return asdict(self)


def submission_key(notebook_bytes: bytes, config: object, model: object) -> str:
    """A content hash of the notebook, the grading config and the resolved model."""
    digest = hashlib.sha256(notebook_bytes)
    digest.update(repr((config, model)).encode())
    return digest.hexdigest()[:20]
