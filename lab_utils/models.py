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
from lab_utils.files import readable_file, readable_folder, shown

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
    its absolute path or id; ``config`` the config folder of a single file; ``name`` as the user gave
    it; ``variant`` the weight files' variant to load."""

    kind: str
    source: str
    config: str | None = None
    name: str = ""
    variant: str | None = None  # "fp16" for a folder whose weights are (partly) the fp16 variant only

    def __str__(self) -> str:
        return self.name or self.source

    @property
    def key(self) -> tuple[str, str, str | None]:
        """What identifies the model wherever it was named from (a folder by its absolute path)."""
        return (self.kind, self.source, self.config)


def resolve_model(model: str | ModelSpec, config: str | os.PathLike[str] | None = None) -> ModelSpec:
    """Check what ``model`` names without loading any weights.

    A folder is read as pods have them: a diffusers folder with its weights as safetensors, as
    ``.bin`` pickles, as the fp16 variant only (``*.fp16.safetensors``, what ``variant="fp16"``
    downloads leave) or a mix; a folder with the model's configs and one single-file checkpoint
    beside them; or a folder holding only that checkpoint. A single-file checkpoint with the
    original (LDM) keys takes its configs from ``config``, else from the folder it sits in, else —
    when its shapes are the built-in model's — from the built-in model.

    Raises:
        LabError: one line naming the model and what to do (missing path, a folder with neither
            model_index.json nor a checkpoint, a component without weights, a checkpoint without
            configs, a file that is not a checkpoint, a hub id while offline).
    """
    if isinstance(model, ModelSpec):
        return model
    model = str(model).strip()
    path = Path(model).expanduser()
    if model == "tiny":
        return ModelSpec("tiny", model, name=model)
    if model == SD15_ARCH:
        return ModelSpec("sd15-arch", model, name=model)
    if os.path.lexists(path):  # a symlink loop or a broken link is named as such, not "not found"
        if path.is_dir():
            return _resolve_folder(shown(model), readable_folder(path, "model folder"))
        return _resolve_file(shown(model), readable_file(path, "model file"), config)
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


CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
WEIGHT_NAMES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}


def _weights(component: Path, stem: str) -> tuple[bool, bool]:
    """(plain weights, fp16-variant weights) in one component folder: single files or shards."""
    names = {p.name for p in component.iterdir()} if component.is_dir() else set()
    stems = {stem, "pytorch_model"} if stem == "model" else {stem}

    def has(infix: str) -> bool:
        return any(  # a single file, or the index of its shards
            f"{s}{infix}{suffix}{index}" in names
            for s in stems
            for suffix in (".safetensors", ".bin")
            for index in ("", ".index.json")
        )

    return has(""), has(".fp16")


def _resolve_folder(model: str, path: Path) -> ModelSpec:
    checkpoints = sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
    if not (path / "model_index.json").is_file():
        if len(checkpoints) == 1:
            return _resolve_file(model, checkpoints[0], None)
        if checkpoints:
            raise LabError(
                f"model folder '{model}' holds {len(checkpoints)} checkpoints "
                f"({', '.join(p.name for p in checkpoints)}): give the one to use as the model"
            )
        raise LabError(
            f"model folder '{model}' has no model_index.json: point {MODEL_ENV} at a diffusers "
            "pipeline folder (the one holding unet/, vae/, text_encoder/, tokenizer/)"
        )
    found = {c: _weights(path / c, stem) for c, stem in WEIGHT_NAMES.items()}
    if not any(plain or fp16 for plain, fp16 in found.values()) and len(checkpoints) == 1:
        return ModelSpec("single_file", str(checkpoints[0].resolve()), str(path.resolve()), name=model)
    missing = [c for c, (plain, fp16) in found.items() if not (plain or fp16)]
    if missing:
        stem = WEIGHT_NAMES[missing[0]]
        raise LabError(
            f"model folder '{model}': {missing[0]}/ has no weights ({stem}.safetensors, .bin or "
            f".fp16.safetensors): download the model folder again, with its weight files"
        )
    # the fp16 variant where a component has only that; diffusers takes the plain files of the others
    variant = "fp16" if any(fp16 and not plain for plain, fp16 in found.values()) else None
    return ModelSpec("folder", str(path.resolve()), name=model, variant=variant)


def _resolve_file(model: str, path: Path, config: str | os.PathLike[str] | None) -> ModelSpec:
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise LabError(f"model file '{model}' is not a .safetensors or .ckpt checkpoint")
    if config is not None:
        if not (Path(config) / "model_index.json").is_file():
            raise LabError(
                f"config folder '{config}' for '{model}' has no model_index.json: give the model's "
                "diffusers folder (its configs and tokenizer; the weights may be absent)"
            )
        return ModelSpec("single_file", str(path.resolve()), str(Path(config).resolve()), name=model)
    if (path.parent / "model_index.json").is_file():
        return ModelSpec("single_file", str(path.resolve()), str(path.parent.resolve()), name=model)
    if path.suffix == ".safetensors" and _is_builtin_checkpoint(model, path):
        from lab_utils.tiny import tiny_model_dir

        return ModelSpec("single_file", str(path.resolve()), str(tiny_model_dir()), name=model)
    raise LabError(
        f"single-file checkpoint '{model}' has no configs or tokenizer beside it, and offline they "
        "cannot be fetched: put it in a folder with the model's configs (model_index.json, unet/, "
        "vae/, text_encoder/, tokenizer/, scheduler/ — the hub repo without its weights), or pass "
        "config=<that folder>"
    )


def _is_builtin_checkpoint(model: str, path: Path) -> bool:
    """Whether the checkpoint has the original (LDM) keys with the built-in model's shapes (read from
    its header only, without torch)."""
    import json

    from safetensors import SafetensorError, safe_open

    key = "model.diffusion_model.input_blocks.0.0.weight"
    try:
        with safe_open(str(path), framework="numpy") as checkpoint:
            shape = checkpoint.get_slice(key).get_shape() if key in checkpoint.keys() else None
    except (OSError, SafetensorError):
        raise LabError(
            f"model file '{model}' is not a readable safetensors file (empty, truncated or another "
            "format): download it again"
        ) from None
    if shape is None:
        raise LabError(
            f"model file '{model}' is not a Stable Diffusion checkpoint (no model.diffusion_model.* "
            "keys): give the base model's checkpoint or folder (an adapter goes to load_adapter)"
        )
    from lab_utils.tiny import tiny_model_dir

    unet = json.loads((tiny_model_dir() / "unet" / "config.json").read_text())
    return list(shape) == [unet["block_out_channels"][0], unet["in_channels"], 3, 3]


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
        config: for a single-file checkpoint, a local diffusers folder with its configs (default:
            the folder the checkpoint is in, else the built-in model's for its shapes).

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
        pipe = _catching(
            model, StableDiffusionPipeline.from_pretrained, tiny_model_dir(), local_files_only=True, **kwargs
        )
    elif spec.kind == "sd15-arch":
        pipe = _catching(model, sd15_pipeline, device, dtype)
    elif spec.kind == "folder":
        optional = {  # listed in model_index.json but not downloaded: load the pipeline without them
            name: None
            for name in ("feature_extractor", "image_encoder")
            if not (Path(spec.source) / name).is_dir()
        }
        pipe = _catching(
            model,
            StableDiffusionPipeline.from_pretrained,
            spec.source,
            local_files_only=True,
            variant=spec.variant,
            **optional,
            **kwargs,
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
    """Load with the libraries' notices silenced; their long tracebacks become one line naming the model."""
    from lab_utils.quiet import quiet_loading

    try:
        with quiet_loading():
            return load(*args, **kwargs)
    except LabError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LabError(f"could not load model '{model}': {first}") from error
