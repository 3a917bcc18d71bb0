"""Grade one notebook — the pipeline, read top to bottom: resolve the model once, execute the
notebook in a sandboxed kernel, read its artefacts (the trust boundary), run the checks in this
trusted process, and write the outputs.

With an output folder, the grader writes — each file atomically, results.json after every check so
a grader killed by a time limit still leaves the checks done so far:
``results.json`` (Gradescope's format), ``report.json`` (everything), ``feedback.md`` with
``baseline.png``, ``adapted.png`` and ``difference.png`` beside it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from grader.artefacts import REGENERATED, keep_artefacts, read_artefacts
from grader.checks import load_base, verify
from grader.checks.memo import Memo
from grader.config import GradingConfig
from grader.environment import fingerprint
from grader.execute.processes import OVERLAP_MEMORY, memory_limit
from grader.execute.run import execute_notebook, latest_snapshot
from grader.execute.sandbox import runs_root
from grader.files import write_json
from grader.notebook import read_notebook
from grader.outputs.feedback import write_feedback
from grader.outputs.gradescope import write_results
from grader.types import GradeReport, submission_key
from lab_utils.models import ModelSpec, resolve_model


def reflections(nb: nbformat.NotebookNode) -> list[dict]:
    """The learner's written answers: markdown cells the release marked as theirs to write."""
    answers = []
    for index, cell in enumerate(nb.cells):
        lab = cell.get("metadata", {}).get("lab", {})
        if cell.cell_type == "markdown" and lab.get("solution"):
            answers.append({"cell": index, "step": lab.get("step"), "text": cell.source})
    return answers


def adapter_notes(artefacts) -> list[str]:
    """Which adapter was graded, when the U-Net carried several."""
    source = artefacts.adapter_source
    if not source or len(source["adapters"]) < 2:
        return []
    others = ", ".join(f"'{a}'" for a in source["adapters"] if a != source["adapter"])
    return [
        f"graded the active adapter '{source['adapter']}' of `{source['variable']}` (also there: {others})"
    ]


class Warm:
    """What verification needs that depends on the model alone — the grader's imports, its base
    pipeline, the environment fingerprint — loaded in a thread of this process while the learner's
    kernel runs (no learner code ever runs in this process). The thread ends before the checks
    compute: torch work from two live threads ran 2× slower on 2 cores. Both base models in memory
    at once need room: below OVERLAP_MEMORY (Gradescope's 0.75 GB machine) one grading loads its own
    after the kernel has ended, as before.

    ``keep=True`` (a batch's worker): kept for the process's next gradings, which then start with
    it loaded; each of them verifies on its own copy of the base U-Net (a learner's adapter never
    touches another's grading), and images the untouched base made from a record are made once.
    """

    def __init__(self, spec: ModelSpec, keep: bool = False) -> None:
        self.spec, self.keep = spec, keep
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="base-model")
        self._environment = self._pool.submit(fingerprint, spec)
        overlap = keep or memory_limit() >= OVERLAP_MEMORY
        self._base = self._pool.submit(load_base, spec) if overlap else None
        self._regenerations: dict = {}  # grader.checks.context's base regenerations, this process's

    def settle(self) -> float:
        """Wait for the thread's work to end; the seconds waited (0 once it has)."""
        began = time.monotonic()
        self._pool.shutdown(wait=True)
        return time.monotonic() - began

    @property
    def environment(self) -> dict:
        return self._environment.result()

    def base(self) -> dict:
        """What :func:`grader.checks.verify` takes: the base pipeline loading, or kept and shared."""
        if self.keep and self._base is not None:
            return {"shared": (self._base.result(), self._regenerations)}
        return {"base": self._base}


def grade_notebook(
    notebook: str | Path,
    model: str | ModelSpec = "tiny",
    config: GradingConfig | None = None,
    output: Path | None = None,
    submission: str | None = None,
    student: str | None = None,
    warm: Warm | None = None,
) -> GradeReport:
    """Execute ``notebook`` with ``model`` and run every check; write results into ``output``.

    ``warm``: the grader's model-only state kept across the gradings of one process (a batch's
    worker, :mod:`grader.worker`); by default this grading starts its own.

    Raises:
        LabError: the notebook or the model cannot be used at all (one line saying why).
    """
    config = config or GradingConfig()
    start = time.monotonic()
    path = Path(notebook)
    nb = read_notebook(path)
    spec = resolve_model(
        model
    )  # a bad model is the instructor's error, not the learner's: fail before running
    report = GradeReport(
        submission=submission or path.stem,
        notebook=str(path),
        model=str(spec),
        key=submission_key(path.read_bytes(), config, spec.key),
        status="running",
        max_score=config.max_score,
        environment={},  # filled in by Warm's thread while the kernel runs (it imports torch: ~1 s)
        reflections=reflections(nb),
        student=student,
    )

    def save() -> None:
        report.seconds = round(time.monotonic() - start, 2)
        if output is not None:
            write_results(report, output / "results.json")
            write_json(output / "report.json", report.to_dict())

    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    save()
    warm = warm if warm is not None and warm.spec.key == spec.key else Warm(spec)
    with tempfile.TemporaryDirectory(prefix="artefacts-", dir=runs_root()) as tmp:
        # 1. execute: the learner's code runs in a sandboxed kernel, never in this process; it sees
        # neither the submission's folder (in a batch: every other submission) nor the results.
        # Meanwhile ``warm`` loads the grader's base model in a thread of this process (step 0).
        artefact_dir = Path(tmp)
        private = (path.resolve().parent, *((output.resolve(), output.resolve().parent) if output else ()))
        try:
            execution = execute_notebook(nb, spec, artefact_dir, config, hidden=private)
        finally:
            waited = warm.settle()
        timings = execution.timings
        timings.add("base model: wait after the kernel", waited)
        report.environment = warm.environment
        # 2. artefacts: files only, every field checked (the kernel could write anything)
        with timings.stage("artefacts read"):
            snapshot = latest_snapshot(artefact_dir)
            artefacts = read_artefacts(snapshot)
        report.execution = {
            "steps_total": execution.steps_total,
            "steps_completed": execution.steps_completed,
            "failure": str(execution.failure) if execution.failure else None,
            "cells_run": execution.cells_run,
            "seconds": round(execution.seconds, 2),
            "snapshot": snapshot.name,
            "artefact_errors": artefacts.errors,
            "sandbox": execution.sandbox,
            "isolation_gaps": execution.isolation,
            "adapter": artefacts.adapter_source,
            # what `python -m grader regrade` needs to recompute the checks without a rerun
            "failure_step": execution.failure.step if execution.failure else None,
            "failure_reason": execution.failure.reason if execution.failure else None,
            "steps_in_notebook": execution.steps_in_notebook,
            "run_settings": config.run_settings(),
        }
        report.notes = execution.notes + adapter_notes(artefacts)
        report.timings = timings.stages  # the same dict: later stages appear as they finish
        if output is not None:
            with timings.stage("artefacts kept"):
                keep_artefacts(snapshot, output)
        save()
        # 3. checks: recomputed here, on the grader's own base model; the images regenerated are
        # kept beside the results, where a regrade finds them again (grader.checks.memo.Memo)
        memo = None
        if output is not None:  # this grading's images only: none is taken from an earlier one
            shutil.rmtree(output / REGENERATED, ignore_errors=True)
            memo = Memo(output / REGENERATED, report.environment, reuse=False)
        for result in verify(
            artefacts, spec, config, execution.failure, timings=timings, memo=memo, **warm.base()
        ):
            report.checks.append(result)
            report.score = sum(c.points for c in report.checks)
            save()
        # 4. outputs: results.json and report.json above; the learner's feedback
        if output is not None:
            with timings.stage("feedback written"):
                write_feedback(report, artefacts, output)
    report.passed = bool(report.checks) and all(c.passed for c in report.checks)
    report.status = "graded"
    save()
    return report
