"""Writing an adapter in the file formats people load (key names: :mod:`lab_utils.adapters.schemes`).

The kohya file keeps the **trained** alpha in every ``.alpha`` (diffusers' own converter writes
alpha = rank) and ``ss_*`` header metadata (base model, rank, alpha, steps); the diffusers file keeps
the LoRA config in its metadata so ``pipe.load_lora_weights`` restores the trained strength.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import save_file

from lab_utils.adapters.schemes import (
    DIFFUSERS_FILE,
    SCHEMES,
    kohya_keys,
    module_kind,
    pattern_value,
    peft_module,
)
from lab_utils.errors import LabError
from lab_utils.files import atomic_path
from lab_utils.lora import active_adapter, adapter_state, save_adapter


def module_rank_alpha(config: LoraConfig, module: str) -> tuple[int, float]:
    """The (rank, alpha) PEFT uses for ``module``, rank_pattern/alpha_pattern included."""
    return (
        int(pattern_value(config.rank_pattern, module, config.r)),
        float(pattern_value(config.alpha_pattern, module, config.lora_alpha)),
    )


def base_model_version(unet) -> str:
    """kohya's ``ss_base_model_version`` for the U-Net an adapter was trained on, from its shapes:
    ``sd_v1`` only for SD 1.x's (cross-attention 768, blocks 320/640/1280/1280), ``sd_v2_512`` /
    ``sd_v2_768_v`` for SD 2.x's (1024; 768 px models are v-prediction), ``sdxl_base_v1-0`` for
    SDXL's, and ``sd_lora_lab_miniature`` for the built-in model — a value no client reads as SD 1.x
    (A1111 still lists any file with metadata beside SD 1.x checkpoints unless the value starts with
    ``sdxl_``: docs/learners.md)."""
    model = unet.get_base_model() if isinstance(unet, PeftModel) else unet
    config = model.config
    blocks = tuple(config.block_out_channels)
    if config.get("addition_embed_type") == "text_time" or config.cross_attention_dim == 2048:
        return "sdxl_base_v1-0"
    if blocks == (320, 640, 1280, 1280) and config.in_channels in (4, 9):
        if config.cross_attention_dim == 768:
            return "sd_v1"
        if config.cross_attention_dim == 1024:
            return "sd_v2_768_v" if config.sample_size == 96 else "sd_v2_512"
    return "sd_lora_lab_miniature" if blocks == (64, 128, 128) else "unknown"


def export_adapter(
    unet: torch.nn.Module,
    path: str | os.PathLike[str],
    scheme: str = "kohya",
    trigger: str = "",
    steps: int | None = None,
    base_model: str | None = None,
    caption: str | list[str] = "",
    epochs: int | None = None,
    name: str | None = None,
) -> Path:
    """Write the active adapter of ``unet`` (a ``get_peft_model`` result or a U-Net with LoRA layers
    however attached) as ``scheme``; returns the file (or, for peft, the folder).

    The kohya file's header is what the clients read: ``ss_base_model_version`` from the U-Net's
    shapes (``base_model`` overrides it), ``ss_tag_frequency`` with the trigger word and the training
    caption(s), ``ss_steps`` / ``ss_epoch`` as numbers when given, ``ss_output_name`` (``name``,
    default the file's stem)."""
    if scheme not in SCHEMES:
        raise LabError(f"scheme={scheme!r}: use one of {', '.join(SCHEMES)}")
    path = Path(path)
    if scheme == "peft":
        return save_adapter(unet, path)
    adapter = active_adapter(unet, "this U-Net")
    state, config = adapter_state(unet, adapter), adapter.config
    if scheme == "diffusers":
        from diffusers import StableDiffusionPipeline

        path.mkdir(parents=True, exist_ok=True)
        adapter_metadata = {
            "r": config.r,
            "lora_alpha": config.lora_alpha,
            "target_modules": sorted(_modules(state)),
            "use_rslora": bool(config.use_rslora),
            "rank_pattern": dict(config.rank_pattern or {}),
            "alpha_pattern": dict(config.alpha_pattern or {}),
        }
        StableDiffusionPipeline.save_lora_weights(
            path, unet_lora_layers=state, unet_lora_adapter_metadata=adapter_metadata, safe_serialization=True
        )
        return path / DIFFUSERS_FILE
    tensors: dict[str, torch.Tensor] = {}
    for module in sorted(_modules(state)):
        rank, alpha = module_rank_alpha(config, module)
        if config.use_rslora:  # PEFT scales by alpha/√r; kohya readers by alpha/r
            alpha = alpha * math.sqrt(rank)
        down, up, alpha_key = kohya_keys(module)
        tensors[down] = state[f"{module}.lora_A.weight"]
        tensors[up] = state[f"{module}.lora_B.weight"]
        tensors[alpha_key] = torch.tensor(float(alpha))
    version = base_model or base_model_version(unet)
    captions = [caption] if isinstance(caption, str) else list(caption)
    tags: dict[str, int] = {}
    for text in [c for c in captions if c]:  # kohya counts each tag once per caption in the dataset
        for tag in dict.fromkeys([trigger, *(t.strip() for t in text.split(","))]):
            if tag:
                tags[tag] = tags.get(tag, 0) + 1
    if trigger and trigger not in tags:
        tags[trigger] = max(1, len([c for c in captions if c]))
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.r),
        "ss_network_alpha": str(float(config.lora_alpha) * (math.sqrt(config.r) if config.use_rslora else 1)),
        "ss_base_model_version": version,
        "ss_v2": str(version.startswith("sd_v2")),
        "ss_output_name": name or path.stem,
        "ss_tag_frequency": json.dumps({"sd_lora_lab": tags}),
        "sd_lora_lab_targets": json.dumps(sorted({module_kind(m) for m in _modules(state)})),
        "sd_lora_lab_trigger": trigger,
    }
    for key, value in (("ss_steps", steps), ("ss_epoch", epochs)):
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise LabError(
                    f"{key.removeprefix('ss_')}={value!r}: a whole number of training steps/epochs"
                )
            metadata[key] = str(value)
    if path.suffix != ".safetensors":
        raise LabError(f"'{path}': a kohya adapter is one .safetensors file")
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


def _modules(state: dict[str, torch.Tensor]) -> set[str]:
    return {peft_module(key) for key in state}
