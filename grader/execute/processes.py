"""The kernel's processes and control groups, for the sandbox (grader/execute/sandbox.py): a control
group of the run's own where the cgroup filesystem lets us (memory and process caps), the process
tree below the grader, and the clean-up that leaves no survivor."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from grader.config import Limits

if TYPE_CHECKING:
    from grader.execute.sandbox import Sandbox

PR_SET_CHILD_SUBREAPER = 36
CGROUP_ROOT = Path("/sys/fs/cgroup")
OVERLAP_MEMORY = 3 * 2**29  # 1.5 GB: the grader's base model beside the kernel's (tiny: ~0.95 GB together)


def become_subreaper() -> None:
    """Orphans of the kernel (double forks, setsid) are re-parented to this process, not to init,
    so :meth:`Sandbox.kill_all` still finds them."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def descendants(root: int) -> set[int]:
    """Live (non-zombie) processes below ``root``."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_cgroup(group: Path) -> None:
    kill_file = group / "cgroup.kill"  # cgroup v2: the kernel kills every member atomically
    if kill_file.exists():
        try:
            kill_file.write_text("1")
        except OSError:
            pass
    for _ in range(200):  # v1: kill until empty (a fork bomb refills slots while we kill)
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return
        if not pids:
            return
        for pid in pids:
            kill(pid)
        time.sleep(0.01)


def own_cgroup_paths() -> dict[str, str]:
    """controller → this process's cgroup path (``""`` key for cgroup v2)."""
    paths: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                paths[controller] = parts[2]
    return paths


def make_cgroups(limits: Limits) -> list[Path]:
    """A control group of the run's own for each of pids and memory, where the filesystem lets us."""
    if not CGROUP_ROOT.is_dir():
        return []
    own = own_cgroup_paths()
    name = f"sd-lora-lab-{uuid.uuid4().hex[:12]}"
    memory = str(int(limits.memory_gb * 2**30))
    made: list[Path] = []
    if (CGROUP_ROOT / "cgroup.controllers").is_file():  # cgroup v2 (unified)
        group = CGROUP_ROOT / own.get("", "/").lstrip("/") / name
        if _try_group(group, {"pids.max": str(limits.processes), "memory.max": memory}):
            made.append(group)
        return made
    for controller, settings in (
        ("pids", {"pids.max": str(limits.processes)}),
        ("memory", {"memory.limit_in_bytes": memory}),
    ):
        mount = CGROUP_ROOT / controller
        if controller in own and mount.is_dir():
            group = mount / own[controller].lstrip("/") / name
            if _try_group(group, settings):
                made.append(group)
    return made


def _try_group(group: Path, settings: dict[str, str]) -> bool:
    try:
        group.mkdir()
    except OSError:
        return False
    try:
        for key, value in settings.items():
            (group / key).write_text(value)
    except OSError:
        group.rmdir()
        return False
    return True


def can_limit_processes() -> bool:
    """Whether a kernel's process count can be capped here: RLIMIT_NPROC binds any user but root;
    for root it takes a pids control group of the run's own."""
    if os.geteuid() != 0:
        return True
    groups = make_cgroups(Limits())
    for group in groups:
        group.rmdir()
    return any("pids" in g.parts or (CGROUP_ROOT / "cgroup.controllers").is_file() for g in groups)


def memory_exhausted(sandbox: Sandbox) -> bool:
    """Whether the kernel hit the control group's memory limit (the OOM killer ran)."""
    for group in sandbox.cgroups:
        for name in ("memory.events", "memory.oom_control"):
            try:
                text = (group / name).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit() and int(value) > 0:
                    return True
        try:
            if int((group / "memory.failcnt").read_text()) > 0 and not _alive(group):
                return True
        except (OSError, ValueError):
            pass
    return False


def _alive(group: Path) -> bool:
    try:
        return bool((group / "cgroup.procs").read_text().split())
    except OSError:
        return False


def memory_limit() -> int:
    """Bytes of memory this process may use: the machine's RAM, or its control group's cap where
    one is set (a Gradescope container, a Slurm task, a pod's limit)."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    own = own_cgroup_paths()
    candidates = [CGROUP_ROOT / own.get("", "/").lstrip("/") / "memory.max"]
    if "memory" in own:
        candidates.append(CGROUP_ROOT / "memory" / own["memory"].lstrip("/") / "memory.limit_in_bytes")
    for path in candidates:
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            limit = min(limit, int(value))
    return limit
