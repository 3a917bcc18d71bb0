"""Adapter key schemes, apart from reading and writing them (as diffusers keeps its key conversion in
``loaders/lora_conversion_utils.py``): every key name of the three schemes is spelled here once.

* ``peft`` — ``save_pretrained``: ``adapter_config.json`` + ``adapter_model.safetensors`` with
  ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight``;
* ``diffusers`` — ``pytorch_lora_weights.safetensors``: ``unet.<module>.lora_A.weight`` (older files:
  ``.lora.down.weight``), the LoRA config in the ``lora_adapter_metadata`` header;
* ``kohya`` — the flat file A1111, ComfyUI and sd-scripts read: ``lora_unet_<module with _>`` +
  ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, text-encoder modules ``lora_te*_``.
"""

from __future__ import annotations

import re

SCHEMES = ("peft", "diffusers", "kohya")
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
DIFFUSERS_METADATA = "lora_adapter_metadata"

KOHYA_UNET = "lora_unet_"
KOHYA_TEXT_ENCODERS = ("lora_te_", "lora_te1_", "lora_te2_")
KOHYA_DOWN, KOHYA_UP, KOHYA_ALPHA = "lora_down.weight", "lora_up.weight", "alpha"

_PEFT_KEY = re.compile(r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B)(?:\.default)?\.weight")
_DIFFUSERS_KEY = re.compile(
    r"(?:unet\.|base_model\.model\.)?(.+)\.(lora_A|lora_B|lora\.down|lora\.up)\.weight"
)


def kohya_module(module: str) -> str:
    """``down_blocks.0.attentions.0…to_q`` → ``lora_unet_down_blocks_0_attentions_0…to_q``."""
    return KOHYA_UNET + module.replace(".", "_")


def kohya_keys(module: str) -> tuple[str, str, str]:
    """The (down, up, alpha) keys of a U-Net module in a kohya file."""
    flat = kohya_module(module)
    return f"{flat}.{KOHYA_DOWN}", f"{flat}.{KOHYA_UP}", f"{flat}.{KOHYA_ALPHA}"


def is_kohya(key: str) -> bool:
    return key.startswith((KOHYA_UNET, *KOHYA_TEXT_ENCODERS))


def is_text_encoder(module: str) -> bool:
    return module.startswith(KOHYA_TEXT_ENCODERS)


def parse_kohya(key: str) -> tuple[str, str | None]:
    """(module stem, "down" | "up" | "alpha" | None for a suffix no reader knows)."""
    stem, _, suffix = key.partition(".")
    part = {KOHYA_DOWN: "down", KOHYA_UP: "up", KOHYA_ALPHA: "alpha"}.get(suffix)
    return stem, part


def parse_peft(key: str, folder: bool) -> tuple[str, str] | None:
    """(module, "down" | "up") of a PEFT (``folder``) or diffusers key; None for another key."""
    match = (_PEFT_KEY if folder else _DIFFUSERS_KEY).fullmatch(key)
    if match is None:
        return None
    module, which = match.groups()
    return module, "down" if which in ("lora_A", "lora.down") else "up"


def peft_module(key: str) -> str:
    """A PEFT state-dict key's module path: ``base_model.model.X.lora_A.weight`` → ``X``."""
    return key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]


def module_kind(module: str) -> str:
    """``attn2.to_k`` for any module path of that projection."""
    match = re.search(r"(attn[12]\.to_(q|k|v|out))", module)
    return match.group(1) if match else module.rsplit(".", 1)[-1]


def block(module: str) -> str:
    """'down_blocks.0' for a module in it, whatever the key scheme."""
    match = re.match(
        rf"(?:{KOHYA_UNET})?((?:down|up)_blocks[._]\d+|mid_block|input_blocks[._]\d+|output_blocks[._]\d+|"
        r"middle_block|lora_te\d?)",
        module,
    )
    block = match.group(1) if match else module.split(".")[0]
    return re.sub(r"_(\d+)$", r".\1", block)


def pattern_value(patterns: dict | None, module: str, default):
    """A PEFT ``rank_pattern`` / ``alpha_pattern`` value for ``module`` (``default`` if none matches)."""
    for key, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default
