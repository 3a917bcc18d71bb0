"""Helpers for the SD LoRA Lab notebook: load Stable Diffusion, attach LoRA, train, generate, compare."""

from lab_utils.quiet import silence_known_warnings

silence_known_warnings()  # before diffusers is imported below

# ruff: noqa: E402

from lab_utils.components import describe
from lab_utils.data import TRAIN_PROMPT, style_examples, training_example
from lab_utils.display import difference_heatmap, image_strip, plot_loss, show_side_by_side
from lab_utils.environment import check_environment
from lab_utils.errors import LabError
from lab_utils.evaluate import Evaluation, evaluate, held_out_prompts
from lab_utils.generate import GenerationRecord, generate, generation_record, native_size
from lab_utils.lora import (
    TARGET_PRESETS,
    adapter_grad_norms,
    attach_lora,
    has_lora,
    load_adapter,
    lora_config,
    lora_parameter_count,
    lora_parameters,
    remove_lora,
    save_adapter,
    target_module_names,
)
from lab_utils.metrics import mean_abs_diff
from lab_utils.models import (
    MODEL_ENV,
    ModelSpec,
    default_device,
    default_dtype,
    load_pipeline,
    model_from_env,
    resolve_model,
)
from lab_utils.train import TrainResult, encode_image, encode_prompt, train_lora, training_scheduler

__all__ = [
    "MODEL_ENV",
    "ModelSpec",
    "TARGET_PRESETS",
    "TRAIN_PROMPT",
    "Evaluation",
    "GenerationRecord",
    "LabError",
    "TrainResult",
    "adapter_grad_norms",
    "attach_lora",
    "check_environment",
    "default_device",
    "default_dtype",
    "describe",
    "difference_heatmap",
    "encode_image",
    "encode_prompt",
    "evaluate",
    "generate",
    "generation_record",
    "has_lora",
    "image_strip",
    "held_out_prompts",
    "load_adapter",
    "load_pipeline",
    "lora_config",
    "lora_parameter_count",
    "lora_parameters",
    "mean_abs_diff",
    "model_from_env",
    "native_size",
    "plot_loss",
    "remove_lora",
    "resolve_model",
    "save_adapter",
    "show_side_by_side",
    "style_examples",
    "target_module_names",
    "train_lora",
    "training_example",
    "training_scheduler",
]
