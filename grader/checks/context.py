"""What every check works from: the grader's own freshly loaded base pipeline, the learner's saved
adapter loaded onto it, and the artefacts' generation records, checked for type and range before
anything is regenerated from them. Nothing the learner's kernel computed is trusted."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import diffusers
import transformers
from peft import PeftModel

import lab_utils
from grader.types import StepFailure
from lab_utils.generation import GenerationRecord

if TYPE_CHECKING:
    from grader.artefacts import Artefacts
    from grader.config import GradingConfig
    from lab_utils.models import ModelSpec

MAX_STEPS = 200  # a forged record must not make the grader's regeneration run for hours


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


@dataclass
class Context:
    artefacts: Artefacts
    model: ModelSpec
    config: GradingConfig
    failure: StepFailure | None
    pipe: Any  # StableDiffusionPipeline
    peft_unet: PeftModel | None
    load_error: str | None  # why the saved adapter could not be loaded
    required_modules: set[str]  # what the required LoRA config wraps in the base U-Net
    expected_count: int  # the parameters it adds (lab_utils.lora_parameter_count)

    @classmethod
    def load(cls, artefacts: Artefacts, model: ModelSpec, config: GradingConfig, failure) -> Context:
        diffusers.utils.logging.disable_progress_bar()  # the grader prints one table, not loading bars
        transformers.utils.logging.disable_progress_bar()
        pipe = lab_utils.load_pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        lora = config.lora  # measured on the base U-Net, before the learner's adapter is injected into it
        required = set(lab_utils.target_module_names(pipe.unet, lora.targets))
        expected = lab_utils.lora_parameter_count(pipe.unet, lora.rank, lora.targets)
        load_error = next(
            (e.removeprefix("adapter: ") for e in artefacts.errors if e.startswith("adapter: ")), None
        )
        peft_unet = None
        if artefacts.adapter_dir is not None:
            try:
                peft_unet = PeftModel.from_pretrained(pipe.unet, artefacts.adapter_dir, is_trainable=True)
                peft_unet = peft_unet.to(pipe.device)
            except Exception as error:  # noqa: BLE001 — any failure to load is the learner's adapter's fault
                text = str(error).strip()
                load_error = text.splitlines()[0] if text else type(error).__name__
        return cls(artefacts, model, config, failure, pipe, peft_unet, load_error, required, expected)

    @property
    def stopped(self) -> str | None:
        """ "the notebook stopped at step N" when it did."""
        if self.failure is None:
            return None
        step = self.failure.step
        return f"the notebook stopped at step {step}" if step else "the notebook stopped early"

    @property
    def missing_why(self) -> str:
        return self.stopped or "the notebook finished without a PEFT-wrapped U-Net"

    def record(self, name: str) -> tuple[GenerationRecord | None, str | None]:
        """The image's generation record, checked for type and range (the kernel could write
        anything) and against the saved image's size; or the reason it cannot be used."""
        data = self.artefacts.records.get(name)
        if not isinstance(data, dict):
            return None, None
        try:
            record = GenerationRecord(**data)
        except TypeError:
            return None, f"{name}'s generation record has unexpected fields"
        checks = [
            ("prompt", isinstance(record.prompt, str) and len(record.prompt) <= 2000),
            ("seed", is_int(record.seed) and 0 <= record.seed < 2**63),
            ("steps", is_int(record.steps) and 1 <= record.steps <= MAX_STEPS),
            ("guidance", is_number(record.guidance) and 0 <= record.guidance <= 50),
            ("size", is_int(record.size) and self.artefacts.images[name].size == (record.size, record.size)),
            (
                "lora_scale",
                record.lora_scale is None or (is_number(record.lora_scale) and abs(record.lora_scale) <= 10),
            ),
        ]
        bad = [field for field, ok in checks if not ok]
        if bad:
            value = getattr(record, bad[0])
            return None, (
                f"{name}'s generation record is not one lab_utils.generate wrote ({bad[0]} = "
                f"{str(value)[:40]!r} is out of range or does not match the saved image)"
            )
        return record, None

    def regenerate(self, record: GenerationRecord, adapted: bool):
        """The image ``record`` describes, with the adapter on (at its recorded scale) or off."""
        assert self.peft_unet is not None
        if adapted:
            return lab_utils.generate(
                self.pipe,
                record.prompt,
                record.seed,
                record.steps,
                record.guidance,
                record.size,
                record.lora_scale,
            )
        with self.peft_unet.disable_adapter():
            return lab_utils.generate(
                self.pipe, record.prompt, record.seed, record.steps, record.guidance, record.size
            )
