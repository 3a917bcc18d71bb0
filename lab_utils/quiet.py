"""Silence, narrowly, library messages that are known to be harmless here."""

from __future__ import annotations

import logging


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
