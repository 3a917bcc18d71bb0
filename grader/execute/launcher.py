"""The sandbox's launcher: the kernelspec's first command (``python -m grader.execute.launcher SPEC --
KERNEL ARGV``). It runs as the kernel-to-be, before any learner code exists: joins the run's control
groups, sets resource limits, then isolates the kernel — wrapped in bubblewrap, or in namespaces it
builds itself — writes what it applied to the status file, and becomes the kernel (``exec``). The
grader's side — preparing the spec, the folders and control groups, killing what is left — is
``grader.execute.sandbox``. Standard library only, so it starts in milliseconds.

The ``namespaces`` mode is bubblewrap's isolation without bubblewrap (Linux, as root or with user
namespaces): new mount, PID, IPC, UTS and network namespaces (a user namespace too unless root);
every mount read-only except the run's writable folders; the grader's run folders and ``/run`` (its
sockets) hidden under empty file systems; a fresh ``/proc`` (only the kernel's processes) with its
system files read-only; a minimal ``/dev`` (null, zero, full, random, urandom, tty, the GPUs, a
private ``/dev/shm`` and pseudo-terminal instance) — no disks; every capability dropped and
``no_new_privs`` set. Inside, a small
init (PID 1) relays signals and reaps orphans; the kernel is its child in a session of its own.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import NoReturn

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MOUNT_FLAGS = {  # per-mount options a read-only remount must keep (a user namespace locks them)
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
}
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")  # as bubblewrap keeps them
RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
SETUP_FAILED = 71  # the exit status when the namespaces could not be built (EX_OSERR)


class SetupError(Exception):
    """The sandbox could not be built: the kernel must not start."""


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
    if mode in ("bwrap", "namespaces"):
        # ipykernel polls this PID and exits when it is gone — in the new PID namespace it never
        # exists; the kernel ends with its launcher (and so with the grader) instead
        os.environ.pop("JPY_PARENT_PID", None)
    if mode == "bwrap":
        status["network"] = status["filesystem"] = "isolated"
        _write_status(spec["status"], status)
        argv = _bwrap_argv(spec) + argv
    elif mode == "namespaces":
        # the status file is opened here, in the grader's mount namespace: the kernel's view of it
        # is read-only, and init writes through this descriptor once the namespaces stand
        fd = os.open(spec["status"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _enter_namespaces(spec, argv, status, fd)
        except SetupError as error:
            _setup_failed(error, status, fd)
    else:
        status["network"] = "not isolated (--sandbox none)"
        status["filesystem"] = "not isolated (--sandbox none)"
        _write_status(spec["status"], status)
    os.chdir(spec["workdir"])
    os.execvp(argv[0], argv)


def _write_status(path: str, status: dict) -> None:
    Path(path).write_text(json.dumps(status))


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
    hidden = spec.get("hidden", [])
    for path in hidden:
        argv += ["--tmpfs", path]
    for path in spec["writable"]:
        argv += ["--bind", path, path]
    for path in hidden:
        argv += ["--remount-ro", path]
    return argv + ["--chdir", spec["workdir"], "--"]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        raise SetupError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _mount(
    libc, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    encode = lambda text: None if text is None else os.fsencode(text)  # noqa: E731
    _check(
        libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)),
        f"mount {target}",
    )


def _enter_namespaces(spec: dict, argv: list[str], status: dict, status_fd: int) -> None:
    """Build the namespaces, then, as their PID 1, fork the kernel and stay as its init. The
    launcher itself stays outside as the process the grader started, relaying signals."""
    if not sys.platform.startswith("linux"):
        raise SetupError("namespaces are Linux only (install bubblewrap, or --sandbox none)")
    libc = _libc()
    uid, gid = os.geteuid(), os.getegid()
    userns = uid != 0  # root needs no user namespace; anyone else gets one
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET
    if libc.unshare(flags | (CLONE_NEWUSER if userns else 0)) != 0:
        raise SetupError(
            f"unshare: {os.strerror(ctypes.get_errno())} (run as root, or enable user namespaces: "
            "sysctl kernel.unprivileged_userns_clone=1)"
        )
    if userns:  # the same ids inside: files keep their owners, and exec drops the namespace's capabilities
        try:
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        except OSError as error:
            raise SetupError(f"user namespace id maps: {error.strerror}") from None
    child = os.fork()
    if child:
        os.close(status_fd)
        _relay_and_wait(child)  # never returns
    try:  # PID 1 of the new namespace
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the launcher gone: all of it ends
        os.setsid()
        _build_filesystem(libc, spec)
        status.update(
            network="isolated",
            filesystem="isolated",
            namespaces=["mount", "pid", "ipc", "uts", "net"] + (["user"] if userns else []),
        )
        os.write(status_fd, json.dumps(status).encode())
        os.close(status_fd)
        kernel = os.fork()
        if kernel == 0:
            os.setsid()
            _drop_privileges(libc)
            os.chdir(spec["workdir"])
            try:
                os.execvp(argv[0], argv)
            except OSError as error:
                sys.stderr.write(f"sandbox: cannot start {argv[0]}: {error.strerror}\n")
            os._exit(127)
        _drop_privileges(libc)
    except SetupError as error:
        _setup_failed(error, status, status_fd)
    _init(kernel)


def _setup_failed(error: SetupError, status: dict, status_fd: int) -> NoReturn:
    """The kernel must not start: say why in the status file and on stderr (the kernel's log)."""
    status["error"] = str(error)
    os.write(status_fd, json.dumps(status).encode())
    sys.stderr.write(f"sandbox: {error}\n")
    os._exit(SETUP_FAILED)


def _relay_and_wait(child: int) -> None:
    """The launcher outside: pass the grader's signals (interrupt, terminate) on, exit as the child did."""
    for sig in RELAYED:
        signal.signal(sig, lambda number, _frame: _forward(child, number))
    while True:
        try:
            _, wait_status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            os._exit(SETUP_FAILED)
    os._exit(_exit_code(wait_status))


def _init(kernel: int) -> None:
    """PID 1 inside: relay signals to the kernel, reap every orphan, exit with the kernel (the
    namespace's other processes die with it)."""
    for sig in RELAYED:
        signal.signal(sig, lambda number, _frame: _forward(kernel, number))
    while True:
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if pid == kernel:
            os._exit(_exit_code(wait_status))


def _forward(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except OSError:
        pass


def _exit_code(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _mountinfo() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) for every mount of this namespace, parents first."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = (
            fields[4].encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")
        )
        mounts.append((point, set(fields[5].split(","))))
    return mounts


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _build_filesystem(libc, spec: dict) -> None:
    """Everything read-only but the writable folders; hidden folders empty; fresh /dev and /proc."""
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the grader's view
    writable = [os.path.realpath(p) for p in spec["writable"]]
    hidden = [os.path.realpath(p) for p in spec.get("hidden", [])]
    # descriptors on what is about to be covered: binds are made from them afterwards
    keep = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in writable}
    dev = os.open("/dev", os.O_PATH | os.O_DIRECTORY)
    for folder in hidden:
        if os.path.isdir(folder):
            _mount(libc, "tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path, fd in keep.items():
        if any(_under(path, folder) for folder in hidden):
            os.makedirs(path, exist_ok=True)  # the mount point, in the hiding tmpfs
        _mount(libc, f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    for point, options in _mountinfo():
        if point == "/proc" or _under(point, "/proc/") or _under(point, "/dev"):
            continue  # replaced below
        if any(_under(point, path) for path in writable):
            continue
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        for option in options:
            flags |= MOUNT_FLAGS.get(option, 0)
        if libc.mount(None, os.fsencode(point), None, flags, None) != 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:  # covered by a later mount: unreachable
                continue
            raise SetupError(f"read-only {point}: {os.strerror(err)}")
    _mount(libc, "tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    nodes = list(DEVICES) + sorted(
        name for name in os.listdir(f"/proc/self/fd/{dev}") if name.startswith("nvidia")
    )
    for name in [*nodes, "dri"]:  # /dev/nvidia-caps and /dev/dri are folders
        source = f"/proc/self/fd/{dev}/{name}"
        if os.path.isdir(source):
            os.mkdir(f"/dev/{name}")
            _mount(libc, source, f"/dev/{name}", None, MS_BIND | MS_REC)
        elif os.path.exists(source):
            Path("/dev", name).touch()
            _mount(libc, source, f"/dev/{name}", None, MS_BIND)
    os.close(dev)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"/dev/{name}")
    # a private pseudo-terminal instance (as bubblewrap's --dev makes): IPython's `!cmd` and `%pip` run
    # commands on a pty; the host's terminals stay unseen
    os.mkdir("/dev/pts")
    _mount(libc, "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", "/dev/ptmx")
    os.mkdir("/dev/shm")
    _mount(libc, "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['memory_bytes']},mode=1777")
    _mount(libc, None, "/dev", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READONLY:
        path = f"/proc/{name}"
        if os.path.exists(path):
            _mount(libc, path, path, None, MS_BIND | MS_REC)
            _mount(
                libc, None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
            )


def _drop_privileges(libc) -> None:
    """No capabilities now or after exec, and no way to regain them (setuid files do nothing)."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3: all zero
    _check(libc.capset(ctypes.byref(header), data), "drop capabilities")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m grader.execute.launcher SPEC.json -- KERNEL ARGV...")
    launch(argv[0], argv[2:])


if __name__ == "__main__":
    main()
