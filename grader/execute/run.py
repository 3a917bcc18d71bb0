"""Execute a notebook headlessly with nbclient: a fresh kernel in a sandbox (grader/execute/sandbox.py),
per-cell and total timeouts, capped output, and the grader's artefact cell after each step."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from grader.artefacts import save_cell_source
from grader.config import GradingConfig
from grader.execute.processes import descendants, memory_exhausted
from grader.execute.sandbox import UNSANDBOXED_NOTE, Sandbox, allow_writes, prepare, runs_root
from grader.notebook import cell_steps
from grader.types import StepFailure, Timings
from lab_utils.models import MODEL_ENV, ModelSpec

KERNEL_NAME = "sd-lora-lab-grader"
SKIP_TAG = "self-check"  # cells the learner runs for themselves; the grader does not
SAVE_TIMEOUT = 300.0  # seconds for the artefact cell (saving an SD 1.5 adapter takes < 1 s)


@dataclass
class Execution:
    """How the run went: the last step whose cells all finished, and the first failure."""

    steps_total: int
    steps_completed: int
    steps_in_notebook: int = 0  # steps_total leaves out those no check reads (they are not run)
    failure: StepFailure | None = None
    seconds: float = 0.0
    cells_run: int = 0
    notes: list[str] = field(default_factory=list)
    sandbox: str = ""  # the sandbox mode used
    isolation: list[str] = field(default_factory=list)  # protections this machine could not enforce
    output_dropped: int = 0  # bytes of output beyond the cap
    timings: Timings = field(default_factory=Timings)  # sandbox, kernel start, each step, snapshots


def _kernel_manager(kernels_dir: Path, sandbox: Sandbox) -> AsyncKernelManager:
    """A kernel that runs this interpreter (the environment that has lab_utils) through the
    sandbox's launcher, whatever kernels the user has installed. It talks to the grader over Unix
    sockets in the run's folder, so it needs no network."""
    spec = kernels_dir / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {"argv": sandbox.kernel_argv(), "display_name": "SD LoRA Lab grader", "language": "python"}
        )
    )
    return AsyncKernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels_dir)]),
        transport="ipc",
        connection_file=str(sandbox.run_dir / "conn" / "kernel.json"),
    )


class _CappedClient(NotebookClient):
    """nbclient with a cap on the output it keeps: 50 MB of prints cannot exhaust the grader."""

    def __init__(self, *args, output_limit: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.output_limit = output_limit
        self.output_bytes = 0
        self.output_dropped = 0

    def output(self, outs, msg, display_id, cell_index):
        if msg.get("msg_type") in ("stream", "display_data", "execute_result", "update_display_data"):
            size = len(json.dumps(msg.get("content", {}), default=str))
            if self.output_bytes + size > self.output_limit:
                if not self.output_dropped:
                    outs.append(
                        nbformat.v4.new_output(
                            "stream",
                            name="stderr",
                            text="[the grader dropped further output: over "
                            f"{self.output_limit / 2**20:g} MB]\n",
                        )
                    )
                self.output_dropped += size
                return None
            self.output_bytes += size
        return super().output(outs, msg, display_id, cell_index)


def kernel_environment(model: ModelSpec) -> dict[str, str]:
    """What the kernel must know besides the allow-listed environment: the model (a folder as an
    absolute path: the kernel runs in its own folder), and where the model files already are (the
    kernel has no network and its own HOME)."""
    from huggingface_hub import constants

    return {
        MODEL_ENV: model.source,
        "MPLBACKEND": os.environ.get("MPLBACKEND", "module://matplotlib_inline.backend_inline"),
        "HF_HOME": str(constants.HF_HOME),
        "HF_HUB_CACHE": str(constants.HF_HUB_CACHE),
    }


def make_model_available(model: ModelSpec) -> None:
    """Before the kernel starts (it has no network): check ``tiny``'s weights are there, download a
    named hub model once. Raises LabError for a model that cannot be used."""
    if model.kind == "tiny":
        from lab_utils.tiny import tiny_model_dir

        tiny_model_dir()
    elif model.kind == "hub":
        from huggingface_hub import constants, snapshot_download

        if not constants.HF_HUB_OFFLINE:
            snapshot_download(model.source)


def execute_notebook(
    nb: nbformat.NotebookNode,
    model: ModelSpec,
    artefact_dir: Path,
    config: GradingConfig,
    hidden: tuple[Path, ...] = (),
) -> Execution:
    """Run every code cell in order in a fresh kernel, stopping at the first error. Artefacts are
    snapshotted into ``artefact_dir/after-step-N`` as each step finishes and into
    ``artefact_dir/final`` at the end (if the kernel is still alive). Cells tagged ``self-check``
    are skipped. ``hidden``: folders the kernel must not see (the sandbox's ``prepare``).

    Raises:
        LabError: no sandbox can be built here (before anything runs). Never raises for anything
            the notebook does.
    """
    cell_timeout, total_timeout = config.timeouts.cell, config.timeouts.total
    output_mb = config.limits.output_mb
    nb = copy.deepcopy(nb)  # outputs and the grader's cell are written into this copy
    steps = cell_steps(nb)
    last_step = max((s for s in steps if s is not None), default=0)
    # steps after the last one a check reads (step 5, optional, when its checks are off) are not run:
    # their cells can change nothing a check computes, and a class's night of grading is shorter
    graded_through = max((s.step for s in config.checks.values()), default=last_step)
    execution = Execution(
        steps_total=min(last_step, graded_through), steps_completed=0, steps_in_notebook=last_step
    )
    if last_step > graded_through:
        skipped = [str(n) for n in range(graded_through + 1, last_step + 1)]
        execution.notes.append(
            f"step {skipped[0]} was not run: none of this course's checks reads it"
            if len(skipped) == 1
            else f"steps {', '.join(skipped)} were not run: none of this course's checks reads them"
        )
    start = time.monotonic()
    deadline = start + total_timeout
    hit_total = {"value": False}

    def timeout_for(cell) -> int:
        remaining = deadline - time.monotonic()
        if remaining <= cell_timeout:
            hit_total["value"] = True
        return max(1, int(min(cell_timeout, remaining)))

    timings = execution.timings
    with timings.stage("model files"):
        make_model_available(model)
    with tempfile.TemporaryDirectory(prefix="run-", dir=runs_root()) as tmp:
        model_paths = (model.source, model.config) if model.kind in ("folder", "single_file") else ()
        with timings.stage("sandbox prepare"):
            sandbox = prepare(
                Path(tmp) / "run", config.limits, hidden, needed=tuple(p for p in model_paths if p)
            )
            artefact_dir.mkdir(parents=True, exist_ok=True)
            allow_writes(sandbox, artefact_dir)
        execution.sandbox = sandbox.mode
        if sandbox.mode == "none":
            execution.notes.append(UNSANDBOXED_NOTE)
        env = sandbox.environment(kernel_environment(model))
        client = _CappedClient(
            nb,
            output_limit=int(output_mb * 2**20),
            km=_kernel_manager(Path(tmp) / "kernels", sandbox),
            timeout=int(cell_timeout),
            timeout_func=timeout_for,
            startup_timeout=int(config.timeouts.startup),
            allow_errors=False,
            interrupt_on_timeout=False,  # a loop that swallows KeyboardInterrupt would hang nbclient
            shutdown_kernel="immediate",
            resources={"metadata": {"path": str(sandbox.workdir)}},
        )
        current_step: int | None = None  # the step of the last code cell that ran
        completed_through = 0
        kernel_start = time.monotonic()
        try:
            # The kernel's own stderr (ZMQ notices, "parent exited") goes to a log, not the grader's
            # terminal. cleanup_kc=True: nbclient shuts down only kernels of managers it created
            # itself, and this one is ours — without it a timed-out kernel would keep running.
            with (
                open(Path(tmp) / "kernel.log", "wb") as log,
                client.setup_kernel(env=env, stdout=log, stderr=log, cleanup_kc=True),
            ):
                timings.add("kernel start", time.monotonic() - kernel_start)
                execution.isolation = sandbox.isolation_notes()  # written before any learner code
                kernel_processes = descendants(os.getpid())  # the kernel as started, no learner code yet
                kernel_alive = True
                for index, cell in enumerate(list(nb.cells)):
                    if cell.cell_type != "code" or SKIP_TAG in cell.metadata.get("tags", []):
                        continue
                    step = steps[index]
                    if step is not None and step > graded_through:
                        continue
                    if step != current_step and current_step is not None:
                        # step `current_step` finished: snapshot it, so a kernel that dies later
                        # still leaves what the earlier steps produced (partial credit)
                        completed_through = current_step
                        _save(client, artefact_dir / f"after-step-{current_step}", execution)
                    current_step = step
                    try:
                        with timings.stage(f"step {step}" if step is not None else "setup cells"):
                            client.execute_cell(cell, index)
                        execution.cells_run += 1
                    except CellTimeoutError:
                        reason = (
                            f"the notebook ran past the total timeout of {total_timeout:g} s"
                            if hit_total["value"]
                            else f"a cell ran past the per-cell timeout of {cell_timeout:g} s"
                        )
                        execution.failure = StepFailure(step, reason)
                        kernel_alive = False  # nbclient does not interrupt: the kernel is stuck
                        break
                    except DeadKernelError:
                        execution.failure = StepFailure(step, _death_reason(sandbox))
                        kernel_alive = False
                        break
                    except CellExecutionError as error:
                        execution.failure = StepFailure(step, _error_line(error))
                        if sandbox.kill_strays(kernel_processes):
                            # copies of the kernel (a fork) shared its sockets: it cannot be trusted to
                            # run the artefact cell, and the earlier steps' snapshots are all it needs
                            execution.notes.append("processes the notebook left running were killed")
                            kernel_alive = False
                        break
                if execution.failure is None and current_step is not None:
                    completed_through = current_step
                if kernel_alive:
                    _save(client, artefact_dir / "final", execution)
        except DeadKernelError:
            execution.failure = execution.failure or StepFailure(current_step, _death_reason(sandbox))
        except RuntimeError as error:  # kernel failed to start
            execution.failure = StepFailure(None, f"the kernel did not start: {error}")
        finally:
            ended = time.monotonic()
            sandbox.kill_all()  # every process the kernel started, whatever it did to escape
            timings.add("kernel stop", time.monotonic() - ended)
        execution.output_dropped = client.output_dropped
        if client.output_dropped:
            execution.notes.append(
                f"output over {output_mb:g} MB was dropped ({client.output_dropped / 2**20:.1f} MB)"
            )
    execution.steps_completed = completed_through
    execution.seconds = time.monotonic() - start
    return execution


def latest_snapshot(artefact_dir: Path) -> Path:
    """The most recent artefact snapshot: ``final`` if the kernel lived to the end, else the one
    after the last step that finished."""
    if (artefact_dir / "final" / "manifest.json").is_file():
        return artefact_dir / "final"
    steps = sorted(
        (int(p.name.rsplit("-", 1)[1]), p)
        for p in artefact_dir.glob("after-step-*")
        if p.name.rsplit("-", 1)[1].isdigit() and (p / "manifest.json").is_file()
    )
    return steps[-1][1] if steps else artefact_dir / "final"


def _save(client: NotebookClient, artefact_dir: Path, execution: Execution) -> None:
    """Append the grader's artefact cell (nbclient stores outputs into ``nb.cells``) and run it."""
    cell = nbformat.v4.new_code_cell(save_cell_source(artefact_dir))
    client.nb.cells.append(cell)
    index = len(client.nb.cells) - 1
    saved_timeout_func = client.timeout_func
    client.timeout_func = lambda _cell: int(SAVE_TIMEOUT)
    try:
        with execution.timings.stage("artefact snapshots"):
            client.execute_cell(cell, index, store_history=False)
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
        execution.notes.append(f"saving the artefacts failed: {_error_line(error)}")
    finally:
        client.timeout_func = saved_timeout_func


def _death_reason(sandbox: Sandbox) -> str:
    if memory_exhausted(sandbox):
        return f"out of memory: the kernel went past its {sandbox.limits.memory_gb:g} GB limit and was killed"
    return "the kernel died (os._exit, a crash or out of memory)"


def _error_line(error: Exception) -> str:
    """The learner-facing line of a cell error: 'NotImplementedError: Step 2: ...'."""
    ename = getattr(error, "ename", None)
    evalue = getattr(error, "evalue", None)
    lowered = str(evalue).lower()
    if ename and (
        "OutOfMemoryError" in ename or "cuda out of memory" in lowered or "out of gpu memory" in lowered
    ):
        return f"out of GPU memory ({ename}: {str(evalue).splitlines()[0] if evalue else ''})"
    if ename == "MemoryError":
        return "out of memory (MemoryError): the kernel reached its memory limit"
    if ename:
        return f"{ename}: {evalue}".strip().rstrip(":")
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
