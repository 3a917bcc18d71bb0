"""The grading environment's fingerprint: which card, driver, library versions and model graded."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lab_utils.errors import LabError
from lab_utils.files import shown
from lab_utils.models import ModelSpec
from lab_utils.tiny import tiny_model_dir

_CHUNK = 1 << 20  # bytes read from each weight file for the model hash


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def model_identity(spec: ModelSpec) -> dict:
    """What the model is, with a quick hash: every config file whole, plus each weight file's name,
    size and first MiB (the safetensors header lists every tensor's shape and offset)."""
    model = str(spec)
    if spec.kind in ("hub", "sd15-arch"):  # sd15-arch is built in code: the package version identifies it
        return {"model": model, "kind": spec.kind, "hash": None}
    folder = tiny_model_dir() if spec.kind == "tiny" else Path(spec.source)
    digest = hashlib.sha256()
    if folder.is_file():
        files = [folder]
    else:  # links are not followed: a loop in a pod folder cannot trap the walk
        files = sorted(Path(root, name) for root, _, names in os.walk(folder) for name in names)
    for path in files:
        try:
            if path.suffix in {".json", ".txt"}:
                digest.update(path.name.encode() + path.read_bytes())
            elif path.suffix in {".safetensors", ".bin", ".ckpt"}:
                with path.open("rb") as handle:
                    digest.update(f"{path.name}:{path.stat().st_size}".encode() + handle.read(_CHUNK))
        except OSError as error:
            raise LabError(
                f"model file '{shown(path)}' cannot be read ({error.strerror}): check its permissions"
            ) from None
    identity = {"model": model, "kind": spec.kind, "hash": digest.hexdigest()[:16]}
    return identity


def fingerprint(model: ModelSpec) -> dict:
    """GPU, driver, Python/torch/diffusers/peft/transformers versions and the model's identity."""
    import torch

    from lab_utils.models import default_device

    device = default_device()
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else None
    return {
        "device": device.type,
        "gpu": gpu,
        "driver": _driver() if gpu else None,
        "cuda": torch.version.cuda if gpu else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "sd_lora_lab": _version("sd-lora-lab"),
        **model_identity(model),
    }
