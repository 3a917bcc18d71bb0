"""Deterministic text-to-image generation that records how each image was made.

A :class:`GenerationRecord` is everything that fixes an image besides the weights: same record + same
weights → same pixels. ``generate`` writes one on every image it returns, and so does any diffusers
pipeline call once :mod:`lab_utils.recording` observes it; the grader regenerates from it with
:func:`regenerate` (a record is a claim: the regeneration decides).
"""

from __future__ import annotations

import json
import linecache
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import torch
from PIL import Image

from lab_utils.environment import out_of_memory_hint
from lab_utils.errors import LabError
from lab_utils.metrics import RECORD_KEY  # defined there: the grader reads it without torch

# A pipeline's keyword arguments that are plain numbers: recorded and passed on as they were given.
NUMBER_OPTIONS = ("eta", "guidance_rescale", "clip_skip")
# Keyword arguments that only choose how the result is returned, or observe the steps (a callback
# that changes the latents makes an image its record does not reproduce: the regeneration shows it).
PASSED_OVER = ("output_type", "return_dict", "callback_on_step_end", "callback_on_step_end_tensor_inputs")


@dataclass(frozen=True)
class GenerationRecord:
    """How one image was made: the pipeline call's settings, its seed(s) and the image's place in the
    call's output (``index``). ``seed`` is a list when the call took a list of generators;
    ``unreproducible`` names why it cannot be regenerated ("used_generator", "no_seed",
    "unsupported:ARG", "latent_output"), ``call`` the source line that made it."""

    prompt: str | list[str]
    seed: int | list[int] | None
    steps: int
    guidance: float
    height: int
    width: int
    negative_prompt: str | list[str] | None = None
    lora_scale: float | None = None
    images_per_prompt: int = 1
    index: int = 0
    scheduler: str | None = None  # its class name: DPMSolverMultistepScheduler, …
    scheduler_config: dict | None = None
    generator_device: str = "cpu"
    options: dict = field(default_factory=dict)  # eta, guidance_rescale, clip_skip when given
    unreproducible: str | None = None
    call: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL writes an image's size."""
        return (self.width, self.height)

    def settings(self) -> dict:
        """What must agree between two images for their difference to be the adapter's alone."""
        data = self.to_dict()
        for key in ("lora_scale", "call", "unreproducible"):
            data.pop(key)
        return data


def native_size(pipe) -> int:
    """The resolution the U-Net was built for, in pixels (512 for SD 1.5, 64 for ``tiny``)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def scheduler_settings(scheduler) -> dict:
    """A scheduler's config as JSON reads it back (lists, not tuples), without diffusers' own keys."""
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    return json.loads(json.dumps(config, default=str))


def _seed_of(generator: torch.Generator) -> int | None:
    """The seed a generator was last seeded with, or None when it has drawn numbers since."""
    seed = generator.initial_seed()
    fresh = torch.Generator(generator.device).manual_seed(seed)
    return seed if torch.equal(generator.get_state(), fresh.get_state()) else None


def _global_generator(pipe) -> torch.Generator:
    """The generator diffusers draws from when a call is given none: the pipeline's device's."""
    device = pipe._execution_device if hasattr(pipe, "_execution_device") else torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index or 0]
    return torch.default_generator


def _caller_line() -> str | None:
    """The learner's line that made the call (the first frame outside diffusers, torch and this
    package): named in the grader's message when the image cannot be reproduced."""
    frame: FrameType | None = sys._getframe(1)
    here = str(Path(__file__).resolve().parent)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not any(part in filename for part in ("diffusers", "torch", here, "contextlib")):
            line = linecache.getline(filename, frame.f_lineno).strip()
            return line[:160] or None
        frame = frame.f_back
    return None


def describe_call(pipe, arguments: dict, call: str | None = None) -> dict:
    """The record of a pipeline call (``arguments``: its bound keyword arguments), before it runs:
    the generators' seeds are read now, while their state is the one the call will draw from.
    ``index`` is left 0; :func:`attach_records` sets it per image."""
    generator = arguments.get("generator")
    unreproducible = None
    seed: int | list[int] | None
    if generator is None:
        seed = _seed_of(_global_generator(pipe))
        device = _global_generator(pipe).device.type
        unreproducible = None if seed is not None else "no_seed"
    elif isinstance(generator, torch.Generator):
        seed, device = _seed_of(generator), generator.device.type
        unreproducible = None if seed is not None else "used_generator"
        seed = seed if seed is not None else generator.initial_seed()
    elif (
        isinstance(generator, list | tuple)
        and generator
        and all(isinstance(g, torch.Generator) for g in generator)
    ):
        seeds = [_seed_of(g) for g in generator]
        device = generator[0].device.type
        unreproducible = None if None not in seeds else "used_generator"
        seed = [s if s is not None else int(g.initial_seed()) for s, g in zip(seeds, generator, strict=True)]
    else:
        seed, device, unreproducible = None, "cpu", "no_seed"
    cross = arguments.get("cross_attention_kwargs") or {}
    lora_scale = cross.get("scale") if isinstance(cross, dict) else None
    unsupported = [
        key
        for key, value in arguments.items()
        if value is not None
        and key
        not in ("prompt", "negative_prompt", "height", "width", "num_inference_steps", "guidance_scale")
        and key not in ("num_images_per_prompt", "generator", "cross_attention_kwargs", *NUMBER_OPTIONS)
        and key not in PASSED_OVER
    ]
    if isinstance(cross, dict) and set(cross) - {"scale"}:
        unsupported.append("cross_attention_kwargs")
    if unsupported:
        unreproducible = f"unsupported:{unsupported[0]}"
    elif arguments.get("output_type") == "latent":
        unreproducible = "latent_output"
    size = native_size(pipe)
    scheduler = pipe.scheduler
    return GenerationRecord(
        prompt=arguments.get("prompt"),  # type: ignore[arg-type]  # checked by the grader, not here
        seed=seed,
        steps=int(arguments.get("num_inference_steps") or 50),
        guidance=float(arguments.get("guidance_scale", 7.5)),
        height=int(arguments.get("height") or size),
        width=int(arguments.get("width") or size),
        negative_prompt=arguments.get("negative_prompt"),
        lora_scale=float(lora_scale) if isinstance(lora_scale, int | float) else None,
        images_per_prompt=int(arguments.get("num_images_per_prompt") or 1),
        scheduler=type(scheduler).__name__,
        scheduler_config=scheduler_settings(scheduler),
        generator_device=device,
        options={k: arguments[k] for k in NUMBER_OPTIONS if isinstance(arguments.get(k), int | float)},
        unreproducible=unreproducible,
        call=call,
    ).to_dict()


def output_images(output) -> list:
    """The images a pipeline call returned: ``.images`` of its output, or the tuple's first item."""
    images = output.images if hasattr(output, "images") else output[0] if isinstance(output, tuple) else None
    if isinstance(images, list):
        return images
    if images is not None and getattr(images, "ndim", 0) == 4:  # "np" (N, H, W, 3) / "pt" (N, 3, H, W)
        return list(images)
    return []


def attach_records(output, record: dict) -> list[tuple[object, dict]]:
    """Each returned image with its record: a PIL image carries it in ``image.info``; every image is
    returned with it for :mod:`lab_utils.recording`'s registry (arrays and tensors have no ``info``)."""
    pairs = []
    for index, image in enumerate(output_images(output)):
        image_record = {**record, "index": index}
        if isinstance(image, Image.Image):
            image.info[RECORD_KEY] = image_record
        pairs.append((image, image_record))
    return pairs


def _one(name: str, lab_value, diffusers_name: str, diffusers_value, default):
    if lab_value is not None and diffusers_value is not None and lab_value != diffusers_value:
        raise LabError(
            f"generate got {name}={lab_value!r} and {diffusers_name}={diffusers_value!r}: pass one of them"
        )
    for value in (lab_value, diffusers_value):
        if value is not None:
            return value
    return default


def generate(
    pipe,
    prompt: str,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    size: int | None = None,
    lora_scale: float | None = None,
    *,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    generator: torch.Generator | None = None,
) -> Image.Image:
    """One image for ``prompt`` from the starting noise fixed by ``seed`` (default 0).

    diffusers' own names work too — ``num_inference_steps`` (= ``steps``, default 25),
    ``guidance_scale`` (= ``guidance``, default 7.5), ``height``/``width`` (= ``size``, default the
    model's native size), ``negative_prompt``, ``generator`` (a freshly seeded one, instead of
    ``seed``); giving both names with different values is an error. The noise is drawn on the CPU
    unless ``generator`` says otherwise, so a seed gives the same starting latents on every device.
    ``lora_scale`` scales active LoRA adapters for this call (0 = base model). The returned image
    carries its :class:`GenerationRecord` in ``image.info["sd_lora_lab"]``.
    """
    if generator is not None and seed is not None:
        raise LabError("generate got seed= and generator=: pass one of them (seed=SEED draws on the CPU)")
    side = native_size(pipe)
    arguments = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "num_inference_steps": int(_one("steps", steps, "num_inference_steps", num_inference_steps, 25)),
        "guidance_scale": float(_one("guidance", guidance, "guidance_scale", guidance_scale, 7.5)),
        "height": int(_one("size", size, "height", height, side)),
        "width": int(_one("size", size, "width", width, side)),
        "generator": generator
        if generator is not None
        else torch.Generator("cpu").manual_seed(int(seed or 0)),
    }
    if lora_scale is not None:
        arguments["cross_attention_kwargs"] = {"scale": float(lora_scale)}
    record = describe_call(pipe, arguments, call=_caller_line())
    with torch.inference_mode(), out_of_memory_hint("generation", "size= (e.g. 384) or steps="):
        output = pipe(**{k: v for k, v in arguments.items() if v is not None})
    (image, image_record), *_ = attach_records(output, record)
    assert isinstance(image, Image.Image), type(image)  # generate asks for PIL output
    return image


def regenerate(pipe, record: GenerationRecord) -> Image.Image:
    """The image ``record`` describes, made again on ``pipe`` (its own scheduler swapped for the
    recorded one for this call when they differ). The record must have been validated."""
    import diffusers
    from diffusers import SchedulerMixin

    seeds = record.seed if isinstance(record.seed, list) else [record.seed]
    generators = [torch.Generator(record.generator_device).manual_seed(s) for s in seeds]
    arguments = {
        "prompt": record.prompt,
        "negative_prompt": record.negative_prompt,
        "num_inference_steps": record.steps,
        "guidance_scale": record.guidance,
        "height": record.height,
        "width": record.width,
        "num_images_per_prompt": record.images_per_prompt,
        "generator": generators if isinstance(record.seed, list) else generators[0],
        **record.options,
    }
    if record.lora_scale is not None:
        arguments["cross_attention_kwargs"] = {"scale": float(record.lora_scale)}
    own = pipe.scheduler
    wanted = record.scheduler_config
    same = record.scheduler in (None, type(own).__name__) and wanted in (None, scheduler_settings(own))
    if not same:
        scheduler_class = getattr(diffusers, str(record.scheduler), None)
        if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
            raise LabError(f"scheduler {record.scheduler!r} is not one of diffusers' schedulers")
        settings = {**dict(own.config), **(wanted or {})}
        pipe.scheduler = scheduler_class.from_config(settings)  # type: ignore[attr-defined]
    try:
        with torch.inference_mode():
            output = pipe(**{k: v for k, v in arguments.items() if v is not None})
    finally:
        pipe.scheduler = own
    return output.images[record.index]


def generation_record(image: Image.Image) -> GenerationRecord | None:
    """The record ``generate`` (or an observed pipeline call) attached to ``image``, if any."""
    data = getattr(image, "info", {}).get(RECORD_KEY)
    return GenerationRecord(**data) if isinstance(data, dict) else None
