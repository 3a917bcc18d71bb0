"""Load a Stable Diffusion pipeline: the built-in ``tiny`` model, a local folder or file, or a hub id.

:func:`resolve_model` says what a model string names without loading anything (and without torch:
the grader resolves the model once, at its boundary, and passes the :class:`ModelSpec` on).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lab_utils.errors import LabError

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

SD15_ARCH = "sd15-arch"
"""SD 1.5's architecture built from its public config with seeded random weights (speed checks)."""

MODEL_ENV = "SD_LORA_LAB_MODEL"
"""The environment variable the notebook (and the grader's ``--model``) take the model from."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def model_from_env(default: str = "tiny") -> str:
    """The model named by ``SD_LORA_LAB_MODEL``, or ``default``."""
    return os.environ.get(MODEL_ENV, "").strip() or default


def default_device() -> torch.device:
    """cuda > mps > cpu."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it, else fp16 on GPU; fp32 on CPU (half precision is slow there)."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


@dataclass(frozen=True)
class ModelSpec:
    """What a model string names: ``kind`` is tiny, sd15-arch, folder, single_file or hub; ``source``
    its absolute path or id; ``config`` the config folder of a single file; ``name`` as the user gave it."""

    kind: str
    source: str
    config: str | None = None
    name: str = ""

    def __str__(self) -> str:
        return self.name or self.source

    @property
    def key(self) -> tuple[str, str, str | None]:
        """What identifies the model wherever it was named from (a folder by its absolute path)."""
        return (self.kind, self.source, self.config)


def resolve_model(model: str | ModelSpec, config: str | os.PathLike[str] | None = None) -> ModelSpec:
    """Check what ``model`` names without loading any weights.

    Raises:
        LabError: one line naming the model and what to do (missing path, folder without
            model_index.json, single file without a config folder, hub id while offline).
    """
    if isinstance(model, ModelSpec):
        return model
    model = str(model).strip()
    path = Path(model).expanduser()
    if model == "tiny":
        return ModelSpec("tiny", model, name=model)
    if model == SD15_ARCH:
        return ModelSpec("sd15-arch", model, name=model)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise LabError(
                f"model folder '{model}' has no model_index.json: point {MODEL_ENV} at a diffusers "
                "pipeline folder (the one holding unet/, vae/, text_encoder/, tokenizer/)"
            )
        return ModelSpec("folder", str(path.resolve()), name=model)
    if path.is_file():
        if path.suffix not in {".safetensors", ".ckpt"}:
            raise LabError(f"model file '{model}' is not a .safetensors or .ckpt checkpoint")
        if config is None or not Path(config).is_dir():
            raise LabError(
                f"single-file checkpoint '{model}' needs config=<local diffusers folder with its "
                "configs> (offline, diffusers cannot fetch them)"
            )
        return ModelSpec("single_file", str(path.resolve()), str(Path(config).resolve()), name=model)
    if _HUB_ID.match(model) and not model.startswith((".", "~")):
        from huggingface_hub import constants, try_to_load_from_cache

        if constants.HF_HUB_OFFLINE and not isinstance(
            try_to_load_from_cache(model, "model_index.json"), str
        ):
            raise LabError(
                f"model '{model}' is not a local folder, and as a hub id it cannot be downloaded "
                "offline (HF_HUB_OFFLINE=1): mount the model and give its folder"
            )
        return ModelSpec("hub", model, name=model)
    raise LabError(
        f"model '{model}' not found: give 'tiny', 'sd15-arch', a local diffusers folder, a single-file "
        f"checkpoint, or a hub id (set {MODEL_ENV} or --model)"
    )


def load_pipeline(
    model: str | ModelSpec = "tiny",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    config: str | os.PathLike[str] | None = None,
) -> StableDiffusionPipeline:
    """Load a Stable Diffusion pipeline, ready to generate, with every weight frozen.

    Args:
        model: a :class:`ModelSpec` from :func:`resolve_model`, or ``"tiny"`` (the built-in
            miniature SD, no download); ``"sd15-arch"`` (SD 1.5's architecture with seeded random
            weights, for speed checks: noise images); a local diffusers folder (SD 1.5 on a pod); a
            single-file ``.safetensors``/``.ckpt`` checkpoint (needs ``config``); or a hub id such as
            ``"stable-diffusion-v1-5/stable-diffusion-v1-5"`` (needs the network, or the hub cache
            when ``HF_HUB_OFFLINE=1``).
        device: defaults to cuda > mps > cpu.
        dtype: defaults to bf16/fp16 on a GPU and fp32 on CPU.
        config: for a single-file checkpoint, a local diffusers folder with its configs.

    Raises:
        LabError: one line naming the model and what to do when it cannot be loaded.
    """
    import torch
    from diffusers import StableDiffusionPipeline

    from lab_utils.sd15 import sd15_pipeline
    from lab_utils.tiny import tiny_model_dir

    spec = resolve_model(model, config)
    model = str(spec)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    kwargs = {"dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    if spec.kind == "tiny":
        pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir(), local_files_only=True, **kwargs)
    elif spec.kind == "sd15-arch":
        pipe = sd15_pipeline(device, dtype)
    elif spec.kind == "folder":
        pipe = _catching(
            model, StableDiffusionPipeline.from_pretrained, spec.source, local_files_only=True, **kwargs
        )
    elif spec.kind == "single_file":
        pipe = _catching(
            model,
            StableDiffusionPipeline.from_single_file,
            spec.source,
            config=spec.config,
            local_files_only=True,
            **kwargs,
        )
    else:
        pipe = _catching(model, StableDiffusionPipeline.from_pretrained, spec.source, **kwargs)
    pipe = pipe.to(device)
    for component in (pipe.unet, pipe.vae, pipe.text_encoder):
        component.requires_grad_(False)
        component.eval()
    return pipe


def _catching(model: str, load, *args, **kwargs):
    """Turn the loaders' long tracebacks into one line naming the model."""
    try:
        return load(*args, **kwargs)
    except LabError:
        raise
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LabError(f"could not load model '{model}': {first}") from error
