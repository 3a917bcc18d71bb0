"""Benchmark: a class through Slurm vs local batch with the same parallelism.

    sudo python benchmarks/slurm_vs_local.py [--submissions 8] [--parallel 2]

Starts a one-node Slurm cluster of its own (munged, slurmctld, slurmd from a generated slurm.conf, as
the tests do; stopped at the end), makes N copies of a quick solution notebook (fewer denoising and
training steps, so the figure is about the scheduling, not the lab), grades them with
`batch --workers K` and with `batch --slurm --max-parallel K --cpus-per-task CORES/K`, and prints the
wall time of each and the scheduler's overhead per task: (Slurm − local) / N × K.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, hardware

sys.path.insert(0, str(ROOT / "tests"))
from helpers import SlurmCluster, solution_with  # noqa: E402  (the tests' cluster and notebook builder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args()
    cpus = max(1, (os.cpu_count() or 1) // args.parallel)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        notebook = solution_with(quick=True)(folder / "built").read_bytes()
        (folder / "subs").mkdir()
        for index in range(args.submissions):
            (folder / "subs" / f"s{index:02d}.ipynb").write_bytes(notebook)
        cluster = SlurmCluster(folder / "slurm")
        try:
            env = {**cluster.env, "HF_HUB_OFFLINE": "1"}
            env.pop("OMP_NUM_THREADS", None)
            figures = {}
            for name, extra in (
                ("local", ["--workers", str(args.parallel)]),
                ("slurm", ["--slurm", "--max-parallel", str(args.parallel), "--cpus-per-task", str(cpus)]),
            ):
                out = folder / f"results-{name}"
                started = time.perf_counter()
                result = subprocess.run(
                    [sys.executable, "-m", "grader", "batch", str(folder / "subs"), "-o", str(out), *extra],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                figures[name] = time.perf_counter() - started
                summary = json.loads((out / "summary.json").read_text())
                assert result.returncode == 0 and summary["passed"] == args.submissions, result.stderr[-2000:]
                print(
                    f"{name:>5}: {figures[name]:6.1f} s for {args.submissions} submissions "
                    f"({summary['passed']} passed)"
                )
        finally:
            cluster.stop()
    overhead = (figures["slurm"] - figures["local"]) / args.submissions * args.parallel
    print(f"scheduler overhead per task: {overhead:+.1f} s")
    print(
        json.dumps(
            {
                "hardware": hardware(),
                "submissions": args.submissions,
                "parallel": args.parallel,
                "local_s": round(figures["local"], 1),
                "slurm_s": round(figures["slurm"], 1),
                "overhead_per_task_s": round(overhead, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
