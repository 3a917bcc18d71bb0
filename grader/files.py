"""Atomic file writes: readers (and a resumed batch) never see half a file."""

from __future__ import annotations

import json
from pathlib import Path

from lab_utils.files import atomic_path


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
