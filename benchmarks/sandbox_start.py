"""Benchmark: what each sandbox mode costs to start — the launcher, as the grader starts a kernel,
running ``python -c pass`` instead of the kernel — and the model-folder layouts' load times.

    python benchmarks/sandbox_start.py [--runs 10]

Each start is a fresh launcher process with the run's real spec (control groups, hidden folders).
The namespaces mode is built by the launcher itself (grader/execute/launcher.py); bwrap is
bubblewrap's. Prints a table, then one JSON line with the hardware.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, median, report

sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    from grader.config import Limits
    from grader.execute.sandbox import bwrap_works, namespaces_problem, prepare, runs_root

    rows, summary = [], {}
    for mode in ("none", "bwrap", "namespaces"):
        if (mode == "bwrap" and not bwrap_works()) or (mode == "namespaces" and namespaces_problem()):
            rows.append([f"start: {mode}", "n/a", "n/a"])
            continue
        times = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(dir=runs_root()) as tmp:
                sandbox = prepare(Path(tmp) / "run", Limits(sandbox=mode))
                argv = sandbox.kernel_argv()[:5] + [sys.executable, "-c", "pass"]
                start = time.perf_counter()
                subprocess.run(argv, env=sandbox.environment({}), check=True)
                times.append(time.perf_counter() - start)
                sandbox.kill_all()
        rows.append([f"start: {mode}", median(times), max(times)])
        summary[f"start_{mode}_s"] = round(median(times), 3)

    import layouts

    import lab_utils

    builders = {
        "fp16 variant only": layouts.fp16_only,
        ".bin only": layouts.bin_only,
        "single file, LDM keys": lambda t: layouts.single_file(t, True).parent,
    }
    for name, build in builders.items():
        with tempfile.TemporaryDirectory() as tmp:
            model = build(Path(tmp) / "m")
            times = []
            for _ in range(3):
                start = time.perf_counter()
                lab_utils.load_pipeline(str(model), device="cpu")
                times.append(time.perf_counter() - start)
        rows.append([f"load: {name}", median(times), max(times)])
        summary[f"load_{name.split(',')[0].replace(' ', '_')}_s"] = round(median(times), 3)
    report("sandbox start and model layouts", ["scenario", "median s", "max s"], rows, summary)


if __name__ == "__main__":
    main()
