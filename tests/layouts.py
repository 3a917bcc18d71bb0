"""Model folders as pods have them, built from the built-in model's weights: the fp16 variant only,
``.bin`` only, mixes, the classic SD 1.5 layout (CLIPFeatureExtractor, a safety checker, PNDM), and a
single-file checkpoint with the original (LDM) keys, with and without a config folder.

The LDM keys are written by :func:`ldm_state_dict`, the inverse of diffusers' own single-file
conversion (``diffusers.loaders.single_file_utils``): tests load every such file through diffusers'
converter and compare each tensor with the original, so a wrong name here cannot pass unnoticed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lab_utils.tiny import tiny_model_dir

WEIGHTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}


def _configs(target: Path) -> None:
    """Everything of the built-in folder but the weights."""
    shutil.copytree(tiny_model_dir(), target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))


def _state(component: str) -> dict[str, torch.Tensor]:
    return load_file(tiny_model_dir() / component / f"{WEIGHTS[component]}.safetensors")


def _write(target: Path, component: str, form: str) -> None:
    """form: safetensors | fp16 (the variant: .fp16.safetensors in half precision) | bin (a pickle)."""
    state = _state(component)
    stem = target / component / WEIGHTS[component]
    if form == "safetensors":
        save_file(state, f"{stem}.safetensors")
    elif form == "fp16":
        save_file({k: v.half() for k, v in state.items()}, f"{stem}.fp16.safetensors")
    else:
        name = "pytorch_model" if component == "text_encoder" else WEIGHTS[component]
        torch.save(state, target / component / f"{name}.bin")


def folder(target: Path, forms: dict[str, tuple[str, ...]]) -> Path:
    """A diffusers folder whose components carry the weight files named in ``forms``."""
    _configs(target)
    for component in WEIGHTS:
        for form in forms.get(component, ()):
            _write(target, component, form)
    return target


def fp16_only(target: Path) -> Path:
    return folder(target, {c: ("fp16",) for c in WEIGHTS})


def bin_only(target: Path) -> Path:
    return folder(target, {c: ("bin",) for c in WEIGHTS})


def mixed(target: Path) -> Path:
    """The U-Net in both forms, the text encoder in fp16 only, the VAE plain only."""
    return folder(
        target, {"unet": ("safetensors", "fp16"), "text_encoder": ("fp16",), "vae": ("safetensors",)}
    )


def classic(target: Path, feature_extractor: str = "CLIPFeatureExtractor", its_folder: bool = True) -> Path:
    """SD 1.5's own model_index.json: a feature extractor (either class name), a safety checker
    listed but its folder absent, the PNDM scheduler — as `git clone` of the hub repo leaves it
    (``its_folder=False``: the feature extractor's folder absent too)."""
    folder(target, {c: ("safetensors",) for c in WEIGHTS})
    index = json.loads((target / "model_index.json").read_text())
    index.update(
        feature_extractor=["transformers", feature_extractor],
        safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
        requires_safety_checker=True,
        scheduler=["diffusers", "PNDMScheduler"],
    )
    (target / "model_index.json").write_text(json.dumps(index, indent=2))
    (target / "feature_extractor").mkdir()
    (target / "feature_extractor" / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": 224,
                "do_center_crop": True,
                "do_normalize": True,
                "do_resize": True,
                "feature_extractor_type": feature_extractor,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "resample": 3,
                "size": 224,
            }
        )
    )
    if not its_folder:  # listed in model_index.json, never downloaded
        shutil.rmtree(target / "feature_extractor")
    scheduler = json.loads((target / "scheduler" / "scheduler_config.json").read_text())
    scheduler.update(_class_name="PNDMScheduler", skip_prk_steps=True)
    for key in (
        "clip_sample",
        "clip_sample_range",
        "dynamic_thresholding_ratio",
        "rescale_betas_zero_snr",
        "sample_max_value",
        "thresholding",
        "timestep_spacing",
    ):
        scheduler.pop(key, None)
    (target / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return target


def single_file(target: Path, with_configs: bool, name: str = "v1-5-pruned-emaonly.safetensors") -> Path:
    """The checkpoint as one file of LDM keys; ``with_configs``: beside the model's configs and
    tokenizer (the hub repo without its weight folders), else alone in its folder."""
    if with_configs:
        _configs(target)
    else:
        target.mkdir(parents=True)
    save_file(ldm_state_dict(), target / name)
    return target / name


# --- diffusers → LDM keys (the inverse of diffusers' single-file conversion) -------------------------

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _replace_prefix(key: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if key.startswith(old + ".") or key == old:
            return new + key[len(old) :]
    return key


def _unet_key(key: str, layers: int, attention_up: set[int], blocks: int) -> str:
    """One diffusers UNet2DConditionModel key → its LDM name (SD 1.x layout)."""
    parts = key.split(".")
    simple = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for old, new in simple.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    if parts[0] == "down_blocks":
        b, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":
            return f"input_blocks.{1 + b * (layers + 1) + layers}.0.op." + ".".join(parts[5:])
        index = 1 + b * (layers + 1) + int(parts[3])
        rest = ".".join(parts[4:])
        return f"input_blocks.{index}.{0 if kind == 'resnets' else 1}." + (
            _replace_prefix(rest, RESNET) if kind == "resnets" else rest
        )
    if parts[0] == "mid_block":
        kind, i = parts[1], int(parts[2])
        rest = ".".join(parts[3:])
        if kind == "attentions":
            return "middle_block.1." + rest
        return f"middle_block.{0 if i == 0 else 2}." + _replace_prefix(rest, RESNET)
    if parts[0] == "up_blocks":
        b, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":
            slot = 2 if b in attention_up else 1
            return f"output_blocks.{b * (layers + 1) + layers}.{slot}." + ".".join(parts[4:])
        index = b * (layers + 1) + int(parts[3])
        rest = ".".join(parts[4:])
        return f"output_blocks.{index}.{0 if kind == 'resnets' else 1}." + (
            _replace_prefix(rest, RESNET) if kind == "resnets" else rest
        )
    raise KeyError(key)


def _vae_key(key: str, blocks: int) -> str:
    parts = key.split(".")
    side = parts[0]
    if parts[1] in ("down_blocks", "up_blocks"):
        b = int(parts[2])
        ldm_b = b if side == "encoder" else blocks - 1 - b
        group = "down" if side == "encoder" else "up"
        if parts[3] == "resnets":
            rest = _replace_prefix(".".join(parts[5:]), {"conv_shortcut": "nin_shortcut"})
            return f"{side}.{group}.{ldm_b}.block.{parts[4]}.{rest}"
        sampler = "downsample" if side == "encoder" else "upsample"
        return f"{side}.{group}.{ldm_b}.{sampler}." + ".".join(parts[5:])
    if parts[1] == "mid_block":
        if parts[2] == "attentions":
            return f"{side}.mid.attn_1." + _replace_prefix(".".join(parts[4:]), VAE_ATTENTION)
        rest = _replace_prefix(".".join(parts[4:]), {"conv_shortcut": "nin_shortcut"})
        return f"{side}.mid.block_{int(parts[3]) + 1}.{rest}"
    return _replace_prefix(key, {f"{side}.conv_norm_out": f"{side}.norm_out"})


def ldm_state_dict() -> dict[str, torch.Tensor]:
    """The built-in model's weights under the original Stable Diffusion checkpoint's keys."""
    unet_config = json.loads((tiny_model_dir() / "unet" / "config.json").read_text())
    layers = unet_config["layers_per_block"]
    attention_up = {i for i, t in enumerate(unet_config["up_block_types"]) if t.startswith("CrossAttn")}
    blocks = len(json.loads((tiny_model_dir() / "vae" / "config.json").read_text())["block_out_channels"])
    state: dict[str, torch.Tensor] = {}
    for key, value in _state("unet").items():
        state["model.diffusion_model." + _unet_key(key, layers, attention_up, blocks)] = value
    for key, value in _state("vae").items():
        ldm = _vae_key(key, blocks)
        if ".mid.attn_1." in ldm and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention is 1×1 convolutions
        state["first_stage_model." + ldm] = value
    for key, value in _state("text_encoder").items():  # transformers 5 saves CLIP without text_model.
        state[
            "cond_stage_model.transformer." + ("" if key.startswith("text_model.") else "text_model.") + key
        ] = value
    return {k: v.contiguous() for k, v in state.items()}
