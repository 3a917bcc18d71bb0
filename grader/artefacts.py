"""The artefact contract between a learner's kernel and the grader.

After each step the grader runs one cell that calls :func:`save_artefacts` in the learner's kernel.
It writes only data — PNG images with their generation records, JSON, and the PEFT adapter
(safetensors + config) — into a folder the grader chose; the grader then recomputes every check from
those files in its own process. Nothing read here is trusted: a saved image is compared with its
regeneration, a saved adapter is differentiated by the grader itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from grader.files import write_json

MANIFEST = "manifest.json"
IMAGE_NAMES = ("baseline_image", "adapted_image")


def save_cell_source(directory: Path) -> str:
    """The code the grader appends to the notebook (runs in the learner's kernel)."""
    return (
        "from grader.artefacts import save_artefacts as _grader_save_artefacts\n"
        f"_grader_save_artefacts({str(directory)!r}, globals())\n"
        "del _grader_save_artefacts"
    )


def save_artefacts(directory: str | os.PathLike[str], namespace: dict) -> None:
    """Save what the notebook produced. Never raises: problems are recorded in the manifest."""
    from peft import PeftModel

    from lab_utils.generate import RECORD_KEY

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"images": {}, "adapter": None, "errors": []}

    def attempt(what: str, action) -> None:
        try:
            action()
        except Exception as error:  # noqa: BLE001 — record, never break the learner's kernel
            manifest["errors"].append(f"{what}: {type(error).__name__}: {error}")

    for name in IMAGE_NAMES:
        image = namespace.get(name)
        if isinstance(image, Image.Image):

            def save_image(name=name, image=image) -> None:
                image.convert("RGB").save(out / f"{name}.png")
                record = image.info.get(RECORD_KEY)
                manifest["images"][name] = {
                    "file": f"{name}.png",
                    "record": record if isinstance(record, dict) else None,
                }

            attempt(name, save_image)

    peft_models = [v for k, v in namespace.items() if not k.startswith("_") and isinstance(v, PeftModel)]
    if isinstance(namespace.get("unet"), PeftModel):
        peft_models.insert(0, namespace["unet"])
    if peft_models:

        def save_adapter() -> None:
            peft_models[0].save_pretrained(str(out / "adapter"))
            manifest["adapter"] = "adapter"

        attempt("adapter", save_adapter)

    write_json(out / MANIFEST, manifest)


@dataclass
class Artefacts:
    """What the grader read back from an artefact folder (all of it untrusted)."""

    directory: Path
    images: dict[str, Image.Image] = field(default_factory=dict)
    records: dict[str, dict | None] = field(default_factory=dict)
    adapter_dir: Path | None = None
    errors: list[str] = field(default_factory=list)


def read_artefacts(directory: Path) -> Artefacts:
    """Read the folder :func:`save_artefacts` wrote; a missing or broken piece is simply absent."""
    found = Artefacts(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        found.errors.append("the notebook's artefacts were not saved (the kernel died or timed out)")
        return found
    for name, entry in (manifest.get("images") or {}).items():
        if name in IMAGE_NAMES and isinstance(entry, dict):
            try:
                with Image.open(directory / f"{name}.png") as image:
                    found.images[name] = image.convert("RGB")
                found.records[name] = entry.get("record") if isinstance(entry.get("record"), dict) else None
            except (OSError, ValueError) as error:
                found.errors.append(f"{name}: unreadable PNG ({error})")
    if manifest.get("adapter") and (directory / "adapter" / "adapter_config.json").is_file():
        found.adapter_dir = directory / "adapter"
    found.errors += [str(e) for e in manifest.get("errors") or []]
    return found
