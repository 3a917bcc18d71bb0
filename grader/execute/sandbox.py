"""The learner's kernel in a sandbox, without Docker: limits, a private folder, no network, no survivors.

The grader starts every kernel through the launcher (``python -m grader.execute.launcher SPEC --
ARGV``, grader/execute/launcher.py), which — before any learner code exists — joins the run's
control groups, sets resource limits and cuts the network, then becomes the kernel (``exec``). This
module is the grader's side: the run's folders, control groups and spec, and the clean-up:

========== ====================================================================================
mode       what the kernel gets
========== ====================================================================================
bwrap      bubblewrap (``apt install bubblewrap``): a read-only view of the whole filesystem except
           the run's private folders (its TMPDIR too: /tmp stays read-only, since the environment
           may live there), the grader's run folders and ``/run`` hidden, its own PID, IPC and
           network namespaces (no network at all), every capability dropped — it cannot see,
           signal or alter the grader.
namespaces the same isolation built by the launcher itself, without bubblewrap (Linux, as root or
           with user namespaces; see grader/execute/launcher.py).
none       resource limits and the scrubbed environment only: the notebook runs with the grader's
           privileges — only by an explicit ``--sandbox none``, which the report marks.
auto       bwrap when it works on this machine, else namespaces; where neither can be built,
           grading refuses to start (the default).
========== ====================================================================================

Limits, in every mode: memory and process count through a control group of the run's own when the
cgroup filesystem is writable (root on most pods), else ``RLIMIT_DATA`` / ``RLIMIT_NPROC`` (which
Linux does not enforce for root); file size through ``RLIMIT_FSIZE``; no core dumps; GPU memory
through ``torch.cuda.set_per_process_memory_fraction``. The kernel talks to the grader over Unix
sockets (ZMQ ``ipc``), so it needs no network. At the end the grader kills every process in the
run's control groups, its process group and any orphan re-parented to it: nothing survives.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from grader.config import Limits
from grader.execute.processes import (
    CGROUP_ROOT,
    become_subreaper,
    descendants,
    kill,
    kill_cgroup,
    make_cgroups,
)
from lab_utils.errors import LabError

STATUS_FILE = "sandbox.json"
GPU_FRACTION_ENV = "SD_LORA_LAB_GPU_MEMORY_FRACTION"

# What the kernel's environment keeps from the grader's; everything else (tokens, keys, the
# grader's own settings) is dropped.
KEEP_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "SD_LORA_LAB_MODEL",
    "PYTHONPATH",
)


NO_SANDBOX = (
    "no sandbox can be built on this machine ({problem}): install bubblewrap (apt install "
    "bubblewrap), or grade without isolation with --sandbox none"
)
UNSANDBOXED_NOTE = "graded without a sandbox (--sandbox none): the notebook ran with the grader's privileges"
PRIVATE = ("work", "tmp", "home", "conn")  # the run's folders the kernel may write


def runs_root() -> Path:
    """The folder every run's private folders live in: hidden from every kernel, so no submission
    can read or reach another's files, sockets or artefacts."""
    root = Path(tempfile.gettempdir()) / f"sd-lora-lab-runs-{os.geteuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


@dataclass
class Sandbox:
    """One run's sandbox: its folders, its control groups, and what it could enforce here."""

    run_dir: Path
    mode: str
    limits: Limits = field(default_factory=Limits)
    cgroups: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _before: set[int] = field(default_factory=set)

    @property
    def workdir(self) -> Path:
        return self.run_dir / "work"

    def kernel_argv(self) -> list[str]:
        """The kernelspec's argv: the launcher, then the kernel itself."""
        spec = self.run_dir / "sandbox-spec.json"
        return [
            sys.executable,
            "-m",
            "grader.execute.launcher",
            str(spec),
            "--",
            sys.executable,
            "-m",
            "grader.execute.kernel",
            "-f",
            "{connection_file}",
        ]

    def environment(self, extra: dict[str, str]) -> dict[str, str]:
        """The kernel's whole environment: a short allow-list plus the run's private folders."""
        env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
        home = self.run_dir / "home"
        env.update(
            HOME=str(home),
            TMPDIR=str(self.run_dir / "tmp"),
            IPYTHONDIR=str(home / ".ipython"),
            MPLCONFIGDIR=str(home / ".matplotlib"),
            JUPYTER_RUNTIME_DIR=str(self.run_dir / "conn"),
            HF_HUB_OFFLINE="1",  # the kernel has no network: the model was resolved before it started
            PYTHONDONTWRITEBYTECODE="1",
        )
        if self.limits.gpu_memory_fraction is not None:
            env[GPU_FRACTION_ENV] = str(self.limits.gpu_memory_fraction)
        env.update(extra)
        return env

    def status(self) -> dict:
        """What the launcher applied (written before any learner code ran)."""
        try:
            return json.loads((self.run_dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def isolation_notes(self) -> list[str]:
        """One line per protection that could not be enforced on this machine."""
        notes = list(self.notes)
        status = self.status()
        if status.get("network") not in (None, "isolated"):
            notes.append(f"network not isolated ({status['network']})")
        return notes

    def kill_strays(self, keep: set[int]) -> int:
        """Kill every process of the run but ``keep`` (the kernel as it started): what a failing
        cell left running — a fork bomb's copies of the kernel, which share its sockets — must not
        answer or starve the grader's artefact cell. Returns how many were killed."""
        killed = 0
        for _ in range(200):  # a fork bomb refills the slots while we kill
            strays = descendants(os.getpid()) - self._before - keep
            if not strays:
                break
            for pid in strays:
                kill(pid)
            killed += len(strays)
            time.sleep(0.01)
        return killed

    def kill_all(self) -> None:
        """Kill every process the kernel started, however it tried to escape, and remove the groups."""
        for group in self.cgroups:
            kill_cgroup(group)
        for pid in descendants(os.getpid()) - self._before:
            kill(pid)
        for group in self.cgroups:
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    kill_cgroup(group)
                    time.sleep(0.05)


def prepare(
    run_dir: Path,
    limits: Limits | None = None,
    hidden: tuple[Path, ...] = (),
    needed: tuple[str | Path, ...] = (),
) -> Sandbox:
    """Create the run's folders, control groups and the launcher's spec; decide the mode
    (``limits.sandbox``, validated with the rest of the config). ``hidden``: folders the kernel must
    not see (the grader's results, the other submissions), besides the runs' folder and ``/run``;
    ``needed``: paths it must (the model), so no folder holding one is hidden.

    Raises:
        LabError: the mode asked for (or, for auto, any isolating mode) cannot be built here.
    """
    limits = limits or Limits()
    mode = limits.sandbox
    if mode == "auto":
        if bwrap_works():
            mode = "bwrap"
        elif namespaces_problem() is None:
            mode = "namespaces"
        else:
            raise LabError(NO_SANDBOX.format(problem=f"bubblewrap not found; {namespaces_problem()}"))
    elif mode == "bwrap" and not bwrap_works():
        raise LabError(
            "--sandbox bwrap: bubblewrap is not installed or cannot create namespaces here "
            "(apt install bubblewrap, or use --sandbox namespaces)"
        )
    elif mode == "namespaces" and namespaces_problem() is not None:
        raise LabError(f"--sandbox namespaces: {namespaces_problem()} (install bubblewrap, or run as root)")
    sandbox = Sandbox(run_dir, mode, limits)
    for sub in PRIVATE:
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    become_subreaper()
    sandbox._before = descendants(os.getpid())
    sandbox.cgroups = make_cgroups(limits)
    controllers = {g.relative_to(CGROUP_ROOT).parts[0] for g in sandbox.cgroups}
    unified = (CGROUP_ROOT / "cgroup.controllers").is_file()
    memory_cgroup = unified and bool(sandbox.cgroups) or "memory" in controllers
    if not sandbox.cgroups:
        sandbox.notes.append(
            "no writable control group: memory is capped with RLIMIT_DATA and processes with "
            "RLIMIT_NPROC" + (" (not enforced for root)" if os.geteuid() == 0 else "")
        )
    elif not unified and not {"pids", "memory"} <= controllers:
        sandbox.notes.append(f"control groups only for {', '.join(sorted(controllers))}")
    if mode == "none":
        sandbox.notes.append("sandbox off (--sandbox none): filesystem, processes and network not isolated")
    spec = launcher_spec(
        run_dir,
        mode,
        limits,
        cgroups=sandbox.cgroups,
        memory_cgroup=memory_cgroup,
        hidden=hideable([runs_root(), Path("/run"), *hidden], needed),
    )
    (run_dir / "sandbox-spec.json").write_text(json.dumps(spec))
    return sandbox


def launcher_spec(
    run_dir: Path,
    mode: str,
    limits: Limits,
    cgroups: list[Path] | None = None,
    memory_cgroup: bool = False,
    hidden: list[str] | None = None,
) -> dict:
    """What the launcher applies (grader/execute/launcher.py): the mode, the limits, the run's
    private folders (``PRIVATE`` under ``run_dir``, which must exist) and the folders to hide."""
    return {
        "mode": mode,
        "status": str(run_dir / STATUS_FILE),
        "cgroups": [str(g) for g in cgroups or []],
        "memory_bytes": int(limits.memory_gb * 2**30),
        "memory_cgroup": memory_cgroup,
        "processes": int(limits.processes),
        "file_bytes": int(limits.file_size_mb * 2**20),
        "writable": [str(run_dir / sub) for sub in PRIVATE],
        "hidden": list(hidden or []),
        "workdir": str(run_dir / "work"),
    }


def hideable(folders: list[Path], kernel_needs: tuple[str | Path, ...] = ()) -> list[str]:
    """The folders that can be hidden from the kernel: none that holds what it needs — Python and
    its packages, the lab's code, the hub cache, ``kernel_needs`` (the model) — and none inside
    another hidden one."""
    from huggingface_hub import constants

    needed = [Path(p).resolve() for p in {sys.prefix, sys.base_prefix, *sys.path, *kernel_needs} if p]
    needed += [Path(__file__).resolve().parents[2], Path(constants.HF_HOME).resolve()]
    keep: list[Path] = []
    for folder in folders:
        folder = Path(folder).resolve()
        if not folder.is_dir() or folder == Path("/"):
            continue
        if any(n == folder or folder in n.parents for n in needed):
            continue
        keep.append(folder)
    # a folder inside another hidden one is hidden with it (and has no mount point to cover)
    return sorted({str(f) for f in keep if not any(o != f and o in f.parents for o in keep)})


def allow_writes(sandbox: Sandbox, path: Path) -> None:
    """Let the kernel write into ``path`` as well (the grader's artefact folder)."""
    spec_path = sandbox.run_dir / "sandbox-spec.json"
    spec = json.loads(spec_path.read_text())
    spec["writable"].append(str(path))
    spec_path.write_text(json.dumps(spec))


@cache
def namespaces_problem() -> str | None:
    """Why the launcher cannot build its own namespaces here, or None when it can: a probe started
    in them must write in its folder, and fail to write outside it and to see this process."""
    if not sys.platform.startswith("linux"):
        return "namespaces are Linux only"
    with tempfile.TemporaryDirectory(prefix="probe-", dir=runs_root()) as tmp:
        run_dir = Path(tmp)
        for sub in PRIVATE:
            (run_dir / sub).mkdir()
        outside = run_dir / "outside.txt"
        spec = launcher_spec(run_dir, "namespaces", Limits(memory_gb=1, processes=64, file_size_mb=1))
        (run_dir / "spec.json").write_text(json.dumps(spec))
        probe = "\n".join(
            [
                "import os, sys",
                "open('inside.txt', 'w').write('ok')",
                "try:",
                f"    open({str(outside)!r}, 'w')",
                "    sys.exit('the probe wrote outside its folder')",
                "except OSError:",
                "    pass",
                f"if os.path.exists('/proc/{os.getpid()}/cmdline') and os.getpid() != {os.getpid()}:",
                "    sys.exit('the probe sees the grader')",
            ]
        )
        argv = [sys.executable, "-m", "grader.execute.launcher", str(run_dir / "spec.json"), "--"]
        try:
            result = subprocess.run(
                [*argv, sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError) as error:
            return f"the namespaces probe failed: {error}"
        if result.returncode != 0 or not (run_dir / "work" / "inside.txt").is_file():
            lines = (result.stderr or result.stdout).strip().splitlines()
            return (lines[-1] if lines else f"the probe exited {result.returncode}").removeprefix("sandbox: ")
    return None


@cache
def bwrap_works() -> bool:
    """bubblewrap is installed and can create its namespaces on this machine."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return False
    try:
        probe = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--unshare-all", "--cap-drop", "ALL", "--", "true"],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0
