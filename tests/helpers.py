"""What the tests share (the one helper module: test modules never import each other).

- paths, the solution's edit targets, and notebook builders (``solution_with``, ``cells``);
- ``run_grader``: ``python -m grader`` in a subprocess;
- ``lab_artefacts``: the lab's four steps run in this process on the built-in model and saved with
  the grader's own saver — hand-built artefacts, for testing the checks' verdicts and messages
  without executing a notebook (``grade_artefacts`` runs the checks on them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "notebooks" / "sd_lora_lab_solution.ipynb"
STUDENT = ROOT / "notebooks" / "sd_lora_lab.ipynb"
SOURCE = ROOT / "notebooks" / "source" / "sd_lora_lab.ipynb"
CHECKS_FILE = ROOT / "notebooks" / "source" / "sd_lora_lab.checks.toml"

FAST = dict(steps=8, guidance=5.0)  # fewer denoising steps: same mechanics, faster tests

# edit targets in the solution notebook
LR0 = ("TRAIN_STEPS, LEARNING_RATE = 50, 3e-3", "TRAIN_STEPS, LEARNING_RATE = 50, 0.0")
RANK8 = ("RANK, ALPHA = REQUIRED.lora.rank, REQUIRED.lora.alpha", "RANK, ALPHA = 8, 8")
STEP3 = "TRAIN_STEPS, LEARNING_RATE"  # the first line of step 3's cell
ADAPTED = "adapted_image = lab_utils.generate(pipe, PROMPT, seed=SEED,"
OTHER_SEED = (ADAPTED, ADAPTED.replace("seed=SEED,", "seed=SEED + 1,"))
DIE_AT_3 = dict(after=STEP3, cell="import os\nos._exit(1)")
# A quicker solution where the execution path, not the lab's numbers, is under test: fewer denoising,
# training and evaluation steps (applied after a case's own edits, where they still match)
QUICK = (
    ("INFERENCE_STEPS, GUIDANCE = 25, 7.5", "INFERENCE_STEPS, GUIDANCE = 8, 7.5"),
    ("TRAIN_STEPS, LEARNING_RATE = 50,", "TRAIN_STEPS, LEARNING_RATE = 15,"),
    ("EVAL_STEPS = 10", "EVAL_STEPS = 3"),
)


def solution_with(
    *edits: tuple[str, str], after: str | None = None, cell: str = "", quick: bool = False
) -> Callable[[Path], Path]:
    """The solution notebook with text replacements (each must apply) and optionally a code cell
    inserted after the first cell containing ``after`` (in that cell's step), or before it when
    ``after`` starts with '<'. ``quick``: with the QUICK edits too."""

    def build(tmp: Path) -> Path:
        nb = nbformat.read(SOLUTION, as_version=4)
        for old, new in edits:
            hits = [c for c in nb.cells if old in c.source]
            assert hits, f"edit target not found: {old!r}"
            for hit in hits:
                hit.source = hit.source.replace(old, new)
        for old, new in QUICK if quick else ():
            for hit in [c for c in nb.cells if old in c.source]:
                hit.source = hit.source.replace(old, new)
        if after is not None:
            before = after.startswith("<")
            needle = after.lstrip("<")
            index = next(i for i, c in enumerate(nb.cells) if needle in c.source)
            new_cell = nbformat.v4.new_code_cell(cell)
            new_cell.metadata["lab"] = {"step": nb.cells[index].metadata.get("lab", {}).get("step")}
            nb.cells.insert(index if before else index + 1, new_cell)
        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / "submission.ipynb"
        nbformat.write(nb, path)
        return path

    return build


def cells(*sources: str) -> Callable[[Path], Path]:
    """A small notebook of its own: one code cell per source, all in step 1."""

    def build(tmp: Path) -> Path:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("## Step 1")])
        nb.cells += [nbformat.v4.new_code_cell(source) for source in sources]
        path = tmp / "submission.ipynb"
        nbformat.write(nb, path)
        return path

    return build


def run_grader(*args: str, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    """``python -m grader ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "grader", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=kwargs.pop("env", os.environ),
        timeout=timeout,
        **kwargs,
    )


def config(**tables):
    """A GradingConfig from checks-file tables, e.g. ``config(timeouts={"cell": 5})``."""
    from grader.config import GradingConfig

    return GradingConfig.from_tables(tables, "test")


# --- hand-built artefacts: the lab's steps in this process -------------------------------------------

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LAB_STEPS = dict(steps=10, guidance=7.5)  # the artefacts' generation settings (the notebook uses 25)


def lab_namespace(
    pipe,
    rank: int = 4,
    alpha: float = 4,
    targets: list[str] = TARGETS,
    train_steps: int = 20,
    lr: float = 3e-3,
    adapted_seed: int = 0,
    adapted_before_training: bool = False,
    **lora_config,
) -> dict:
    """The variables the lab notebook leaves behind (``baseline_image``, ``unet``, ``adapted_image``
    …), made in this process with the notebook's own calls on ``pipe`` (its U-Net is wrapped in place)."""
    import torch
    from peft import LoraConfig, get_peft_model

    import lab_utils

    prompt = lab_utils.TRAIN_PROMPT
    baseline = lab_utils.generate(pipe, prompt, seed=0, **LAB_STEPS)
    torch.manual_seed(0)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, **lora_config)
    unet = get_peft_model(pipe.unet, config)
    early = (
        lab_utils.generate(pipe, prompt, seed=adapted_seed, **LAB_STEPS) if adapted_before_training else None
    )
    image, train_prompt = lab_utils.training_example(lab_utils.native_size(pipe))
    lab_utils.train_lora(pipe, unet, image, train_prompt, steps=train_steps, lr=lr)
    adapted = early if early is not None else lab_utils.generate(pipe, prompt, seed=adapted_seed, **LAB_STEPS)
    return {
        "pipe": pipe,
        "unet": unet,
        "baseline_image": baseline,
        "adapted_image": adapted,
        "PROMPT": prompt,
    }


def lab_artefacts(folder: Path, namespace: dict) -> Path:
    """Save ``namespace`` with the grader's own saver (what its cell does in the kernel)."""
    from grader.artefacts import save_artefacts

    save_artefacts(folder, namespace)
    return folder


def grade_artefacts(folder: Path, grading=None, failure=None, submission: str = "hand-built"):
    """The checks on a saved artefact folder, as a GradeReport (what grade_notebook builds)."""
    from grader.artefacts import read_artefacts
    from grader.checks import verify
    from grader.config import GradingConfig
    from grader.environment import fingerprint
    from grader.types import GradeReport
    from lab_utils.models import resolve_model

    grading = grading or GradingConfig()
    artefacts = read_artefacts(folder)
    tiny = resolve_model("tiny")
    report = GradeReport(
        submission=submission,
        notebook=str(folder),
        model="tiny",
        key="",
        status="graded",
        max_score=grading.max_score,
        execution={"failure": str(failure) if failure else None, "artefact_errors": artefacts.errors},
        environment=fingerprint(tiny),
    )
    report.checks = list(verify(artefacts, tiny, grading, failure))
    report.score = sum(c.points for c in report.checks)
    report.passed = bool(report.checks) and all(c.passed for c in report.checks)
    return report, artefacts


# --- a real one-node Slurm cluster (tests/test_slurm.py) ----------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Running, not a zombie: a daemon re-parented to a PID 1 that does not reap stays a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class SlurmCluster:
    """munged, slurmctld and slurmd started from a generated one-node slurm.conf in ``folder``;
    ``stop()`` stops exactly these three (by the pids they wrote), nothing else. ``env`` is what a
    client command needs (SLURM_CONF)."""

    DAEMONS = ("munged", "slurmctld", "slurmd")

    def __init__(self, folder: Path) -> None:
        import shutil
        import socket
        import time

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)  # munged refuses a socket folder others can write
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        host = socket.gethostname().split(".")[0]
        memory_mb = max(1024, int(Path("/proc/meminfo").read_text().split()[1]) // 1024 - 2048)
        (folder / "state").mkdir()
        (folder / "spool").mkdir()
        conf = folder / "slurm.conf"
        conf.write_text(
            "\n".join(
                [
                    "ClusterName=sdlab",
                    f"SlurmctldHost={host}",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={folder / 'munge.sock'}",
                    "CredType=cred/munge",
                    "MpiDefault=none",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "ReturnToService=2",
                    "SchedulerType=sched/backfill",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "MinJobAge=600",
                    f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
                    f"SlurmdPidFile={folder / 'slurmd.pid'}",
                    f"SlurmdSpoolDir={folder / 'spool'}",
                    f"StateSaveLocation={folder / 'state'}",
                    f"SlurmctldLogFile={folder / 'slurmctld.log'}",
                    f"SlurmdLogFile={folder / 'slurmd.log'}",
                    f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN",
                    "PartitionName=lab Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                ]
            )
            + "\n"
        )
        self.env = {**os.environ, "SLURM_CONF": str(conf)}
        munged = shutil.which("munged") or "/usr/sbin/munged"
        commands = [
            [
                munged,
                "--force",
                f"--key-file={key}",
                f"--socket={folder / 'munge.sock'}",
                f"--pid-file={folder / 'munged.pid'}",
                f"--log-file={folder / 'munged.log'}",
                f"--seed-file={folder / 'munged.seed'}",
            ],
            [shutil.which("slurmctld") or "/usr/sbin/slurmctld", "-f", str(conf)],
            [shutil.which("slurmd") or "/usr/sbin/slurmd", "-f", str(conf)],
        ]
        try:
            for command in commands:  # each daemonises and writes its pid file
                subprocess.run(command, env=self.env, check=True, capture_output=True, timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                state = subprocess.run(
                    ["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True
                )
                if state.stdout.strip() == "idle":
                    return
                time.sleep(0.3)
            raise RuntimeError(f"the Slurm node never became idle: {state.stdout} {state.stderr}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        import signal
        import time

        for name in reversed(self.DAEMONS):
            pid_file = self.folder / f"{name}.pid"
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)


def path_without(program: str, folder: Path) -> str:
    """A PATH with every program of this one except ``program``: links to them in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = folder / entry.name
            if entry.name != program and not link.exists() and not link.is_symlink():
                link.symlink_to(entry.path)
    return str(folder)
