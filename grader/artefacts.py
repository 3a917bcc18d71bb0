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
import tempfile
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
    did holds no adapter, and the cell then costs milliseconds, not seconds of imports."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"images": {}, "adapter": None, "errors": []}

    def attempt(what: str, action) -> None:
        try:
            action()
        except Exception as error:  # noqa: BLE001 — record, never break the learner's kernel
            manifest["errors"].append(f"{what}: {type(error).__name__}: {error}")

    for name in IMAGE_NAMES:
        if namespace.get(name) is not None:
            attempt(name, lambda name=name: _save_image(out, name, namespace[name], manifest))
    if "peft" in sys.modules:
        attempt("adapter", lambda: _save_adapter(out, namespace, manifest))
    attempt("evaluation", lambda: _save_evaluation(out, namespace, manifest))
    attempt("exports", lambda: _save_exports(out, namespace, manifest))
    write_json(out / MANIFEST, manifest)


def _save_image(out: Path, name: str, value: Any, manifest: dict) -> None:
    """An image however the pipeline returned it (PIL, a 0–1 numpy array or tensor, uint8 pixels; a
    list of one), saved as PNG with its record: the one it carries, else the one the library-boundary
    recording (lab_utils.recording) kept for a pipeline output with these pixels."""
    from lab_utils import recording
    from lab_utils.metrics import RECORD_KEY

    if isinstance(value, list | tuple) and len(value) == 1:
        value = value[0]
    pixels = recording.as_pixels(value)
    if pixels is None:
        raise TypeError(f"{name} is a {type(value).__name__}, not an image (keep the PIL image: .images[0])")
    record = value.info.get(RECORD_KEY) if isinstance(value, Image.Image) else None
    if not isinstance(record, dict):
        record = recording.record_for(pixels)
    Image.fromarray(pixels).save(out / f"{name}.png")
    manifest["images"][name] = {"file": f"{name}.png", "record": record if isinstance(record, dict) else None}


def _lora_unets(namespace: dict) -> list[tuple[str, Any]]:
    """(where, model) for every U-Net in the notebook that carries PEFT LoRA layers however they
    were attached — ``unet`` first, then other variables, then each pipeline's ``.unet`` — each
    model once."""
    import torch
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    def carries_lora(value) -> bool:
        return isinstance(value, PeftModel) or (
            isinstance(value, torch.nn.Module)
            and isinstance(getattr(value, "peft_config", None), dict)
            and any(isinstance(m, BaseTunerLayer) for m in value.modules())
        )

    names = [k for k in namespace if not k.startswith("_")]
    names.sort(key=lambda k: (k != "unet", not isinstance(namespace[k], PeftModel), k != "pipe"))
    places = [(k, lambda k=k: namespace[k]) for k in names]
    places += [(f"{k}.unet", lambda k=k: getattr(namespace[k], "unet", None)) for k in names]
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    for where, value_of in places:
        try:
            value = value_of()
            if not carries_lora(value):
                continue
        except Exception:  # noqa: BLE001 — an object whose attributes raise is not a U-Net
            continue
        base = value.get_base_model() if isinstance(value, PeftModel) else value
        if id(base) not in seen:
            seen.add(id(base))
            found.append((where, value))
    return found


def _save_adapter(out: Path, namespace: dict, manifest: dict) -> None:
    """The active LoRA adapter of the notebook's U-Net, as a PEFT folder (lab_utils.save_adapter)."""
    found = _lora_unets(namespace)
    if not found:
        return
    from lab_utils.lora import active_adapter, save_adapter

    where, model = found[0]
    adapter = active_adapter(model, f"`{where}`")
    save_adapter(model, out / "adapter")
    manifest["adapter"] = "adapter"
    manifest["adapter_source"] = {"variable": where, "adapter": adapter.name, "adapters": list(adapter.names)}


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
    adapter_source: dict | None = None  # {"variable", "adapter", "adapters"}: where the saver found it


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
        source = manifest.get("adapter_source")
        if _adapter_source_ok(source):
            found.adapter_source = source
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


def _adapter_source_ok(source) -> bool:
    def name(value) -> bool:
        return isinstance(value, str) and 0 < len(value) <= 100

    return (
        isinstance(source, dict)
        and name(source.get("variable"))
        and name(source.get("adapter"))
        and isinstance(source.get("adapters"), list)
        and 0 < len(source["adapters"]) <= 20
        and all(name(a) for a in source["adapters"])
    )


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


KEPT = "artefacts"  # the folder beside results.json where a grading keeps what it verified
REGENERATED = "regenerated"  # beside it: the images the grader made from them (checks.memo.Memo)


def keep_artefacts(snapshot: Path, output: Path) -> Path:
    """Copy what the checks read from ``snapshot`` into ``output/artefacts`` (replacing an earlier
    copy), so ``python -m grader regrade`` can recompute every check without running the notebook.

    Only the names the grader's artefact cell writes, only regular files (a link the kernel planted
    is not followed), each no larger than an adapter may be: the kernel wrote this folder.
    """
    names = [MANIFEST, EVALUATION, *(f"{n}.png" for n in IMAGE_NAMES)]
    names += [f"adapter/{n}" for n in ("adapter_config.json", "adapter_model.safetensors")]
    exports = snapshot / "exports"
    if exports.is_dir() and not exports.is_symlink():
        names += [f"exports/{p.name}" for p in sorted(exports.glob("*.safetensors"))[:MAX_EXPORTS]]
    staging = Path(tempfile.mkdtemp(prefix=".artefacts-", dir=output))
    try:
        for name in names:
            source = snapshot / name
            if source.is_symlink() or not source.is_file() or source.stat().st_size > MAX_ADAPTER_BYTES:
                continue
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / name)
        kept = output / KEPT
        if kept.exists():
            shutil.rmtree(kept)
        staging.rename(kept)  # one rename: a reader sees the old copy gone, then the whole new one
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return kept
