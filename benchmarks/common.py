"""Shared by the benchmark commands: hardware name, timing with a device sync, table + JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "notebooks" / "sd_lora_lab_solution.ipynb"


def hardware() -> str:
    """The GPU's name when torch sees one, else "N-core CPU (model name)"."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()}-core CPU ({model})"


def quiet_loading() -> None:
    """No "Loading pipeline components" bars between the figures."""
    from diffusers.utils import logging

    logging.disable_progress_bar()


def synchronize() -> None:
    """Wait for queued GPU work, so a clock read after it measures the work (no-op on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn`` for ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(scenario: str, columns: list[str], rows: list[list], summary: dict) -> dict:
    """Print a plain table, then one JSON line: scenario, hardware and ``summary``."""
    cells = [columns] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(columns))]
    for row in cells:
        print(
            "  ".join(
                str(v).ljust(w) if i == 0 else str(v).rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    record = {"scenario": scenario, "hardware": hardware(), "date": time.strftime("%Y-%m-%d"), **summary}
    print(json.dumps(record))
    return record


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
