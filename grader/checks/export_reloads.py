"""Step 5 (optional): each exported adapter file, loaded strictly onto a fresh base pipeline of the
grader's, redraws the adapted image the grader regenerates from the PEFT adapter — the same adapter,
its trained alpha kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

from grader.types import Check, CheckResult, Option, at_least

if TYPE_CHECKING:
    from grader.checks.context import Context
    from grader.config import CheckSettings


def run(context: Context, settings: CheckSettings) -> CheckResult:
    import lab_utils
    from lab_utils.adapters import diagnose_adapter, load_lora
    from lab_utils.generation import regenerate

    tolerance = settings.options["image_tolerance"]
    result = CHECK.result(measured="none", expected="all reproduce")
    artefacts = context.artefacts
    if context.peft_unet is None:
        return result.fail("no_adapter", f"no adapter to compare the export with ({context.missing_why})")
    if not artefacts.exports:
        return result.fail(
            "no_export",
            "no exported adapter file was found: keep the path export_adapter returns in a variable, e.g. "
            "kohya_file = export_adapter(unet, 'my-lora-kohya.safetensors', 'kohya')",
        )
    if "adapted_image" not in artefacts.images:
        return result.fail("no_reference", "adapted_image is needed to compare the export with (step 4)")
    record, problem = context.record("adapted_image")
    if problem:
        return result.fail("no_reference", problem)
    if record is None:
        return result.fail(
            "no_reference",
            "adapted_image has no generation record: make it with a pipeline call or lab_utils.generate",
        )
    reference = context.regenerate(record, adapted=True)
    fresh = lab_utils.load_pipeline(context.model)
    fresh.set_progress_bar_config(disable=True)
    differences: dict[str, float] = {}
    for name, file in artefacts.exports.items():
        try:
            load_lora(fresh, file, adapter_name=name)
        except Exception as error:  # noqa: BLE001 — a file that does not load is the finding
            result.measured = f"{name} did not load"
            return result.fail(
                "does_not_load",
                f"{name} does not load onto the base model: {str(error).splitlines()[0][:300]}",
            )
        fresh.set_adapters(name)
        image = regenerate(fresh, record)
        differences[name] = lab_utils.mean_abs_diff(image, reference)
        fresh.delete_adapters(name)
    result.details["mean_abs_diff_to_adapted"] = differences
    worst = max(differences, key=lambda n: differences[n])
    result.value = differences[worst]
    result.measured = ", ".join(f"{n}: {d:.2f}" for n, d in differences.items())
    result.expected = f"each ≤ {tolerance:g} from the adapted image"
    if differences[worst] <= tolerance:
        result.passed = True
        return result
    findings = diagnose_adapter(artefacts.exports[worst]).findings
    return result.fail(
        "not_the_adapter",
        f"{worst} redraws the adapted image {differences[worst]:.2f} away: it is not the adapter as "
        "trained (exported before training, from another adapter, or with a different alpha)"
        + (f" — {'; '.join(findings)}" if findings else ""),
    )


CHECK = Check(
    name="export_reloads",
    title="exported adapter reproduces the image",
    step=5,
    run=run,
    optional=True,
    options={
        "image_tolerance": Option(
            (int, float), 0.5, "how far the export's image may be from the adapted one (0–255)", at_least(0)
        )
    },
    causes={
        "no_adapter": "no adapter to compare the export with",
        "no_export": "no exported adapter file was found",
        "no_reference": "no usable adapted_image to compare the export with",
        "does_not_load": "an exported file does not load onto the base model",
        "not_the_adapter": "an exported file is not the adapter as trained",
    },
)
