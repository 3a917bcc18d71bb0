"""Silence, narrowly, library messages that are known to be harmless here."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def silence_known_warnings() -> None:
    """Drop transformers' "`CLIPImageProcessor` requires torchvision" notice.

    diffusers imports the CLIP image processor for the (unused) safety checker; without torchvision
    transformers falls back to the PIL processor and says so on every import. This lab keeps
    torchvision out on purpose (it breaks diffusers/transformers imports beside CPU torch), so the
    notice is noise. Only that message on that logger is dropped.
    """
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _DropMessages) for f in logger.filters):
        logger.addFilter(_DropMessages("requires torchvision (not installed)"))


@contextmanager
def quiet_loading() -> Iterator[None]:
    """While a pipeline loads: diffusers' and transformers' warnings and progress bars — fetch
    attempts while offline, "Defaulting to unsafe serialization", deprecated class names, a variant's
    fallback notices — stay out of the learner's output. Errors still raise."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    bars = diffusers_logging.is_progress_bar_enabled()
    # diffusers logs a folder without safetensors as an *error* ("An error occurred while trying to
    # fetch …") before it loads the .bin files that are there: only a raised error counts here
    diffusers_logging.set_verbosity(logging.CRITICAL)
    transformers_logging.set_verbosity(logging.CRITICAL)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars:
            diffusers_logging.enable_progress_bar()
            transformers_logging.enable_progress_bar()
