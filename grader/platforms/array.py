"""A class as an array of independent tasks, one per submission (Slurm's job array, Kubernetes'
Indexed Job): the job file that says which task grades which submission with which settings, and
the task itself — the same per-submission grader as local ``batch`` (same results layout and resume
key). ``python -m grader.platforms.array task JOB_FOLDER INDEX``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from grader.batch import Submission, _Children, _grade_one
from grader.config import GradingConfig, load_config
from grader.files import write_json
from lab_utils.models import ModelSpec, resolve_model


def job_file(
    submissions: list[Submission], model: ModelSpec, config: GradingConfig, checks: Path | None, **extra
) -> dict:
    return {
        "submissions": [asdict(s) | {"path": str(s.path.resolve())} for s in submissions],
        "model": model.source,
        "checks": str(checks.resolve()) if checks else None,
        "timeout": config.timeouts.total,
        "cell_timeout": config.timeouts.cell,
        "sandbox": config.limits.sandbox,
        **extra,
    }


def write_job_file(folder: Path, data: dict) -> Path:
    path = folder / "job.json"
    write_json(path, data)
    return path


def read_job_file(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "job.json").read_text())
    except (OSError, ValueError):
        return None


def submissions_of(data: dict) -> list[Submission]:
    return [Submission(e["id"], Path(e["path"]), e.get("student")) for e in data["submissions"]]


def grading(data: dict) -> tuple[GradingConfig, ModelSpec]:
    config = load_config(data["checks"]) if data.get("checks") else GradingConfig()
    config = config.with_command_line(data["timeout"], data["cell_timeout"], data["sandbox"])
    return config, resolve_model(data["model"])


def task(folder: Path, index: int) -> int:
    """Grade the ``index``-th submission of the job file in ``folder`` into its results folder
    (``folder``'s parent)."""
    data = read_job_file(folder)
    if data is None:
        print(f"error: no readable job file in {folder}", file=sys.stderr)
        return 2
    submission = submissions_of(data)[index]
    config, model = grading(data)
    checks = Path(data["checks"]) if data.get("checks") else None
    threads = int(data.get("cpus_per_task") or 1)
    verdict = _grade_one(submission, folder.parent, model, checks, config, None, threads, _Children())
    print(f"{submission.id}: {verdict}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.platforms.array")
    parser.add_argument("step", choices=("task",))
    parser.add_argument("folder", type=Path, help="RESULTS/slurm or RESULTS/kubernetes")
    parser.add_argument("index", type=int)
    args = parser.parse_args(argv)
    return task(args.folder, args.index)


if __name__ == "__main__":
    sys.exit(main())
