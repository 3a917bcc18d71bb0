"""Step 2: the saved adapter, loaded onto the grader's own U-Net, has exactly the required shape —
rank, alpha, target modules (and rsLoRA when the course sets it), so the parameter count matches
``lab_utils.lora_parameter_count`` for the required config."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from grader.types import Check, CheckResult

if TYPE_CHECKING:
    from grader.checks.context import Context
    from grader.config import CheckSettings


def _module_kind(name: str) -> str:
    match = re.search(r"(attn[12])\.(to_q|to_k|to_v|to_out)", name)
    if match:
        return f"{match.group(1)}.{match.group(2)}"
    return name.rsplit(".", 1)[-1] if "." in name else name


def describe_target_difference(actual: set[str], required: set[str]) -> str:
    """'missing attn1.to_k, …; extra …' in module-kind terms, not 100 module names."""
    missing = sorted({_module_kind(n) for n in required - actual})
    extra = sorted({_module_kind(n) for n in actual - required})
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if extra:
        parts.append("extra " + ", ".join(extra))
    return "; ".join(parts)


def run(context: Context, settings: CheckSettings) -> CheckResult:
    import lab_utils

    lora = context.config.lora
    required, expected = context.required_modules, context.expected_count
    result = CHECK.result(measured="0", expected=f"{expected:,}", value=0.0)
    peft_unet = context.peft_unet
    if peft_unet is None:
        result.measured = "no adapter" if context.load_error is None else "adapter did not load"
        if context.load_error:
            return result.fail("unloadable", f"the saved adapter cannot be used: {context.load_error}")
        return result.fail(
            "no_adapter",
            f"no LoRA adapter was found ({context.missing_why}): wrap the U-Net with "
            "get_peft_model(pipe.unet, LoraConfig(...)) and keep the result as `unet`",
        )
    parameters = lab_utils.lora_parameters(peft_unet)
    count = sum(p.numel() for p in parameters.values())
    result.measured, result.value = f"{count:,}", float(count)
    wrapped = {n.split(".lora_", 1)[0].removeprefix("base_model.model.") for n in parameters}
    trained: Any = peft_unet.peft_config["default"]  # a LoraConfig
    reasons: list[tuple[str, str]] = []
    if trained.r != lora.rank:
        reasons.append(("wrong_rank", f"rank {trained.r} instead of {lora.rank} (LoraConfig(r={lora.rank}))"))
    if wrapped != required:
        reasons.append(
            (
                "wrong_targets",
                f"wrong target modules ({describe_target_difference(wrapped, required)}): "
                "target to_q, to_k, to_v and to_out.0 of every attention layer",
            )
        )
    use_rslora = bool(trained.use_rslora)
    if float(trained.lora_alpha) != lora.alpha:
        scale = _scale(trained.lora_alpha, trained.r, use_rslora) / _scale(lora.alpha, lora.rank, use_rslora)
        scaled = f": the update is scaled ×{scale:.3g}" if abs(scale - 1) > 1e-9 else ""
        reasons.append(
            (
                "wrong_alpha",
                f"alpha {trained.lora_alpha:g} instead of {lora.alpha:g}{scaled} "
                f"(LoraConfig(lora_alpha={lora.alpha:g}))",
            )
        )
    if trained.rank_pattern or trained.alpha_pattern:
        reasons.append(("wrong_shape", "per-module rank or alpha patterns differ from the required config"))
    if lora.use_rslora is not None and use_rslora != lora.use_rslora:
        reasons.append(
            (
                "wrong_rslora",
                f"use_rslora={use_rslora} instead of {lora.use_rslora}: the update is scaled by alpha/"
                f"{'√rank' if use_rslora else 'rank'} (LoraConfig(use_rslora={lora.use_rslora}))",
            )
        )
    if not reasons and count == expected:
        result.passed = True
        return result
    if not reasons:
        reasons.append(("wrong_shape", "the adapter's shape differs from the required LoRA config"))
    return result.fail(reasons[0][0], "; ".join(text for _, text in reasons))


def _scale(alpha: float, rank: int, rslora: bool) -> float:
    return float(alpha) / (rank**0.5 if rslora else rank)


CHECK = Check(
    name="parameter_count",
    title="trainable LoRA parameters",
    step=2,
    run=run,
    causes={
        "no_adapter": "no LoRA adapter was found (no PEFT-wrapped U-Net kept as `unet`)",
        "unloadable": "the saved adapter cannot be loaded",
        "wrong_rank": "wrong LoRA rank",
        "wrong_targets": "wrong target modules",
        "wrong_alpha": "wrong lora_alpha (the update is scaled)",
        "wrong_rslora": "use_rslora differs from the course's",
        "wrong_shape": "the adapter's shape differs from the required LoRA config",
    },
)
