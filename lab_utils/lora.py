"""LoRA on the U-Net with PEFT: target presets, parameter counts, attach, save and load."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists

from lab_utils.errors import LabError
from lab_utils.targets import TARGET_PRESETS

Targets = str | Sequence[str]


def resolve_targets(targets: Targets) -> str | list[str]:
    """A preset name → its PEFT ``target_modules``; a list of module names passes through."""
    if isinstance(targets, str):
        if targets not in TARGET_PRESETS:
            raise LabError(
                f"targets='{targets}' is not a preset: use one of {sorted(TARGET_PRESETS)} "
                "or a list of module names such as ['to_q', 'to_v']"
            )
        return TARGET_PRESETS[targets]
    names = list(targets)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise LabError("targets must be a preset name or a non-empty list of module names")
    return names


def lora_config(rank: int = 4, alpha: int = 4, targets: Targets = "attn", **kwargs) -> LoraConfig:
    """The ``LoraConfig`` for ``rank``/``alpha`` on ``targets`` (LoRA output scale = alpha / rank)."""
    if not isinstance(rank, int) or rank < 1:
        raise LabError(f"rank={rank!r}: the LoRA rank must be a positive integer")
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=resolve_targets(targets), **kwargs)


def target_module_names(model: torch.nn.Module, targets: Targets) -> list[str]:
    """Names of the modules PEFT would wrap for ``targets`` (same matching rule as PEFT)."""
    config = LoraConfig(target_modules=resolve_targets(targets))
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and check_target_module_exists(config, name)
    ]


def lora_parameter_count(model: torch.nn.Module, rank: int = 4, targets: Targets = "attn") -> int:
    """Trainable parameters LoRA of ``rank`` on ``targets`` adds, computed without attaching.

    Linear (out × in): A is rank × in, B is out × rank. Conv2d (k × k): A is a k × k conv from
    in to rank channels, B a 1 × 1 conv from rank to out. Works on the ``meta`` device.
    """
    modules = dict(model.named_modules())
    total = 0
    for name in target_module_names(model, targets):
        module = modules[name]
        if isinstance(module, torch.nn.Linear):
            total += rank * (module.in_features + module.out_features)
        else:
            kh, kw = module.kernel_size
            total += rank * module.in_channels * kh * kw + module.out_channels * rank
    return total


def has_lora(model: torch.nn.Module) -> bool:
    """Whether any module of ``model`` is already a PEFT adapter layer."""
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def attach_lora(
    unet: torch.nn.Module, rank: int = 4, alpha: int = 4, targets: Targets = "attn", **kwargs
) -> PeftModel:
    """Wrap ``unet`` with fresh LoRA adapters (B = 0, so the output is unchanged until trained).

    The adapter layers are injected into ``unet`` in place, so a pipeline holding it generates with
    them; only the LoRA parameters are trainable. Returns the PEFT-wrapped U-Net.
    """
    if isinstance(unet, PeftModel) or has_lora(unet):
        raise LabError(
            "this U-Net already has LoRA layers: reload the pipeline (step 1) before attaching "
            "again, so adapters do not stack"
        )
    return get_peft_model(unet, lora_config(rank, alpha, targets, **kwargs))


def lora_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The adapter's tensors (``lora_A``/``lora_B``), by name."""
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def adapter_grad_norms(model: torch.nn.Module) -> dict[str, float]:
    """The L2 norm of each adapter tensor's ``.grad`` (0.0 where there is none). Syncs the device."""
    return {
        n: (p.grad.detach().float().norm().item() if p.grad is not None else 0.0)
        for n, p in lora_parameters(model).items()
    }


def save_adapter(unet: PeftModel, directory: str | os.PathLike[str]) -> Path:
    """``save_pretrained``: adapter_config.json + adapter_model.safetensors, written atomically."""
    if not isinstance(unet, PeftModel):
        raise LabError("save_adapter needs the PEFT-wrapped U-Net returned by get_peft_model/attach_lora")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=directory))
    try:
        unet.save_pretrained(str(tmp))
        for item in tmp.iterdir():
            os.replace(item, directory / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_adapter(pipe, directory: str | os.PathLike[str], is_trainable: bool = False) -> PeftModel:
    """Load a PEFT adapter folder onto ``pipe.unet`` in place; returns the PEFT-wrapped U-Net."""
    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        raise LabError(f"adapter folder '{directory}' has no adapter_config.json (save it with save_adapter)")
    if has_lora(pipe.unet):
        raise LabError("this pipeline's U-Net already has LoRA layers: reload the pipeline first")
    peft_unet = PeftModel.from_pretrained(pipe.unet, directory, is_trainable=is_trainable)
    # PEFT keeps adapter weights in fp32 under a half-precision base; match the device only.
    return peft_unet.to(pipe.device)


def remove_lora(unet: torch.nn.Module) -> torch.nn.Module:
    """Remove every LoRA layer from ``unet`` in place and return the plain U-Net.

    Takes the pipeline's U-Net (``pipe.unet``) or a PEFT-wrapped one. Calling it before attaching
    makes a notebook cell safe to re-run: adapters are replaced, never stacked.
    """
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    if isinstance(unet, PeftModel):
        unet = unet.unload()
    if has_lora(unet):
        recurse_remove_peft_layers(unet)
    if hasattr(unet, "peft_config"):  # PEFT's marker that the model was wrapped before
        del unet.peft_config
    return unet
