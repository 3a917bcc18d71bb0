"""Benchmark: the Gradescope autograder on Gradescope-sized resources — one core, a memory cap.

    sudo python benchmarks/gradescope_resources.py [--runs 3] [--memory-gb 2] [--cpu 0] [--cpus 0.5]

Builds the zip with `python -m grader gradescope`, unpacks it as Gradescope's image has it, and runs
its real `run_autograder` on the solution notebook pinned to one core (`taskset -c CPU`) inside a
memory control group capped at --memory-gb, optionally under a CPU quota (--cpus 0.5 is Gradescope's
default machine; cgroup v1 or v2; as root). Prints one row per run —
wall time, the group's peak memory, the largest single process seen — then one JSON line.
Without a writable cgroup it still runs, and reports the polled memory of the process tree only.

Run it with a Python that has the package alone (`python3 -m venv v && v/bin/pip install -e .`), as
Gradescope's image has it (setup.sh installs the package's requirements): the test extra's JupyterLab
brings jsonschema's `rfc3987_syntax` format checker, whose grammar is built at import — about 1 s more
in every grader process (`import nbformat`). The JSON line says which it was (`test_extra`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from common import ROOT, SOLUTION, hardware


def memory_group(limit_bytes: int) -> tuple[Path, str] | None:
    """A fresh memory cgroup with the cap set: (its folder, its peak-usage file), or None. The
    grader's kernel groups are made inside it, so its peak counts every process of the run."""
    name = f"sd-lora-lab-gradescope-{os.getpid()}"
    unified = Path("/sys/fs/cgroup/cgroup.controllers").is_file()
    base = Path("/sys/fs/cgroup") if unified else Path("/sys/fs/cgroup/memory")
    limit_file, peak_file = (
        ("memory.max", "memory.peak") if unified else ("memory.limit_in_bytes", "memory.max_usage_in_bytes")
    )
    group = base / name
    try:
        group.mkdir()
        (group / limit_file).write_text(str(limit_bytes))
    except OSError:
        shutil.rmtree(group, ignore_errors=True)
        return None
    return group, peak_file


def cpu_group(cpus: float) -> Path | None:
    """A fresh cgroup whose CFS quota allows ``cpus`` CPUs (Gradescope's "0.5 CPU"), or None."""
    name = f"sd-lora-lab-gradescope-cpu-{os.getpid()}"
    unified = Path("/sys/fs/cgroup/cgroup.controllers").is_file()
    group = (Path("/sys/fs/cgroup") if unified else Path("/sys/fs/cgroup/cpu")) / name
    try:
        group.mkdir()
        if unified:
            (group / "cpu.max").write_text(f"{int(cpus * 100000)} 100000")
        else:
            (group / "cpu.cfs_period_us").write_text("100000")
            (group / "cpu.cfs_quota_us").write_text(str(int(cpus * 100000)))
    except OSError:
        shutil.rmtree(group, ignore_errors=True)
        return None
    return group


def tree_rss(pid: int) -> tuple[int, int]:
    """(summed, largest) resident memory of ``pid`` and its descendants, in bytes."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    seen, stack = [], [pid]
    while stack:
        current = stack.pop()
        seen.append(current)
        stack += children.get(current, [])
    values = [rss.get(p, 0) for p in seen]
    return sum(values), max(values, default=0)


def unified_cgroups() -> bool:
    return Path("/sys/fs/cgroup/cgroup.controllers").is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-gb", type=float, default=2.0)
    parser.add_argument("--cpu", type=int, default=0, help="the one core to pin to")
    parser.add_argument(
        "--cpus", type=float, default=None, help="a CPU quota, e.g. 0.5 (Gradescope's default)"
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        zip_path = Path(tmp) / "autograder.zip"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grader",
                "gradescope",
                "-o",
                str(zip_path),
                "--memory-gb",
                str(args.memory_gb),
            ],
            check=True,
            cwd=ROOT,
        )
        for run in range(1, args.runs + 1):
            image = Path(tmp) / f"image-{run}"
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(image / "source")
            (image / "submission").mkdir()
            shutil.copy(SOLUTION, image / "submission" / "sd_lora_lab.ipynb")
            group = memory_group(int(args.memory_gb * 2**30))
            env = {
                **os.environ,
                "SD_LORA_LAB_AUTOGRADER_ROOT": str(image),
                "SD_LORA_LAB_PYTHON": sys.executable,
            }
            env.pop("OMP_NUM_THREADS", None)  # run_autograder picks the thread count itself
            quota = cpu_group(args.cpus) if args.cpus else None
            groups = [g for g in (group[0] if group else None, quota) if g is not None]
            if unified_cgroups() and len(groups) == 2:  # one hierarchy: the CPU cap goes on the memory group
                (groups[0] / "cpu.max").write_text((quota / "cpu.max").read_text())
                quota.rmdir()
                groups = groups[:1]
            enter = "".join(f"echo $$ > {g / 'cgroup.procs'} && " for g in groups)
            command = f"{enter}exec taskset -c {args.cpu} bash {image / 'source' / 'run_autograder'}"
            start = time.perf_counter()
            process = subprocess.Popen(["sh", "-c", command], env=env, stdout=subprocess.DEVNULL)
            peaks = [0, 0]

            def poll(process=process, peaks=peaks) -> None:
                while process.poll() is None:
                    total, largest = tree_rss(process.pid)
                    peaks[0], peaks[1] = max(peaks[0], total), max(peaks[1], largest)
                    time.sleep(0.2)

            watcher = threading.Thread(target=poll)
            watcher.start()
            process.wait()
            watcher.join()
            wall = time.perf_counter() - start
            peak = int((group[0] / group[1]).read_text()) if group else None
            for g in groups:
                g.rmdir()
            results = json.loads((image / "results" / "results.json").read_text())
            rows.append(
                {
                    "run": run,
                    "wall_s": round(wall, 1),
                    "score": f"{results['score']:g}/{results['extra_data'].get('max_score', 0):g}",
                    "cgroup_peak_gb": round(peak / 2**30, 2) if peak else None,
                    "tree_rss_peak_gb": round(peaks[0] / 2**30, 2),
                    "largest_process_gb": round(peaks[1] / 2**30, 2),
                }
            )
            row = rows[-1]
            print(
                f"run {run}: {row['wall_s']:6.1f} s  {row['score']}  cgroup peak {row['cgroup_peak_gb']} GB  "
                f"tree peak {row['tree_rss_peak_gb']} GB  largest process {row['largest_process_gb']} GB"
            )
    test_extra = importlib.util.find_spec("rfc3987_syntax") is not None
    if test_extra:
        print("note: this Python has the test extra: ~1 s more imports per grader process than on Gradescope")
    print(
        json.dumps(
            {
                "hardware": hardware(),
                "cpu": args.cpu,
                "memory_cap_gb": args.memory_gb,
                "test_extra": test_extra,
                "runs": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
