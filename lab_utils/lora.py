"""LoRA on the U-Net with PEFT: target presets, parameter counts, attach, save and load."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from lab_utils.errors import LabError
from lab_utils.files import current_umask
from lab_utils.targets import TARGET_PRESETS

Targets = str | Sequence[str]


def resolve_targets(targets: Targets) -> str | list[str]:
    """A preset name → its PEFT ``target_modules``; a preset's own pattern (what
    ``course_config().lora.target_modules`` gives) or a list of module names passes through."""
    if isinstance(targets, str):
        if targets in TARGET_PRESETS.values():
            return targets
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


class GradNorms(dict):
    """{adapter tensor name: L2 norm of its gradient}; ``cleared`` when every trainable tensor's
    gradient was cleared (``optimizer.zero_grad()`` after the step) rather than computed as zero."""

    cleared: bool = False

    def summary(self) -> str:
        """The one line the notebook prints."""
        if self.cleared:
            return (
                "gradients were cleared by zero_grad after the step: read them before, or zero_grad "
                "before backward"
            )
        return f"adapter tensors with nonzero gradient: {sum(v > 0 for v in self.values())}/{len(self)}"


def adapter_grad_norms(model: torch.nn.Module) -> GradNorms:
    """The L2 norm of each adapter tensor's ``.grad`` (0.0 where there is none). Syncs the device.

    When no trainable adapter tensor has a gradient although the adapter was trained (its weights
    moved) — PyTorch's ``optimizer.zero_grad()`` (``set_to_none=True``) ran after the step — the
    result is marked ``cleared``: those gradients were cleared, not zero (``summary()`` says so)."""
    parameters = lora_parameters(model)
    norms = GradNorms(
        (n, p.grad.detach().float().norm().item() if p.grad is not None else 0.0)
        for n, p in parameters.items()
    )
    trainable = [p for p in parameters.values() if p.requires_grad]
    lora_b = [p for n, p in parameters.items() if "lora_B" in n]
    norms.cleared = (
        bool(trainable) and all(p.grad is None for p in trainable) and any(p.detach().any() for p in lora_b)
    )
    return norms


@dataclass(frozen=True)
class ActiveAdapter:
    """The LoRA adapter a U-Net generates with, however it was attached."""

    name: str
    config: LoraConfig
    names: tuple[str, ...]  # every adapter on the U-Net


def active_adapter(model: torch.nn.Module, where: str = "the U-Net") -> ActiveAdapter:
    """The one active LoRA adapter of ``model`` — a ``get_peft_model`` result, or a U-Net given
    adapters by diffusers' ``add_adapter``/``load_lora_weights`` or PEFT's ``inject_adapter_in_model``.

    Raises:
        LabError: no LoRA layers, several adapters active at once, or an adapter that is not LoRA.
    """
    configs = getattr(model, "peft_config", None)
    active = {tuple(m.active_adapters) for m in model.modules() if isinstance(m, BaseTunerLayer)}
    if not isinstance(configs, dict) or not active:
        raise LabError(
            f"{where} has no LoRA layers: attach them with get_peft_model(pipe.unet, LoraConfig(...)) "
            "or pipe.unet.add_adapter(LoraConfig(...))"
        )
    names = sorted({name for names in active for name in names})
    if len(names) != 1:
        raise LabError(
            f"several adapters are active at once on {where} ({', '.join(names)}): the grader grades one — "
            f"choose it with set_adapter('{names[-1]}') (diffusers: pipe.set_adapters('{names[-1]}'))"
        )
    config = configs.get(names[0])
    if not isinstance(config, LoraConfig):
        raise LabError(f"the active adapter '{names[0]}' on {where} is {type(config).__name__}, not LoRA")
    return ActiveAdapter(names[0], config, tuple(configs))


def adapter_state(model: torch.nn.Module, adapter: ActiveAdapter | None = None) -> dict[str, torch.Tensor]:
    """{module path + ".lora_A.weight" | ".lora_B.weight": tensor} of the active adapter, module
    paths as in the plain U-Net (no ``base_model.model.`` prefix)."""
    adapter = adapter or active_adapter(model)
    state = get_peft_model_state_dict(model, adapter_name=adapter.name)
    return {k.removeprefix("base_model.model."): v.detach().cpu().contiguous() for k, v in state.items()}


def save_adapter(unet: torch.nn.Module, directory: str | os.PathLike[str]) -> Path:
    """The active adapter as PEFT shares it — adapter_config.json + adapter_model.safetensors, what
    ``save_pretrained`` writes and ``PeftModel.from_pretrained``/``load_adapter`` read — written
    atomically. ``unet``: a ``get_peft_model`` result or a U-Net with LoRA layers however attached."""
    adapter = active_adapter(unet, "this U-Net")
    state = {f"base_model.model.{k}": v for k, v in adapter_state(unet, adapter).items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=directory))
    try:
        config = copy.deepcopy(adapter.config)
        config.inference_mode = True  # as save_pretrained writes it
        config.save_pretrained(str(tmp))
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        for item in tmp.iterdir():
            os.chmod(item, 0o666 & ~current_umask())
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
