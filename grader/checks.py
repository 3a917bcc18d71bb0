"""The checks, recomputed by the grader from the artefacts on a freshly loaded base model.

Nothing the learner's kernel printed or computed is trusted: the parameter count comes from the
saved adapter loaded onto the grader's own U-Net, the gradients from the grader's own
forward/backward, and the pixel difference from the grader's own regeneration of both images.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import diffusers
import torch
import torch.nn.functional as F
import transformers
from peft import PeftModel

import lab_utils
from grader.artefacts import Artefacts
from grader.config import GradingConfig
from grader.run import StepFailure
from lab_utils.generate import GenerationRecord


@dataclass
class CheckResult:
    name: str
    title: str
    passed: bool
    measured: str
    expected: str
    points: float
    max_points: float
    value: float | None = None
    cause: str | None = None  # for a failure: the most likely cause and the fix
    step: int | None = None  # the notebook step that earns it
    visibility: str = "visible"  # "hidden": feedback shows pass/fail only
    details: dict = field(default_factory=dict)  # numbers behind the verdict (noise floor, ...)


TITLES = {
    "parameter_count": "trainable LoRA parameters",
    "adapter_gradients": "adapter gradients nonzero",
    "pixel_difference": "mean_abs_diff (0–255)",
    "export_reloads": "exported adapter reproduces the image",
    "held_out_evaluation": "held-out evaluation of this adapter",
}


def _module_kind(name: str) -> str:
    match = re.search(r"(attn[12])\.(to_q|to_k|to_v|to_out)", name)
    if match:
        return f"{match.group(1)}.{match.group(2)}"
    return name.rsplit(".", 1)[-1] if "." in name else name


def _describe_target_difference(actual: set[str], required: set[str]) -> str:
    """'targets attn2 only (missing attn1.to_q, …)' in module-kind terms, not 100 module names."""
    missing = sorted({_module_kind(n) for n in required - actual})
    extra = sorted({_module_kind(n) for n in actual - required})
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if extra:
        parts.append("extra " + ", ".join(extra))
    return "; ".join(parts)


def verify(
    artefacts: Artefacts,
    model: str,
    config: GradingConfig,
    failure: StepFailure | None = None,
    only: Callable[[str], bool] = lambda name: True,
) -> Iterator[CheckResult]:
    """Yield each check's result as soon as it is computed (callers write results incrementally).

    A check belongs to a step (``config.checks[name].step``); when the notebook failed at step N,
    checks of steps before N are computed from the last snapshot and keep their credit, and checks
    of step N and later fail with "step N failed: <reason>".
    """
    diffusers.utils.logging.disable_progress_bar()  # the grader prints one table, not loading bars
    transformers.utils.logging.disable_progress_bar()
    pipe = lab_utils.load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    base_unet = pipe.unet
    required_names = set(lab_utils.target_module_names(base_unet, config.targets))
    expected_count = lab_utils.lora_parameter_count(base_unet, config.rank, config.targets)

    peft_unet: PeftModel | None = None
    load_error: str | None = next(
        (e.removeprefix("adapter: ") for e in artefacts.errors if e.startswith("adapter: ")), None
    )
    if artefacts.adapter_dir is not None:
        try:
            peft_unet = PeftModel.from_pretrained(base_unet, artefacts.adapter_dir, is_trainable=True)
            peft_unet = peft_unet.to(pipe.device)
        except Exception as error:  # noqa: BLE001 — any failure to load is the learner's adapter's fault
            load_error = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    stopped = None
    if failure is not None:
        stopped = (
            f"the notebook stopped at step {failure.step}" if failure.step else "the notebook stopped early"
        )
    missing_why = stopped or "the notebook finished without a PEFT-wrapped U-Net"

    runs = {
        "parameter_count": lambda: _check_count(
            peft_unet, load_error, expected_count, required_names, config, missing_why
        ),
        "adapter_gradients": lambda: _check_gradients(pipe, peft_unet, config, missing_why),
        "pixel_difference": lambda: _check_pixels(pipe, peft_unet, artefacts, config, stopped),
        "export_reloads": lambda: _check_exports(pipe, peft_unet, artefacts, config, model, missing_why),
        "held_out_evaluation": lambda: _check_held_out(pipe, peft_unet, artefacts, config, missing_why),
    }
    for name, spec in config.checks.items():
        if not only(name):
            continue
        if failure is not None and (failure.step is None or spec.step >= failure.step):
            result = CheckResult(name, TITLES[name], False, "n/a", "", 0.0, spec.points, cause=str(failure))
        else:
            result = runs[name]()
        result.step, result.visibility, result.max_points = spec.step, spec.visibility, spec.points
        result.points = spec.points if result.passed else 0.0
        yield result


def _check_count(peft_unet, load_error, expected, required_names, config, missing_why) -> CheckResult:
    result = CheckResult(
        "parameter_count", TITLES["parameter_count"], False, "0", f"{expected:,}", 0.0, 0.0, 0.0
    )
    if peft_unet is None:
        result.measured = "no adapter" if load_error is None else "adapter did not load"
        result.cause = (
            f"the saved adapter cannot be used: {load_error}"
            if load_error
            else f"no LoRA adapter was found ({missing_why}): wrap the U-Net with "
            "get_peft_model(pipe.unet, LoraConfig(...)) and keep the result as `unet`"
        )
        return result
    lora = lab_utils.lora_parameters(peft_unet)
    count = sum(p.numel() for p in lora.values())
    result.measured, result.value = f"{count:,}", float(count)
    wrapped = {n.split(".lora_", 1)[0].removeprefix("base_model.model.") for n in lora}
    peft_config = peft_unet.peft_config["default"]
    if count == expected and wrapped == required_names and peft_config.r == config.rank:
        result.passed = True
        return result
    reasons = []
    if peft_config.r != config.rank:
        reasons.append(f"rank {peft_config.r} instead of {config.rank} (LoraConfig(r={config.rank}))")
    if wrapped != required_names:
        reasons.append(
            f"wrong target modules ({_describe_target_difference(wrapped, required_names)}): "
            "target to_q, to_k, to_v and to_out.0 of every attention layer"
        )
    result.cause = "; ".join(reasons) or "the adapter's shape differs from the required LoRA config"
    return result


def _check_gradients(pipe, peft_unet, config, missing_why) -> CheckResult:
    """One forward/backward of the grader's own on the lab's training example through the
    learner's adapter: every lora_A and lora_B tensor must get a finite, nonzero gradient.
    (lora_B starts at zero, so lora_A only gets a gradient once training has moved lora_B.)"""
    result = CheckResult(
        "adapter_gradients", TITLES["adapter_gradients"], False, "none", "all", 0.0, 0.0, 0.0
    )
    if peft_unet is None:
        result.cause = f"no adapter to differentiate ({missing_why})"
        return result
    lora = lab_utils.lora_parameters(peft_unet)
    weights_finite = all(torch.isfinite(p).all() for p in lora.values())
    b_all_zero = all(not p.detach().any() for n, p in lora.items() if "lora_B" in n)
    for p in lora.values():
        p.requires_grad_(True)
        p.grad = None
    image, prompt = lab_utils.training_example(lab_utils.native_size(pipe))
    latents = lab_utils.encode_image(pipe, image)
    embeddings = lab_utils.encode_prompt(pipe, prompt)
    scheduler = lab_utils.training_scheduler(pipe)
    generator = torch.Generator("cpu").manual_seed(0)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    timesteps = torch.tensor([scheduler.config.num_train_timesteps // 2], device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = peft_unet(noisy, timesteps, encoder_hidden_states=embeddings).sample
    F.mse_loss(prediction.float(), noise.float()).backward()
    nonzero = sum(
        1 for p in lora.values() if p.grad is not None and torch.isfinite(p.grad).all() and p.grad.any()
    )
    result.measured, result.expected, result.value = (
        f"{nonzero}/{len(lora)}",
        f"{len(lora)}/{len(lora)}",
        float(nonzero),
    )
    if nonzero == len(lora) and len(lora) > 0 and weights_finite:
        result.passed = True
    elif not weights_finite:
        result.cause = "the adapter weights contain NaN or inf: training diverged (lower the learning rate)"
    elif b_all_zero:
        result.cause = (
            "every lora_B weight is still zero, so the adapter was never updated: the learning rate "
            "is 0, the LoRA parameters are frozen, or the optimizer was not given them "
            "(AdamW([p for p in unet.parameters() if p.requires_grad], ...))"
        )
    else:
        result.cause = "some adapter tensors get no gradient: part of the adapter is frozen or disconnected"
    for p in lora.values():
        p.grad = None
    return result


MAX_STEPS = 200  # a forged record must not make the grader's regeneration run for hours


def _record(artefacts: Artefacts, name: str) -> tuple[GenerationRecord | None, str | None]:
    """The image's generation record, checked for type and range (the kernel could write anything)
    and against the saved image's size; or the reason it cannot be used."""
    data = artefacts.records.get(name)
    if not isinstance(data, dict):
        return None, None
    try:
        record = GenerationRecord(**data)
    except TypeError:
        return None, f"{name}'s generation record has unexpected fields"
    checks = [
        ("prompt", isinstance(record.prompt, str) and len(record.prompt) <= 2000),
        ("seed", _is_int(record.seed) and 0 <= record.seed < 2**63),
        ("steps", _is_int(record.steps) and 1 <= record.steps <= MAX_STEPS),
        ("guidance", _is_number(record.guidance) and 0 <= record.guidance <= 50),
        ("size", _is_int(record.size) and artefacts.images[name].size == (record.size, record.size)),
        ("lora_scale", record.lora_scale is None or _scale_ok(record.lora_scale)),
    ]
    bad = [field for field, ok in checks if not ok]
    if bad:
        value = getattr(record, bad[0])
        return None, (
            f"{name}'s generation record is not one lab_utils.generate wrote ({bad[0]} = {str(value)[:40]!r} "
            "is out of range or does not match the saved image)"
        )
    return record, None


def _scale_ok(value) -> bool:
    return _is_number(value) and abs(value) <= 10


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _regenerate(pipe, peft_unet, record: GenerationRecord, adapted: bool):
    """The image ``record`` describes, with the adapter on (at its recorded scale) or off."""
    if adapted:
        return lab_utils.generate(
            pipe, record.prompt, record.seed, record.steps, record.guidance, record.size, record.lora_scale
        )
    with peft_unet.disable_adapter():
        return lab_utils.generate(
            pipe, record.prompt, record.seed, record.steps, record.guidance, record.size
        )


def _check_pixels(pipe, peft_unet, artefacts: Artefacts, config, stopped) -> CheckResult:
    threshold = config.min_mean_abs_diff
    result = CheckResult(
        "pixel_difference", TITLES["pixel_difference"], False, "n/a", f"> {threshold:g}", 0.0, 0.0
    )
    missing = [n for n in ("baseline_image", "adapted_image") if n not in artefacts.images]
    if missing:
        why = stopped or "the notebook finished without defining them"
        result.cause = (
            f"{' and '.join(missing)} not found ({why}): keep the images as `baseline_image` and "
            "`adapted_image`"
        )
        return result
    (base_record, base_problem), (adapted_record, adapted_problem) = (
        _record(artefacts, "baseline_image"),
        _record(artefacts, "adapted_image"),
    )
    if base_problem or adapted_problem:
        result.cause = f"inconsistent: {base_problem or adapted_problem}"
        return result
    if base_record is None or adapted_record is None:
        result.cause = (
            "an image has no generation record: make both images with "
            "lab_utils.generate(pipe, prompt, seed=...)"
        )
        return result
    differing = [
        f"{field} {getattr(base_record, field)!r} vs {getattr(adapted_record, field)!r}"
        for field in ("prompt", "seed", "steps", "guidance", "size")
        if getattr(base_record, field) != getattr(adapted_record, field)
    ]
    if differing:
        result.cause = (
            f"baseline and adapted images were made differently ({'; '.join(differing)}): use the same "
            "prompt, seed and settings so the difference is caused by the adapter alone"
        )
        return result
    if peft_unet is None:
        result.measured, result.value = "0.00", 0.0
        result.cause = "no adapter was saved, so the adapted image cannot differ from the base model's"
        return result
    regenerated_base = _regenerate(pipe, peft_unet, base_record, adapted=False)
    # the noise floor: the same baseline twice on this device (0 where generation is deterministic)
    noise_floor = lab_utils.mean_abs_diff(
        regenerated_base, _regenerate(pipe, peft_unet, base_record, adapted=False)
    )
    regenerated_adapted = _regenerate(pipe, peft_unet, adapted_record, adapted=True)
    value = lab_utils.mean_abs_diff(regenerated_base, regenerated_adapted)
    threshold = max(threshold, noise_floor)
    tolerance = config.image_tolerance + noise_floor
    result.measured, result.value = f"{value:.2f}", value
    result.expected = f"> {threshold:g}" if noise_floor == 0 else f"> {threshold:.2f} (noise floor)"
    result.details["noise_floor"] = noise_floor
    mismatch = {
        name: lab_utils.mean_abs_diff(artefacts.images[name], regenerated)
        for name, regenerated in (
            ("baseline_image", regenerated_base),
            ("adapted_image", regenerated_adapted),
        )
        if artefacts.images[name].size == regenerated.size
    }
    result.details.update({f"{name}_vs_regenerated": value for name, value in mismatch.items()})
    inconsistent = [
        name
        for name in ("baseline_image", "adapted_image")
        if name not in mismatch or not mismatch[name] <= tolerance
    ]
    if inconsistent:
        detail = ", ".join(
            f"{n} differs from its regeneration by {mismatch[n]:.2f}"
            if n in mismatch
            else f"{n} has the wrong size"
            for n in inconsistent
        )
        result.cause = (
            f"inconsistent: the saved image was not produced by this adapter with its recorded prompt and "
            f"seed ({detail}); generate the adapted image after training, with the same seed, and do "
            "not edit the images"
        )
        return result
    if value > threshold and not math.isnan(value):
        result.passed = True
    elif value == 0.0:
        result.cause = (
            "mean_abs_diff = 0.0: the adapter has no effect on generation — it was never trained "
            "(learning rate 0?) or is not active (was the adapted image generated with lora_scale=0?)"
        )
    elif value <= noise_floor:
        result.cause = (
            f"the adapter's effect ({value:.2f}) is within this device's noise floor ({noise_floor:.2f}): "
            "train more steps or with a higher learning rate"
        )
    else:
        result.cause = (
            f"the adapter moved the pixels by only {value:.2f}: train more steps or with a higher "
            "learning rate"
        )
    return result


# --- step 5 (optional): the adapter shared and validated ---------------------------------------------


def _reference(artefacts: Artefacts) -> tuple[GenerationRecord | None, str | None]:
    """The adapted image's record, to regenerate with an exported file (or why there is none)."""
    if "adapted_image" not in artefacts.images:
        return None, "adapted_image is needed to compare the export with (step 4)"
    record, problem = _record(artefacts, "adapted_image")
    if problem:
        return None, f"inconsistent: {problem}"
    if record is None:
        return None, "adapted_image has no generation record: make it with lab_utils.generate"
    return record, None


def _check_exports(pipe, peft_unet, artefacts: Artefacts, config, model, missing_why) -> CheckResult:
    """Each exported file, loaded strictly onto a fresh base pipeline of the grader's, must redraw
    the adapted image the grader regenerates from the PEFT adapter — the same adapter, alpha kept."""
    from lab_utils.export import diagnose_adapter, load_lora

    result = CheckResult("export_reloads", TITLES["export_reloads"], False, "none", "all reproduce", 0.0, 0.0)
    if peft_unet is None:
        result.cause = f"no adapter to compare the export with ({missing_why})"
        return result
    if not artefacts.exports:
        result.cause = (
            "no exported adapter file was found: keep the path export_adapter returns in a variable, e.g. "
            "kohya_file = export_adapter(unet, 'my-lora-kohya.safetensors', 'kohya')"
        )
        return result
    record, problem = _reference(artefacts)
    if record is None:
        result.cause = problem
        return result
    reference = _regenerate(pipe, peft_unet, record, adapted=True)
    fresh = lab_utils.load_pipeline(model)
    fresh.set_progress_bar_config(disable=True)
    differences: dict[str, float] = {}
    for name, file in artefacts.exports.items():
        try:
            load_lora(fresh, file, adapter_name=name)
        except Exception as error:  # noqa: BLE001 — a file that does not load is the finding
            result.measured = f"{name} did not load"
            result.cause = f"{name} does not load onto the base model: {str(error).splitlines()[0][:300]}"
            return result
        fresh.set_adapters(name)
        image = lab_utils.generate(
            fresh, record.prompt, record.seed, record.steps, record.guidance, record.size, record.lora_scale
        )
        differences[name] = lab_utils.mean_abs_diff(image, reference)
        fresh.delete_adapters(name)
    result.details["mean_abs_diff_to_adapted"] = differences
    worst = max(differences, key=lambda n: differences[n])
    result.value = differences[worst]
    result.measured = ", ".join(f"{n}: {d:.2f}" for n, d in differences.items())
    result.expected = f"each ≤ {config.image_tolerance:g} from the adapted image"
    if differences[worst] <= config.image_tolerance:
        result.passed = True
        return result
    findings = diagnose_adapter(artefacts.exports[worst]).findings
    result.cause = (
        f"{worst} redraws the adapted image {differences[worst]:.2f} away: it is not the adapter as "
        "trained (exported before training, from another adapter, or with a different alpha)"
        + (f" — {'; '.join(findings)}" if findings else "")
    )
    return result


MAX_HELD_OUT_SAMPLES = 32  # prompt × seed pairs the grader regenerates (twice: base and adapted)


@dataclass
class _Claim:
    """One held-out group as the notebook reported it, and what the grader recomputed."""

    name: str
    pairs: list[tuple[str, int]]
    reported: float
    recomputed: float | None = None


def _held_out_claims(evaluation: dict) -> tuple[list[_Claim], GenerationRecord]:
    """The evaluation's held-out groups and settings, checked for type and range.

    Raises:
        ValueError: the reason the evaluation cannot have been written by lab_utils.evaluate.
    """
    steps, guidance, groups = evaluation.get("steps"), evaluation.get("guidance"), evaluation.get("groups")
    if not (_is_int(steps) and _is_number(guidance)):
        raise ValueError("its steps or guidance are not numbers")
    steps, guidance = int(steps), float(guidance)  # type: ignore[arg-type]
    if not (1 <= steps <= MAX_STEPS and 0 <= guidance <= 50):
        raise ValueError("its steps or guidance are out of range")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ValueError("it has no list of groups")
    claims = []
    for group in groups[:10]:
        prompts, seeds, reported = group.get("prompts"), group.get("seeds"), group.get("pixel_change")
        well_formed = (
            isinstance(prompts, list)
            and all(isinstance(p, str) and len(p) <= 2000 for p in prompts)
            and isinstance(seeds, list)
            and all(_is_int(x) and 0 <= x < 2**63 for x in seeds)
            and _is_number(reported)
        )
        if not well_formed:
            raise ValueError(f"group {str(group.get('name'))[:40]!r} is malformed")
        if prompts and seeds and lab_utils.TRAIN_PROMPT not in prompts:
            pairs = [(p, s) for p in prompts for s in seeds]
            claims.append(_Claim(str(group.get("name"))[:80], pairs, float(reported)))
    return claims, GenerationRecord("", 0, steps, guidance, 0)


def _check_held_out(pipe, peft_unet, artefacts: Artefacts, config, missing_why) -> CheckResult:
    """``lab_utils.evaluate`` ran on prompts other than the training prompt, with this adapter: the
    grader regenerates every held-out image (base and adapted) and recomputes each group's pixel
    change, which must match what the notebook reported."""
    result = CheckResult(
        "held_out_evaluation", TITLES["held_out_evaluation"], False, "none", "held-out prompts", 0.0, 0.0
    )
    if peft_unet is None:
        result.cause = f"no adapter to evaluate ({missing_why})"
        return result
    if artefacts.evaluation is None:
        result.cause = (
            "no held-out evaluation was found: keep the result of lab_utils.evaluate(pipe, train_image, "
            "train_prompt, held_out=...) in a variable, e.g. evaluation"
        )
        return result
    try:
        claims, settings = _held_out_claims(artefacts.evaluation)
    except ValueError as error:
        result.cause = f"inconsistent: the evaluation was not written by lab_utils.evaluate ({error})"
        return result
    if not claims:
        result.cause = "only the training prompt was evaluated: pass held-out prompts (held_out=...)"
        return result
    size, budget = lab_utils.native_size(pipe), MAX_HELD_OUT_SAMPLES
    for claim in claims:
        if len(claim.pairs) > budget:
            continue  # too large to regenerate: named in the details, not compared
        budget -= len(claim.pairs)
        changes = []
        for prompt, seed in claim.pairs:
            record = replace(settings, prompt=prompt, seed=seed, size=size)
            base = _regenerate(pipe, peft_unet, record, adapted=False)
            changes.append(lab_utils.mean_abs_diff(base, _regenerate(pipe, peft_unet, record, adapted=True)))
        claim.recomputed = sum(changes) / len(changes)
    result.details["groups"] = {
        c.name: {"samples": len(c.pairs), "reported": c.reported, "recomputed": c.recomputed} for c in claims
    }
    checked = [c for c in claims if c.recomputed is not None]
    if not checked:
        result.cause = (
            f"every held-out group has more images than the grader regenerates ({MAX_HELD_OUT_SAMPLES})"
        )
        return result
    result.value = float(sum(len(c.pairs) for c in checked))
    result.measured = "; ".join(
        f"{c.name}: {len(c.pairs)} images, pixel change {c.recomputed:.2f}" for c in checked
    )
    result.expected = "held-out images of this adapter, numbers as reported"
    wrong = [
        f"{c.name} reported {c.reported:.2f}, recomputed {c.recomputed:.2f}"
        for c in checked
        if not abs(c.recomputed - c.reported) <= config.image_tolerance  # type: ignore[operator]
    ]
    if wrong:
        result.cause = (
            f"inconsistent: the evaluation's numbers are not this adapter's ({'; '.join(wrong)}): run "
            "lab_utils.evaluate after training, on the pipeline that carries the adapter"
        )
        return result
    result.passed = True
    return result
