"""Atomic file writes — readers (a resumed batch, a learner's client) never see half a file — and
the one-line errors for a path that cannot be read. Standard library only."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lab_utils.errors import LabError


def current_umask() -> int:
    """This process's umask, read without changing it (Linux), else the usual 022."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on success it replaces ``path`` (with the
    permissions ``open()`` would give, not mkstemp's private 0600), on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # after the write: a writer that replaces the file (safetensors' save_file) leaves mkstemp's 0600
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def shown(path: str | os.PathLike[str]) -> str:
    """A path as an error line can always print it: bytes that are not UTF-8 as ``\\xff`` escapes."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def readable_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a file that can be opened and is not empty, else a LabError of one line naming it
    (``what``: "notebook", "checks file", …) and what to do: missing, a symlink loop, a folder, not a
    regular file, unreadable, empty."""
    path = Path(path)
    info = _stat(path, what)
    if stat.S_ISDIR(info.st_mode):
        raise LabError(f"{what} '{shown(path)}' is a folder, not a file: give the file itself")
    if not stat.S_ISREG(info.st_mode):
        raise LabError(f"{what} '{shown(path)}' is not a regular file (a pipe or a device): give a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise LabError(
            f"{what} '{shown(path)}' cannot be read ({error.strerror}): check its permissions"
        ) from None
    if info.st_size == 0:
        raise LabError(f"{what} '{shown(path)}' is empty (0 bytes): give the complete file")
    return path


def readable_folder(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a folder that can be listed, else a LabError of one line naming it."""
    path = Path(path)
    info = _stat(path, what)
    if not stat.S_ISDIR(info.st_mode):
        raise LabError(f"{what} '{shown(path)}' is a file, not a folder: give the folder that holds it")
    try:
        os.listdir(path)
    except OSError as error:
        raise LabError(
            f"{what} '{shown(path)}' cannot be read ({error.strerror}): check its permissions"
        ) from None
    return path


def _stat(path: Path, what: str) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise LabError(f"{what} '{shown(path)}' is a broken symlink: point it at the real file") from None
        raise LabError(f"{what} '{shown(path)}' does not exist") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise LabError(f"{what} '{shown(path)}' is a symlink loop: point it at the real file") from None
        raise LabError(f"{what} '{shown(path)}' cannot be read ({error.strerror})") from None
