"""Step 5 (optional): ``lab_utils.evaluate`` ran on prompts other than the training prompt, with this
adapter — the grader regenerates every held-out image (base and adapted) and recomputes each group's
pixel change, which must match what the notebook reported."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from grader.types import Check, CheckResult, Option, at_least

if TYPE_CHECKING:
    from grader.checks.context import Context
    from grader.config import CheckSettings

MAX_SAMPLES = 32  # prompt × seed pairs the grader regenerates (twice: base and adapted)


@dataclass
class Claim:
    """One held-out group as the notebook reported it, and what the grader recomputed."""

    name: str
    pairs: list[tuple[str, int]]
    reported: float
    recomputed: float | None = None


def claims(evaluation: dict) -> tuple[list[Claim], tuple[int, float]]:
    """The evaluation's held-out groups and its (steps, guidance), checked for type and range.

    Raises:
        ValueError: the reason the evaluation cannot have been written by lab_utils.evaluate.
    """
    import lab_utils
    from grader.checks.context import MAX_STEPS, is_int, is_number

    steps, guidance, groups = evaluation.get("steps"), evaluation.get("guidance"), evaluation.get("groups")
    if not (is_int(steps) and is_number(guidance)):
        raise ValueError("its steps or guidance are not numbers")
    steps, guidance = int(steps), float(guidance)  # type: ignore[arg-type]
    if not (1 <= steps <= MAX_STEPS and 0 <= guidance <= 50):
        raise ValueError("its steps or guidance are out of range")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ValueError("it has no list of groups")
    found = []
    for group in groups[:10]:
        prompts, seeds, reported = group.get("prompts"), group.get("seeds"), group.get("pixel_change")
        well_formed = (
            isinstance(prompts, list)
            and all(isinstance(p, str) and len(p) <= 2000 for p in prompts)
            and isinstance(seeds, list)
            and all(is_int(x) and 0 <= x < 2**63 for x in seeds)
            and is_number(reported)
        )
        if not well_formed:
            raise ValueError(f"group {str(group.get('name'))[:40]!r} is malformed")
        if prompts and seeds and lab_utils.TRAIN_PROMPT not in prompts:
            pairs = [(p, s) for p in prompts for s in seeds]
            found.append(Claim(str(group.get("name"))[:80], pairs, float(reported)))
    return found, (steps, guidance)


def run(context: Context, settings: CheckSettings) -> CheckResult:
    import lab_utils
    from lab_utils.generation import GenerationRecord

    result = CHECK.result(measured="none", expected="held-out prompts")
    if context.peft_unet is None:
        return result.fail("no_adapter", f"no adapter to evaluate ({context.missing_why})")
    evaluation = context.artefacts.evaluation
    if evaluation is None:
        return result.fail(
            "no_evaluation",
            "no held-out evaluation was found: keep the result of lab_utils.evaluate(pipe, train_image, "
            "train_prompt, held_out=...) in a variable, e.g. evaluation",
        )
    try:
        found, (steps, guidance) = claims(evaluation)
    except ValueError as error:
        return result.fail(
            "forged", f"inconsistent: the evaluation was not written by lab_utils.evaluate ({error})"
        )
    if not found:
        return result.fail(
            "training_prompt_only",
            "only the training prompt was evaluated: pass held-out prompts (held_out=...)",
        )
    side = lab_utils.native_size(context.pipe)
    settings_record = GenerationRecord(
        prompt="", seed=0, steps=steps, guidance=guidance, height=side, width=side
    )
    budget = MAX_SAMPLES
    for claim in found:
        if len(claim.pairs) > budget:
            continue  # too large to regenerate: named in the details, not compared
        budget -= len(claim.pairs)
        changes = []
        for prompt, seed in claim.pairs:
            record = replace(settings_record, prompt=prompt, seed=seed)
            base = context.regenerate(record, adapted=False)
            changes.append(lab_utils.mean_abs_diff(base, context.regenerate(record, adapted=True)))
        claim.recomputed = sum(changes) / len(changes)
    result.details["groups"] = {
        c.name: {"samples": len(c.pairs), "reported": c.reported, "recomputed": c.recomputed} for c in found
    }
    checked = [c for c in found if c.recomputed is not None]
    if not checked:
        return result.fail(
            "too_large", f"every held-out group has more images than the grader regenerates ({MAX_SAMPLES})"
        )
    result.value = float(sum(len(c.pairs) for c in checked))
    result.measured = "; ".join(
        f"{c.name}: {len(c.pairs)} images, pixel change {c.recomputed:.2f}" for c in checked
    )
    result.expected = "held-out images of this adapter, numbers as reported"
    tolerance = settings.options["image_tolerance"]
    wrong = [
        f"{c.name} reported {c.reported:.2f}, recomputed {c.recomputed:.2f}"
        for c in checked
        if not abs(c.recomputed - c.reported) <= tolerance  # type: ignore[operator]
    ]
    if wrong:
        return result.fail(
            "numbers_differ",
            f"inconsistent: the evaluation's numbers are not this adapter's ({'; '.join(wrong)}): run "
            "lab_utils.evaluate after training, on the pipeline that carries the adapter",
        )
    result.passed = True
    return result


CHECK = Check(
    name="held_out_evaluation",
    title="held-out evaluation of this adapter",
    step=5,
    run=run,
    optional=True,
    options={
        "image_tolerance": Option(
            (int, float), 0.5, "how far a reported pixel change may be from the grader's (0–255)", at_least(0)
        )
    },
    causes={
        "no_adapter": "no adapter to evaluate",
        "no_evaluation": "no held-out evaluation was found",
        "forged": "the evaluation was not written by lab_utils.evaluate",
        "training_prompt_only": "only the training prompt was evaluated",
        "too_large": "every held-out group is too large to regenerate",
        "numbers_differ": "the evaluation's numbers are not this adapter's",
    },
)
