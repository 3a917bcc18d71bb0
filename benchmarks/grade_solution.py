"""Benchmark: wall time of `python -m grader` on the solution notebook with the built-in model.

    python benchmarks/grade_solution.py [--runs 3] [--model tiny]

Each run is a fresh process, as an instructor would run it. Run 1 may pay for a cold disk cache
(imports, weights); later runs reuse it. Prints a table, then one JSON line with the hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SOLUTION, hardware


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        for run in range(1, args.runs + 1):
            report_path = Path(cache) / f"report-{run}.json"
            start = time.perf_counter()
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "grader",
                    str(SOLUTION),
                    "--model",
                    args.model,
                    "--json",
                    str(report_path),
                ],
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - start
            if result.returncode != 0:
                sys.exit(f"run {run} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
            report = json.loads(report_path.read_text())
            notebook = report["execution"]["seconds"]
            rows.append(
                {
                    "run": run,
                    "wall_s": round(wall, 2),
                    "notebook_s": notebook,
                    "verify_s": round(report["seconds"] - notebook, 2),
                    "cache": "cold" if run == 1 else "warm",
                }
            )
    print(f"{'run':>3}  {'cache':5}  {'wall s':>7}  {'notebook s':>10}  {'verify s':>8}")
    for r in rows:
        print(
            f"{r['run']:>3}  {r['cache']:5}  {r['wall_s']:>7.2f}  "
            f"{r['notebook_s']:>10.2f}  {r['verify_s']:>8.2f}"
        )
    warm = [r["wall_s"] for r in rows[1:]] or [rows[0]["wall_s"]]
    summary = {
        "scenario": "grade solution notebook",
        "model": args.model,
        "hardware": hardware(),
        "median_warm_wall_s": statistics.median(warm),
        "target_s": 60,
        "runs": rows,
    }
    print(
        f"median wall (warm cache): {summary['median_warm_wall_s']:.2f} s (target ≤ 60 s) "
        f"on {summary['hardware']}"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
