"""What every check works from: the grader's own freshly loaded base pipeline, the learner's saved
adapter loaded onto it, and the artefacts' generation records, checked for type and range before
anything is regenerated from them. Nothing the learner's kernel computed is trusted."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import diffusers
import transformers
from peft import PeftModel

import lab_utils
from grader.types import StepFailure, Timings
from lab_utils.generation import GenerationRecord

if TYPE_CHECKING:
    from concurrent.futures import Future

    from grader.artefacts import Artefacts
    from grader.checks.memo import Memo
    from grader.config import GradingConfig
    from lab_utils.models import ModelSpec

MAX_STEPS = 200  # a forged record must not make the grader's regeneration run for hours


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def load_base(model: ModelSpec):
    """The grader's own base pipeline, every weight frozen, no progress bars. It depends on the
    model alone — no artefact, no learner code — so the grader may load it before the kernel ends."""
    diffusers.utils.logging.disable_progress_bar()  # the grader prints one table, not loading bars
    transformers.utils.logging.disable_progress_bar()
    pipe = lab_utils.load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


KEPT_REGENERATIONS = 32  # base images one process keeps: a class shares a few records


def own_copy(pipe):
    """A pipeline sharing ``pipe``'s frozen VAE, text encoder and tokenizer, with its own U-Net and
    scheduler: what one grading may change (inject an adapter into) without touching the base."""
    import copy

    components = {**pipe.components, "unet": copy.deepcopy(pipe.unet)}
    components["scheduler"] = copy.deepcopy(pipe.scheduler)
    own = type(pipe)(**components, requires_safety_checker=False)
    own.set_progress_bar_config(disable=True)
    return own


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
    timings: Timings = field(default_factory=Timings)  # stages of verification (report.json "timings")
    shared: tuple[Any, dict] | None = None  # Context.load's ``shared``
    calls: Counter = field(default_factory=Counter)  # regenerations of each record, adapter on and off
    memo: Memo | None = None  # the grading's regenerated images, kept for a regrade

    @classmethod
    def load(
        cls,
        artefacts: Artefacts,
        model: ModelSpec,
        config: GradingConfig,
        failure,
        timings: Timings,
        base: Future | None = None,
        shared: tuple[Any, dict] | None = None,
        memo: Memo | None = None,
    ) -> Context:
        """``base``: :func:`load_base` already started (the grader loads it while the kernel runs);
        its wait is what "base model load" then counts. ``shared``: a base pipeline and the images it
        made, kept across the gradings of one process (a regrade, a batch's worker): this grading
        gets its own copy of the U-Net, and images with the adapter off are made on the untouched
        base, each once — keyed by the validated record and which regeneration of it this is (the
        first and second of a baseline differ where the hardware is not deterministic: that is the
        noise floor)."""
        with timings.stage("base model load"):
            if shared is not None:
                pipe = own_copy(shared[0])
            else:
                pipe = base.result() if base is not None else load_base(model)
        lora = config.lora  # measured on the base U-Net, before the learner's adapter is injected into it
        required = set(lab_utils.target_module_names(pipe.unet, lora.targets))
        expected = lab_utils.lora_parameter_count(pipe.unet, lora.rank, lora.targets)
        load_error = next(
            (e.removeprefix("adapter: ") for e in artefacts.errors if e.startswith("adapter: ")), None
        )
        peft_unet = None
        if artefacts.adapter_dir is not None:
            try:
                with timings.stage("adapter load"):
                    peft_unet = PeftModel.from_pretrained(pipe.unet, artefacts.adapter_dir, is_trainable=True)
                    peft_unet = peft_unet.to(pipe.device)
            except Exception as error:  # noqa: BLE001 — any failure to load is the learner's adapter's fault
                text = str(error).strip()
                load_error = text.splitlines()[0] if text else type(error).__name__
        return cls(
            artefacts,
            model,
            config,
            failure,
            pipe,
            peft_unet,
            load_error,
            required,
            expected,
            timings,
            shared,
            memo=memo,
        )

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
        anything) and against the saved image's size; or the reason it cannot be used, in the
        learner's terms (their call, their variable)."""
        data = self.artefacts.records.get(name)
        if not isinstance(data, dict):
            return None, None
        try:
            record = GenerationRecord(**data)
        except TypeError:
            return None, f"{name}'s generation record has unexpected fields"
        call = record.call if isinstance(record.call, str) else None
        made = f" (`{call[:120]}`)" if call else ""
        seed_text = record.seed if is_int(record.seed) else "SEED"
        if record.unreproducible is not None:
            why = str(record.unreproducible)[:80]
            if why == "used_generator":
                return None, (
                    f"{name} cannot be reproduced{made}: the generator was used before this call: "
                    f"its state is no longer seed {seed_text} — reseed it right before the call "
                    f"(generator=torch.Generator('cpu').manual_seed({seed_text}))"
                )
            if why == "no_seed":
                return None, (
                    f"{name} was made without a seed{made}: it cannot be reproduced — pass "
                    "generator=torch.Generator('cpu').manual_seed(SEED)"
                )
            argument = why.removeprefix("unsupported:")
            return None, (
                f"{name} was made with {argument}=…{made}, which the grader cannot redo from a record: leave "
                f"{argument} out (prompt, negative_prompt, height, width, num_inference_steps, "
                "guidance_scale, generator and cross_attention_kwargs={'scale': ...} are all reproducible)"
            )
        bad = [field for field, ok in self._record_fields(name, record) if not ok]
        if bad:
            value = getattr(record, bad[0])
            return None, (
                f"{name}'s generation record is not one lab_utils.generate or a pipeline call wrote "
                f"({bad[0]} = {str(value)[:40]!r} is out of range or does not match the saved image)"
            )
        if record.generator_device != "cpu" and not _device_available(record.generator_device):
            return None, (
                f"{name} was drawn from a {record.generator_device} generator{made}, "
                "which this grader cannot redraw: draw the noise on the CPU "
                "(generator=torch.Generator('cpu').manual_seed(SEED)) — the same seed then gives the same "
                "image on every device"
            )
        return record, None

    def _record_fields(self, name: str, record: GenerationRecord) -> list[tuple[str, bool]]:
        prompts = record.prompt if isinstance(record.prompt, list) else [record.prompt]
        negatives = (
            record.negative_prompt if isinstance(record.negative_prompt, list) else [record.negative_prompt]
        )
        seeds = record.seed if isinstance(record.seed, list) else [record.seed]
        images = len(prompts) * record.images_per_prompt if is_int(record.images_per_prompt) else 0
        config = record.scheduler_config
        return [
            (
                "prompt",
                1 <= len(prompts) <= MAX_IMAGES
                and all(isinstance(p, str) and len(p) <= 2000 for p in prompts),
            ),
            (
                "negative_prompt",
                record.negative_prompt is None
                or (
                    len(negatives) in (1, len(prompts))
                    and all(isinstance(p, str) and len(p) <= 2000 for p in negatives)
                ),
            ),
            ("seed", all(is_int(s) and 0 <= s < 2**63 for s in seeds) and len(seeds) in (1, images)),  # type: ignore[operator]
            ("steps", is_int(record.steps) and 1 <= record.steps <= MAX_STEPS),
            ("guidance", is_number(record.guidance) and 0 <= record.guidance <= 50),
            ("images_per_prompt", is_int(record.images_per_prompt) and 1 <= images <= MAX_IMAGES),
            ("index", is_int(record.index) and 0 <= record.index < images),
            *[
                (side, is_int(getattr(record, side)) and 8 <= getattr(record, side) <= 2048)
                for side in ("height", "width")
            ],
            ("size", self.artefacts.images[name].size == record.size),
            (
                "lora_scale",
                record.lora_scale is None or (is_number(record.lora_scale) and abs(record.lora_scale) <= 10),
            ),
            (
                "scheduler",
                record.scheduler is None
                or (isinstance(record.scheduler, str) and len(record.scheduler) <= 100),
            ),
            ("scheduler_config", config is None or _scheduler_config_ok(config)),
            ("generator_device", record.generator_device in ("cpu", "cuda", "mps")),
            ("options", _options_ok(record.options)),
        ]

    def regenerate(self, record: GenerationRecord, adapted: bool):
        """The image ``record`` describes, with the adapter on (at its recorded scale) or off; made
        once per :attr:`memo` key (see :class:`Memo`)."""
        text = json.dumps(asdict(record), sort_keys=True, default=str)
        nth = self.calls[text, adapted]  # the nth regeneration of it: the noise floor stays
        self.calls[text, adapted] += 1
        with self.timings.stage("of which regenerations"):
            if self.memo is not None:
                kept = self.memo.get(text, adapted, nth, self.artefacts.adapter_dir)
                if kept is not None:
                    return kept
            image = self._regenerate(record, adapted, text, nth)
            if self.memo is not None:
                self.memo.put(text, adapted, nth, self.artefacts.adapter_dir, image)
            return image

    def _regenerate(self, record: GenerationRecord, adapted: bool, text: str, nth: int):
        from lab_utils.generation import regenerate

        assert self.peft_unet is not None
        if adapted:
            return regenerate(self.pipe, record)
        if self.shared is not None:
            base, made = self.shared
            if (text, nth) not in made:
                while len(made) >= KEPT_REGENERATIONS:
                    del made[next(iter(made))]  # the oldest
                made[text, nth] = regenerate(base, replace(record, lora_scale=None))
            return made[text, nth].copy()
        with self.peft_unet.disable_adapter():
            return regenerate(self.pipe, replace(record, lora_scale=None))


MAX_IMAGES = 8  # images one recorded call may make (all are regenerated to redraw one)
OPTION_RANGES = {"eta": (0.0, 1.0), "guidance_rescale": (0.0, 1.0), "clip_skip": (0, 12)}


def _options_ok(options) -> bool:
    return isinstance(options, dict) and all(
        key in OPTION_RANGES and is_number(value) and OPTION_RANGES[key][0] <= value <= OPTION_RANGES[key][1]
        for key, value in options.items()
    )


def _scheduler_config_ok(config) -> bool:
    """Small, JSON, and nothing that makes a scheduler allocate without bound."""
    import json

    if not isinstance(config, dict):
        return False
    try:
        text = json.dumps(config)
    except (TypeError, ValueError):
        return False
    timesteps = config.get("num_train_timesteps", 1000)
    return (
        len(text) <= 4000
        and config.get("trained_betas") is None
        and is_int(timesteps)
        and 1 <= timesteps <= 10000
    )


def _device_available(device: str) -> bool:
    import torch

    return device == "cuda" and torch.cuda.is_available()
