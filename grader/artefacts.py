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
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from grader.files import write_json

MANIFEST = "manifest.json"
EVALUATION = "evaluation.json"
IMAGE_NAMES = ("baseline_image", "adapted_image")


def save_cell_source(directory: Path) -> str:
    """The code the grader appends to the notebook (runs in the learner's kernel)."""
    return (
        "from grader.artefacts import save_artefacts as _grader_save_artefacts\n"
        f"_grader_save_artefacts({str(directory)!r}, globals())\n"
        "del _grader_save_artefacts"
    )


def save_artefacts(directory: str | os.PathLike[str], namespace: dict) -> None:
    """Save what the notebook produced. Never raises: problems are recorded in the manifest.

    peft (and with it torch) is only looked at when the notebook imported it: a kernel that never
    did holds no PEFT model, and the cell then costs milliseconds, not seconds of imports."""
    from lab_utils.metrics import RECORD_KEY

    PeftModel = getattr(sys.modules.get("peft"), "PeftModel", None)

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

    peft_models: list[Any] = []
    if isinstance(PeftModel, type):
        peft_models = [v for k, v in namespace.items() if not k.startswith("_") and isinstance(v, PeftModel)]
        if isinstance(namespace.get("unet"), PeftModel):
            peft_models.insert(0, namespace["unet"])
    if peft_models:

        def save_adapter() -> None:
            peft_models[0].save_pretrained(str(out / "adapter"))
            manifest["adapter"] = "adapter"

        attempt("adapter", save_adapter)

    attempt("evaluation", lambda: _save_evaluation(out, namespace, manifest))
    attempt("exports", lambda: _save_exports(out, namespace, manifest))
    write_json(out / MANIFEST, manifest)


MAX_EXPORTS = 4  # exported adapter files copied for the optional export check


def _save_evaluation(out: Path, namespace: dict, manifest: dict) -> None:
    """The first ``lab_utils.evaluate`` result in the namespace: its prompts, seeds, settings and
    claimed pixel changes (the grader recomputes them). None exists in a kernel that never imported
    lab_utils.evaluation (which imports torch: it is not imported for nothing)."""
    module = sys.modules.get("lab_utils.evaluation")
    if module is None:
        return
    Evaluation = module.Evaluation
    for name, value in namespace.items():
        if not name.startswith("_") and isinstance(value, Evaluation):
            write_json(out / EVALUATION, {"variable": name, **value.summary()})
            manifest["evaluation"] = EVALUATION
            return


def _save_exports(out: Path, namespace: dict, manifest: dict) -> None:
    """Adapter files the notebook exported (``export_adapter`` returns a Path): every top-level
    ``Path`` to a ``.safetensors`` file other than a PEFT folder's, copied as ``exports/NAME.safetensors``.
    A kernel that never imported lab_utils' adapter code (export_adapter) exported nothing."""
    schemes = sys.modules.get("lab_utils.adapters.schemes")
    if schemes is None:
        return
    DIFFUSERS_FILE, PEFT_WEIGHTS = schemes.DIFFUSERS_FILE, schemes.PEFT_WEIGHTS

    exports: dict[str, str] = {}
    for name, value in namespace.items():
        if name.startswith("_") or not isinstance(value, Path) or len(exports) >= MAX_EXPORTS:
            continue
        file = value / DIFFUSERS_FILE if value.is_dir() else value
        if file.suffix != ".safetensors" or file.name == PEFT_WEIGHTS or not file.is_file():
            continue
        if file.stat().st_size > MAX_ADAPTER_BYTES:  # a model's weights, not an adapter
            continue
        (out / "exports").mkdir(exist_ok=True)
        shutil.copyfile(file, out / "exports" / f"{name}.safetensors")
        exports[name] = f"exports/{name}.safetensors"
    if exports:
        manifest["exports"] = exports


@dataclass
class Artefacts:
    """What the grader read back from an artefact folder (all of it untrusted)."""

    directory: Path
    images: dict[str, Image.Image] = field(default_factory=dict)
    records: dict[str, dict | None] = field(default_factory=dict)
    adapter_dir: Path | None = None
    errors: list[str] = field(default_factory=list)
    exports: dict[str, Path] = field(default_factory=dict)  # variable name → exported adapter file
    evaluation: dict | None = None  # the notebook's held-out evaluation, as it claimed it


MAX_RANK = 1024  # a forged adapter_config.json must not make the grader allocate without bound
MAX_ADAPTER_BYTES = 2**30
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def read_artefacts(directory: Path) -> Artefacts:
    """Read the folder :func:`save_artefacts` wrote; a missing, broken or forged piece is absent
    and named in ``errors``. The kernel can write this folder, so every field is checked for type
    and range here, and nothing but JSON, PNG and safetensors is ever read."""
    found = Artefacts(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        found.errors.append("the notebook's artefacts were not saved (the kernel died or timed out)")
        return found
    if not isinstance(manifest, dict):
        found.errors.append("manifest.json was not written by the grader (not a JSON object)")
        return found
    images = manifest.get("images")
    if not isinstance(images, dict):
        images = {}
    for name in IMAGE_NAMES:
        entry = images.get(name)
        if not isinstance(entry, dict):
            continue
        try:
            with Image.open(directory / f"{name}.png", formats=["PNG"]) as image:
                found.images[name] = image.convert("RGB")
        except Exception as error:  # noqa: BLE001 — PIL raises many types (DecompressionBombError too)
            found.errors.append(f"{name}: unreadable PNG ({type(error).__name__})")
            continue
        record = entry.get("record")
        found.records[name] = record if isinstance(record, dict) else None
    if manifest.get("adapter"):
        problem = adapter_problem(directory / "adapter")
        if problem is None:
            found.adapter_dir = directory / "adapter"
        else:
            found.errors.append(f"adapter: {problem}")
    exports = manifest.get("exports")
    for name, file in exports.items() if isinstance(exports, dict) else []:
        path = directory / "exports" / f"{name}.safetensors"
        if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,99}", name)):
            found.errors.append("exports: a variable name that Python would not accept")
        elif file != f"exports/{name}.safetensors" or not path.is_file():
            found.errors.append(f"exports: {name}'s file is missing")
        elif path.stat().st_size > MAX_ADAPTER_BYTES:
            found.errors.append(f"exports: {name} is over {MAX_ADAPTER_BYTES // 2**30} GB")
        else:
            found.exports[name] = path
        if len(found.exports) >= MAX_EXPORTS:
            break
    if manifest.get("evaluation"):
        try:
            evaluation = json.loads((directory / EVALUATION).read_text())
        except (OSError, ValueError):
            evaluation = None
        if isinstance(evaluation, dict):
            found.evaluation = evaluation
        else:
            found.errors.append("evaluation: evaluation.json is missing or not a JSON object")
    errors = manifest.get("errors")
    if isinstance(errors, list):
        found.errors += [str(e)[:500] for e in errors[:20]]
    return found


def adapter_problem(folder: Path) -> str | None:
    """Why a saved PEFT adapter folder must not be loaded, or None: safetensors and JSON only
    (never a pickle), a sane rank, a bounded size."""
    config_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    try:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    except OSError:
        return "no adapter folder"
    if pickles:
        return f"{', '.join(pickles)}: the grader loads safetensors only, never pickles"
    if not config_path.is_file() or not weights.is_file():
        return "adapter_config.json or adapter_model.safetensors is missing"
    if weights.stat().st_size > MAX_ADAPTER_BYTES:
        return f"adapter_model.safetensors is over {MAX_ADAPTER_BYTES // 2**30} GB"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return "adapter_config.json is not JSON"
    if not isinstance(config, dict):
        return "adapter_config.json is not a JSON object"
    pattern = config.get("rank_pattern") or {}
    ranks = [config.get("r")] + (list(pattern.values()) if isinstance(pattern, dict) else [None])
    for rank in ranks:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_RANK:
            return f"rank {rank!r} is not an integer from 1 to {MAX_RANK}"
    return None
