"""The sandbox's launcher: the kernelspec's first command (``python -m grader.execute.launcher SPEC --
KERNEL ARGV``). It runs as the kernel-to-be, before any learner code exists: joins the run's control
groups, sets resource limits, cuts the network (or wraps the kernel in bubblewrap), writes what it
applied to the status file, then becomes the kernel (``exec``). The grader's side — preparing the
spec, the folders and control groups, killing what is left — is ``grader.execute.sandbox``.
Standard library only, so it starts in milliseconds.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
from pathlib import Path

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000


def launch(spec_path: str, argv: list[str]) -> None:
    """Apply the spec to this process, then exec the kernel. Runs before any learner code."""
    import resource  # POSIX only: imported here so grader.check() still works on Windows

    spec = json.loads(Path(spec_path).read_text())
    status: dict = {"mode": spec["mode"], "cgroups": [], "rlimits": {}}
    for group in spec["cgroups"]:
        try:
            (Path(group) / "cgroup.procs").write_text(str(os.getpid()))
            status["cgroups"].append(group)
        except OSError as error:
            status.setdefault("errors", []).append(f"cgroup {group}: {error.strerror}")
    limits = {
        "RLIMIT_FSIZE": spec["file_bytes"],
        "RLIMIT_CORE": 0,
        # counts every task of this user, not only the kernel's: allow for what already runs
        "RLIMIT_NPROC": spec["processes"] + _user_tasks(os.getuid()),
    }
    if not (spec["memory_cgroup"] and status["cgroups"]):
        limits["RLIMIT_DATA"] = spec["memory_bytes"]
    for name, value in limits.items():
        try:
            resource.setrlimit(getattr(resource, name), (value, value))
            status["rlimits"][name] = value
        except (ValueError, OSError) as error:
            status.setdefault("errors", []).append(f"{name}: {error}")
    mode = spec["mode"]
    if mode == "bwrap":
        status["network"] = "isolated"
        argv = _bwrap_argv(spec) + argv
        # ipykernel polls this PID and exits when it is gone — in the new PID namespace it never
        # exists; --die-with-parent ends the kernel with the grader instead
        os.environ.pop("JPY_PARENT_PID", None)
    elif mode == "basic":
        status["network"] = _unshare_network()
    else:
        status["network"] = "not isolated (--sandbox none)"
    Path(spec["status"]).write_text(json.dumps(status))
    os.chdir(spec["workdir"])
    os.execvp(argv[0], argv)


def _user_tasks(uid: int) -> int:
    """Threads (tasks) this user runs now, as RLIMIT_NPROC counts them."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return total


def _bwrap_argv(spec: dict) -> list[str]:
    argv = [
        shutil.which("bwrap") or "bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-all",  # user, IPC, PID, network, UTS, cgroup namespaces
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--tmpfs",
        "/dev/shm",
        "--proc",
        "/proc",
    ]
    for device in sorted(Path("/dev").glob("nvidia*")) + [Path("/dev/dri")]:
        if device.exists():
            argv += ["--dev-bind", str(device), str(device)]
    for path in spec["writable"]:
        argv += ["--bind", path, path]
    return argv + ["--chdir", spec["workdir"], "--"]


def _unshare_network() -> str:
    """A new, empty network namespace for this process and its children."""
    try:
        unshare = ctypes.CDLL(None, use_errno=True).unshare
    except (OSError, AttributeError):
        return "network namespaces are Linux only"
    for flags in (CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNET):
        if unshare(flags) == 0:
            return "isolated"
    return f"unshare failed: {os.strerror(ctypes.get_errno())} (run as root, or enable user namespaces)"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m grader.execute.launcher SPEC.json -- KERNEL ARGV...")
    launch(argv[0], argv[2:])


if __name__ == "__main__":
    main()
