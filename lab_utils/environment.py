"""Is this environment able to run the lab? One short line when it is not."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version

import torch

from lab_utils.errors import LabError
from lab_utils.models import default_device, resolve_model

MINIMUM_VERSIONS = {"torch": "2.4", "diffusers": "0.35", "transformers": "4.45", "peft": "0.17"}
"""The oldest releases the lab is tested against (pyproject.toml declares the same)."""


def _as_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


OUT_OF_MEMORY_HINT = (
    "out of GPU memory in this cell: lower the image size, the batch or the number of steps, or "
    "restart the kernel to free memory held by earlier cells (other notebooks on the GPU hold memory too)"
)


@contextmanager
def out_of_memory_hint(what: str, setting: str) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into one line naming the setting to lower."""
    try:
        yield
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise LabError(
            f"out of GPU memory during {what}: lower {setting}, or restart the kernel to free memory "
            "held by earlier cells (another notebook on the same GPU holds memory too)"
        ) from None


def show_out_of_memory(shell, etype, value, tb, tb_offset=None) -> None:
    """IPython custom-exception handler: one line for a CUDA out-of-memory error, wherever it happens."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"OutOfMemoryError: {OUT_OF_MEMORY_HINT}")


def _register_notebook_hints() -> None:
    """In a notebook, show an out-of-memory error in any cell (the training loop included) as one line."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((torch.OutOfMemoryError,), show_out_of_memory)


def check_environment(model: str = "tiny", minimums: dict[str, str] | None = None) -> str:
    """Check package versions, the model and the device; return a one-line summary. In a notebook
    it also registers a one-line message for CUDA out-of-memory errors.

    Raises:
        LabError: a package is missing or too old (with the pip command that fixes it), or the
            model cannot be found (a folder that is not mounted, a hub id offline).
    """
    minimums = MINIMUM_VERSIONS if minimums is None else minimums
    found = {}
    for package, minimum in minimums.items():
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            raise LabError(f"{package} is not installed: pip install '{package}>={minimum}'") from None
        if _as_tuple(found[package]) < _as_tuple(minimum):
            raise LabError(
                f"{package} {found[package]} is too old for this lab (needs ≥ {minimum}): "
                f"pip install -U '{package}>={minimum}', then restart the kernel"
            )
    spec = resolve_model(model)
    _register_notebook_hints()
    device = default_device()
    summary = " · ".join(f"{p} {v}" for p, v in found.items())
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else device.type
    line = f"{summary} · device: {where} · model: {model}"
    if spec.kind != "tiny" and device.type == "cpu":
        line += (
            " — no GPU found: SD 1.5 on a CPU takes minutes per image. On a GPU pod, check that "
            "`nvidia-smi` lists the card and that torch is a CUDA build (torch.version.cuda is None here)"
        )
    return line
