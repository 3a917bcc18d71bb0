"""The one error type the lab raises for problems a learner or instructor can fix."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class LabError(Exception):
    """A problem with the lab's inputs: the message is one line naming what to change.

    In a notebook, IPython calls ``_render_traceback_`` instead of printing the stack, so a learner
    sees one short line rather than a 60-line traceback through diffusers.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"LabError: {self}"]


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
