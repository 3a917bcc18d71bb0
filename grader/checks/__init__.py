"""The checks, each declared once in its own module (name, title, step, points, visibility, options,
causes, and the function that computes it) and registered here, in grading order. Config validation,
verification, results, feedback and the gradebook all read :data:`CHECKS`.

Adding a check: write ``grader/checks/<name>.py`` with ``CHECK = Check(..., run=run)`` and add it to
the tuple below (docs/architecture.md walks through it with the two step-5 checks).

Every check recomputes from the artefacts on a freshly loaded base model: the parameter count from
the saved adapter on the grader's own U-Net, the gradients from the grader's own forward/backward,
the pixel difference from the grader's own regeneration of both images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from grader.checks import (
    adapter_gradients,
    export_reloads,
    held_out_evaluation,
    parameter_count,
    pixel_difference,
)
from grader.types import Check, CheckResult, StepFailure, Timings

if TYPE_CHECKING:
    from concurrent.futures import Future

    from grader.artefacts import Artefacts
    from grader.checks.memo import Memo
    from grader.config import GradingConfig
    from lab_utils.models import ModelSpec

CHECKS: dict[str, Check] = {
    check.name: check
    for check in (
        parameter_count.CHECK,
        adapter_gradients.CHECK,
        pixel_difference.CHECK,
        export_reloads.CHECK,  # step 5: optional, on when a checks file names it
        held_out_evaluation.CHECK,  # step 5: optional
    )
}

STEP_FAILED = "step_failed"  # the cause of a check whose step (or an earlier one) did not finish


def load_base(model: ModelSpec):
    """The grader's base pipeline (imports included): what a grading starts in a thread while the
    learner's kernel runs — it reads nothing the kernel wrote."""
    from grader.checks.context import load_base

    return load_base(model)


def verify(
    artefacts: Artefacts,
    model: ModelSpec,
    config: GradingConfig,
    failure: StepFailure | None = None,
    only: Callable[[str], bool] = lambda name: True,
    timings: Timings | None = None,
    base: Future | None = None,
    shared: tuple | None = None,
    memo: Memo | None = None,
) -> Iterator[CheckResult]:
    """Yield each check's result as soon as it is computed (callers write results incrementally).

    When the notebook failed at step N, checks of steps before N are computed from the last snapshot
    and keep their credit; checks of step N and later fail with "step N failed: <reason>".
    ``memo``: where the images regenerated are kept, and found again by a regrade.
    """
    timings = timings if timings is not None else Timings()
    with timings.stage("grader imports"):
        from grader.checks.context import Context

    context = Context.load(artefacts, model, config, failure, timings, base, shared, memo)
    for name, settings in config.checks.items():
        if not only(name):
            continue
        check = CHECKS[name]
        if failure is not None and (failure.step is None or settings.step >= failure.step):
            result = check.result().fail(STEP_FAILED, str(failure))
        else:
            with timings.stage(f"check {name}"):
                result = check.run(context, settings)
        result.step, result.visibility, result.max_points = (
            settings.step,
            settings.visibility,
            settings.points,
        )
        result.points = settings.points if result.passed else 0.0
        yield result
