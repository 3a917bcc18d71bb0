"""The images a grading regenerated, kept so that a regrade recomputes the checks without making them
again (``python -m grader regrade``; ``--regenerate`` makes every one again)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


class Memo:
    """The images one grading regenerated, kept as PNG files beside its results (``regenerated/``)
    so that a regrade of it recomputes its checks without making them again. Written only by the
    grader's own process, after the kernel has ended, into a folder no kernel can see; an image is
    found again only under a key of everything that made it: the grading environment (device,
    library versions, the model's identity and hash), the validated record, adapter on or off, the
    adapter's own files (their bytes), and which regeneration of the record it is."""

    def __init__(self, folder: Path, environment: dict, reuse: bool = True) -> None:
        """``reuse=False``: keep the images made, find none (a grading; ``regrade --regenerate``)."""
        self.folder, self.reuse = folder, reuse
        self.environment = json.dumps(environment, sort_keys=True, default=str)
        self.reused = 0
        self._adapters: dict[Path, str] = {}

    def _path(self, text: str, adapted: bool, nth: int, adapter: Path | None) -> Path:
        digest = hashlib.sha256(f"{self.environment}\n{text}\n{adapted}\n{nth}\n".encode())
        if adapted and adapter is not None:
            if adapter not in self._adapters:
                files = hashlib.sha256()
                for path in sorted(p for p in adapter.rglob("*") if p.is_file()):
                    files.update(
                        f"{path.relative_to(adapter)}:{path.stat().st_size}:".encode() + path.read_bytes()
                    )
                self._adapters[adapter] = files.hexdigest()
            digest.update(self._adapters[adapter].encode())
        return self.folder / f"{digest.hexdigest()[:32]}.png"

    def get(self, text: str, adapted: bool, nth: int, adapter: Path | None):
        from PIL import Image

        if not self.reuse:
            return None
        path = self._path(text, adapted, nth, adapter)
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, ValueError):  # none kept (or not readable): it is made again
            return None
        self.reused += 1
        return image

    def put(self, text: str, adapted: bool, nth: int, adapter: Path | None, image) -> None:
        from lab_utils.files import atomic_path

        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._path(text, adapted, nth, adapter)) as temporary:
            image.save(temporary, format="PNG")
