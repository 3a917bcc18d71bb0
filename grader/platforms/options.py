"""The options of a class graded as an array of tasks (``batch --slurm`` / ``--kubernetes``): their
command-line flags and the sizes each task asks for. Standard library only (the parsers are built at
every start of ``python -m grader``)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

from lab_utils.errors import LabError


@dataclass(frozen=True)
class TaskOptions:
    partition: str | None = None
    gpus_per_task: int | None = None
    cpus_per_task: int = 1
    mem_gb: float = 8.0
    time_min: int | None = None  # default: the notebook's total timeout + the grader's margin
    max_parallel: int | None = None
    sbatch_args: list[str] = field(default_factory=list)

    def time_limit(self, config) -> int:
        from grader.batch import GRADE_MARGIN

        return self.time_min or math.ceil((config.timeouts.total + GRADE_MARGIN + 60) / 60)


def add_arguments(batch: argparse.ArgumentParser) -> None:
    slurm = batch.add_argument_group("Slurm: one job array, one task per submission")
    slurm.add_argument("--slurm", action="store_true", help="grade on a Slurm cluster (sbatch from here)")
    slurm.add_argument("--partition", default=None, help="the partition to submit to")
    slurm.add_argument("--gpus-per-task", type=int, default=None, metavar="N")
    slurm.add_argument("--cpus-per-task", type=int, default=1, metavar="N", help="(default 1)")
    slurm.add_argument("--mem", type=float, default=8.0, metavar="G", help="GB per task (default 8)")
    slurm.add_argument("--time", type=int, default=None, metavar="MIN", help="minutes per task")
    slurm.add_argument("--max-parallel", type=int, default=None, metavar="K", help="tasks at once")
    slurm.add_argument(
        "--sbatch-arg", action="append", default=[], metavar="ARG", help="an extra #SBATCH line"
    )
    slurm.add_argument("--no-wait", action="store_true", help="submit and return (then `gradebook`)")
    kube = batch.add_argument_group("Kubernetes: an Indexed Job manifest (with the sizes above)")
    kube.add_argument("--kubernetes", action="store_true", help="write RESULTS/kubernetes/manifest.json")
    kube.add_argument("--image", default=None, help="a container image with this lab installed")
    kube.add_argument("--pvc", default="sd-lora-lab-course", help="the shared volume's claim")
    kube.add_argument("--mount", type=Path, default=None, help="the shared folder the pods mount")


def from_args(args: argparse.Namespace) -> TaskOptions:
    for flag, value in (
        ("--cpus-per-task", args.cpus_per_task),
        ("--max-parallel", args.max_parallel),
        ("--gpus-per-task", args.gpus_per_task),
        ("--time", args.time),
        ("--mem", args.mem),
    ):
        if value is not None and value <= 0:
            raise LabError(f"{flag} must be positive (got {value:g})")
    return TaskOptions(
        args.partition,
        args.gpus_per_task,
        args.cpus_per_task,
        args.mem,
        args.time,
        args.max_parallel,
        list(args.sbatch_arg),
    )
