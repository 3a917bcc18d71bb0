"""Helpers for the SD LoRA Lab notebook: load Stable Diffusion, attach LoRA, train, generate, compare.

The learner's helpers are this flat set, each imported on first use (``lab_utils.generate``), so
``lab_utils.errors`` and the grader's light commands never pay for torch:

=================  ==========================================================================
load and inspect   load_pipeline, resolve_model, ModelSpec, model_from_env, MODEL_ENV,
                   default_device, default_dtype, check_environment, describe
LoRA               TARGET_PRESETS, lora_config, attach_lora, remove_lora, has_lora,
                   lora_parameter_count, lora_parameters, target_module_names,
                   adapter_grad_norms, GradNorms, active_adapter, save_adapter, load_adapter
train              TRAIN_PROMPT, training_example, style_examples, encode_image, encode_prompt,
                   training_scheduler, train_lora, TrainResult, train_lora_accelerated
                   (accelerate: mixed precision, accumulation, data parallel), AcceleratedResult
generate, compare  generate, GenerationRecord, generation_record, native_size, mean_abs_diff,
                   show_side_by_side, image_strip, difference_heatmap, plot_loss
share, validate    export_adapter, load_lora, diagnose_adapter (lab_utils.adapters), evaluate,
                   Evaluation, held_out_prompts, style_score, STYLE_THRESHOLD
=================  ==========================================================================

The miniature model's world, tokenizer builder and training live in :mod:`lab_utils.tiny`.
"""

from __future__ import annotations

import importlib
from typing import Any

from lab_utils import recording
from lab_utils.quiet import silence_known_warnings

silence_known_warnings()  # logging only: before any module of the package imports diffusers
recording.install()  # how each pipeline call's images were made (imports nothing until diffusers is)

_EXPORTS = {
    "lab_utils.accelerated": ("AcceleratedResult", "train_lora_accelerated"),
    "lab_utils.adapters": ("diagnose_adapter", "export_adapter", "load_lora"),
    "lab_utils.components": ("describe",),
    "lab_utils.data": ("TRAIN_PROMPT", "style_examples", "training_example"),
    "lab_utils.display": ("difference_heatmap", "image_strip", "plot_loss", "show_side_by_side"),
    "lab_utils.environment": ("check_environment",),
    "lab_utils.errors": ("LabError",),
    "lab_utils.evaluation": ("Evaluation", "evaluate", "held_out_prompts"),
    "lab_utils.generation": ("GenerationRecord", "generate", "generation_record", "native_size"),
    "lab_utils.lora": (
        "GradNorms",
        "active_adapter",
        "adapter_grad_norms",
        "attach_lora",
        "has_lora",
        "load_adapter",
        "lora_config",
        "lora_parameter_count",
        "lora_parameters",
        "remove_lora",
        "save_adapter",
        "target_module_names",
    ),
    "lab_utils.metrics": ("mean_abs_diff",),
    "lab_utils.models": (
        "MODEL_ENV",
        "ModelSpec",
        "default_device",
        "default_dtype",
        "load_pipeline",
        "model_from_env",
        "resolve_model",
    ),
    "lab_utils.targets": ("TARGET_PRESETS",),
    "lab_utils.tiny.world": ("STYLE_THRESHOLD", "style_score"),
    "lab_utils.train": ("TrainResult", "encode_image", "encode_prompt", "train_lora", "training_scheduler"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'lab_utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
