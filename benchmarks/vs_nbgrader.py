"""Benchmark: trusted grading (`python -m grader`) against nbgrader's untrusted `nbgrader autograde`.

    python benchmarks/vs_nbgrader.py [--runs 3] [--class-size 6] [--workers 2]

Builds an nbgrader course in a temporary folder from the source notebook (nbgrader's own
`generate_assignment`), submits the solution (its self-check cell removed: nbgrader would not run
the grader's check), then times, paired and alternating, `nbgrader autograde` of that one student
against `python -m grader` on the same notebook; then a class of distinct correct submissions (the
solution trained for 50, 45, 40, … steps): `nbgrader autograde` of every student against
`python -m grader batch`; then `python -m grader regrade` of that class with a changed checks file
(a stricter threshold, other points: no notebook runs). nbgrader only executes the notebook; the
grader executes it in a sandbox and recomputes every check. Peak memory of one grading: the largest
sum of the resident memory of `python -m grader` and every process under it (its kernel), sampled
every 0.1 s. Prints a table, then one JSON line with the hardware and the ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import psutil
from common import ROOT, SOLUTION, report

SOURCE = ROOT / "notebooks" / "source" / "sd_lora_lab.ipynb"
ASSIGNMENT, NOTEBOOK = "ps1", "sd_lora_lab.ipynb"
STEPS = "TRAIN_STEPS, LEARNING_RATE = 50,"


def submission(train_steps: int) -> nbformat.NotebookNode:
    """The solution without its self-check cell, trained for ``train_steps`` steps."""
    nb = nbformat.read(SOLUTION, as_version=4)
    nb.cells = [c for c in nb.cells if "grader.check(" not in c.source]
    for cell in nb.cells:
        cell.source = cell.source.replace(STEPS, f"TRAIN_STEPS, LEARNING_RATE = {train_steps},")
    return nb


PEAK = {"bytes": 0}  # the largest process-tree resident memory seen by run()


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # ended between the listing and the read
            pass
    return total


def run(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        watched = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                PEAK["bytes"] = max(PEAK["bytes"], tree_rss(watched))
            except psutil.Error:
                pass
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        if child.returncode != 0:
            out.seek(0)
            sys.exit(f"{' '.join(command[:3])} … failed (exit {child.returncode}):\n{out.read()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="paired single gradings (default 3)")
    parser.add_argument("--class-size", type=int, default=6, help="distinct submissions (default 6)")
    parser.add_argument("--workers", type=int, default=2, help="python -m grader batch --workers")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    nbgrader = bin_dir / "nbgrader"
    if not nbgrader.exists():
        sys.exit("nbgrader is not installed beside this Python: pip install -e '.[test]'")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    with tempfile.TemporaryDirectory() as folder:
        course = Path(folder) / "course"
        (course / "source" / ASSIGNMENT).mkdir(parents=True)
        shutil.copy(SOURCE, course / "source" / ASSIGNMENT / NOTEBOOK)
        (course / "nbgrader_config.py").write_text(
            f"c = get_config()\nc.CourseDirectory.root = {str(course)!r}\n"
            "c.ExecutePreprocessor.timeout = 600\n"
        )
        run([str(nbgrader), "generate_assignment", ASSIGNMENT], course, env)
        submitted = course / "submitted"
        steps = [50 - 5 * i for i in range(args.class_size)]
        for index, train_steps in enumerate(steps):
            folder_of = submitted / f"student{index}" / ASSIGNMENT
            folder_of.mkdir(parents=True)
            nbformat.write(submission(train_steps), folder_of / NOTEBOOK)
        one = submitted / "student0" / ASSIGNMENT / NOTEBOOK
        autograde = [str(nbgrader), "autograde", ASSIGNMENT, "--force"]
        grade = [sys.executable, "-m", "grader", str(one), "--results"]
        singles: dict[str, list[float]] = {"nbgrader autograde": [], "python -m grader": []}
        peak = 0
        for index in range(args.runs):  # A B A B: both sides see the same machine state
            singles["nbgrader autograde"].append(run([*autograde, "--student", "student0"], course, env))
            PEAK["bytes"] = 0
            singles["python -m grader"].append(
                run([*grade, str(Path(folder) / f"single-{index}")], ROOT, env)
            )
            peak = max(peak, PEAK["bytes"])
        whole_class = {
            "nbgrader autograde": run(autograde, course, env),
            f"python -m grader batch --workers {args.workers}": run(
                [sys.executable, "-m", "grader", "batch", str(submitted), "-o", str(Path(folder) / "class"),
                 "--workers", str(args.workers)],
                ROOT,
                env,
            ),
        }  # fmt: skip
        stricter = Path(folder) / "stricter.checks.toml"  # what an instructor changes after grading
        stricter.write_text(
            (ROOT / "notebooks" / "source" / "sd_lora_lab.checks.toml").read_text()
            .replace("min_mean_abs_diff = 0.5", "min_mean_abs_diff = 1.0")
            .replace("points = 1", "points = 2")
        )  # fmt: skip
        regrade = run(
            [
                sys.executable,
                "-m",
                "grader",
                "regrade",
                str(Path(folder) / "class"),
                "--checks",
                str(stricter),
            ],
            ROOT,
            env,
        )
    medians = {name: statistics.median(times) for name, times in singles.items()}
    rows = [[f"one submission: {name}", *(round(t, 1) for t in times), round(medians[name], 1)]
            for name, times in singles.items()]  # fmt: skip
    rows += [
        [f"class of {args.class_size}: {name}", *[""] * args.runs, round(t, 1)]
        for name, t in whole_class.items()
    ]
    rows.append(
        [f"class of {args.class_size}: python -m grader regrade", *[""] * args.runs, round(regrade, 1)]
    )
    columns = ["grading", *(f"run {i + 1} (s)" for i in range(args.runs)), "median / total (s)"]
    nbgrader_class, grader_class = whole_class.values()
    report(
        "vs_nbgrader",
        columns,
        rows,
        {
            "single_median_s": {k: round(v, 2) for k, v in medians.items()},
            "single_ratio_grader_to_nbgrader": round(
                medians["python -m grader"] / medians["nbgrader autograde"], 2
            ),
            "class_size": args.class_size,
            "class_s": {k: round(v, 1) for k, v in whole_class.items()},
            "class_ratio_grader_to_nbgrader": round(grader_class / nbgrader_class, 2),
            "regrade_s": round(regrade, 1),
            "regrade_ratio_to_batch": round(regrade / grader_class, 3),
            "single_grading_peak_memory_mb": round(peak / 2**20),
        },
    )


if __name__ == "__main__":
    main()
