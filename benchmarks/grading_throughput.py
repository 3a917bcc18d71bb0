"""Benchmark: batch grading throughput, one submission at a time against concurrent workers.

    python benchmarks/grading_throughput.py [--submissions 10] [--workers 2] [--serial 3] [--model tiny]

Copies of the solution notebook are graded with ``python -m grader batch``: first ``--serial`` of
them with one worker (the reference, measured in the same run), then all ``--submissions`` with
``--workers`` concurrent workers. Reports wall time, submissions per hour and the ratio. Target on
the 2-core CPU: 10 submissions with 2 workers ≤ 6 min; on one GPU: ≥ 4× the serial
submissions/hour.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import SOLUTION, report


class GpuMemoryPeak:
    """Peak GPU memory in use on the device (every process, as nvidia-smi reads it), sampled every
    0.5 s while the block runs; ``None`` without nvidia-smi (CPU)."""

    def __enter__(self) -> GpuMemoryPeak:
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            done = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            )
            if done.returncode == 0 and done.stdout.strip():
                used = max(int(line) for line in done.stdout.split())
                self.peak_mib = max(self.peak_mib or 0, used)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def grade_batch(folder: Path, output: Path, workers: int, model: str, env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grader",
            "batch",
            str(folder),
            "-o",
            str(output),
            "--workers",
            str(workers),
            "--model",
            model,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(
            f"batch ({workers} workers) failed, exit {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    results = [json.loads(p.read_text()) for p in output.glob("*/results.json")]
    if any(r["score"] != sum(t["max_score"] for t in r["tests"]) for r in results):
        sys.exit(f"a copy of the solution did not get full marks: see {output}")
    notebooks = len(list(folder.glob("*.ipynb")))
    if len(results) != notebooks:
        sys.exit(f"batch ({workers} workers) wrote {len(results)} results for {notebooks} notebooks")
    return wall


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--serial", type=int, default=3, help="submissions graded one at a time (reference)")
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        folders = {}
        for name, count in (("serial", args.serial), ("concurrent", args.submissions)):
            folders[name] = root / name
            folders[name].mkdir()
            for index in range(count):
                shutil.copy(SOLUTION, folders[name] / f"learner{index:03d}.ipynb")
        serial = grade_batch(folders["serial"], root / "out-serial", 1, args.model, env)
        with GpuMemoryPeak() as memory:
            concurrent = grade_batch(
                folders["concurrent"], root / "out-concurrent", args.workers, args.model, env
            )
    serial_rate = 3600 * args.serial / serial
    rate = 3600 * args.submissions / concurrent
    rows = [
        [
            f"1 worker, {args.serial} submissions",
            round(serial, 1),
            round(serial / args.serial, 1),
            round(serial_rate),
            1.0,
        ],
        [
            f"{args.workers} workers, {args.submissions} submissions",
            round(concurrent, 1),
            round(concurrent / args.submissions, 1),
            round(rate),
            round(rate / serial_rate, 2),
        ],
    ]
    return report(
        "grading throughput",
        ["batch", "wall s", "s/submission", "submissions/h", "vs serial"],
        rows,
        {
            "model": args.model,
            "serial_submissions": args.serial,
            "serial_wall_s": round(serial, 1),
            "submissions": args.submissions,
            "workers": args.workers,
            "concurrent_wall_s": round(concurrent, 1),
            "serial_per_hour": round(serial_rate),
            "concurrent_per_hour": round(rate),
            "ratio": round(rate / serial_rate, 3),
            "peak_gpu_memory_mib": memory.peak_mib,
            "target_cpu_wall_s": 360,
        },
    )


if __name__ == "__main__":
    main()
