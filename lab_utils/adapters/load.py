"""Reading adapter files strictly: any scheme into one layout (:class:`AdapterFile`), every tensor
matched to a module of the model with a fitting shape — or one LabError that lists what did not fit,
by block, with the likely cause — then handed to diffusers (so ``set_adapters`` / ``fuse_lora`` work)."""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open

from lab_utils.adapters.schemes import (
    DIFFUSERS_FILE,
    DIFFUSERS_METADATA,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    block,
    is_kohya,
    is_text_encoder,
    kohya_keys,
    kohya_module,
    parse_kohya,
    parse_peft,
    pattern_value,
)
from lab_utils.errors import LabError
from lab_utils.files import readable_file, readable_folder, shown


@dataclass
class AdapterFile:
    """One adapter read into PEFT's layout: per module its A/B tensors, rank and alpha."""

    path: Path
    scheme: str
    a: dict[str, torch.Tensor] = field(default_factory=dict)  # module → (rank × in) or conv
    b: dict[str, torch.Tensor] = field(default_factory=dict)  # module → (out × rank)
    alpha: dict[str, float | None] = field(default_factory=dict)  # None: the file has no alpha
    metadata: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # keys in no scheme this reader knows

    @property
    def modules(self) -> list[str]:
        return sorted(set(self.a) | set(self.b))

    def rank(self, module: str) -> int:
        return int(self.a[module].shape[0])

    def scale(self, module: str) -> float:
        alpha = self.alpha.get(module)
        return 1.0 if alpha is None else alpha / self.rank(module)


def _tensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})
    except Exception as error:  # noqa: BLE001 — safetensors raises its own error types
        raise LabError(
            f"'{shown(file)}' is not a readable safetensors file ({type(error).__name__}): it is "
            "truncated or another format — export the adapter again"
        ) from None


def read_adapter_file(path: str | os.PathLike[str]) -> AdapterFile:
    """Read a PEFT folder, a diffusers file (or its folder) or a kohya file into :class:`AdapterFile`."""
    path = Path(path)
    try:
        folder = path.is_dir()
    except OSError:
        folder = False  # the line comes from readable_file below
    if folder:
        readable_folder(path, "adapter folder")
        if (path / PEFT_CONFIG).is_file():
            return _read_peft(path)
        if (path / DIFFUSERS_FILE).is_file():
            path = path / DIFFUSERS_FILE
        else:
            raise LabError(f"'{shown(path)}' holds neither {PEFT_CONFIG} nor {DIFFUSERS_FILE}")
    readable_file(path, "adapter")
    if path.suffix != ".safetensors":
        raise LabError(
            f"'{shown(path)}': only .safetensors adapters are read (pickled .bin/.pt/.ckpt never are)"
        )
    tensors, metadata = _tensors(path)
    found = AdapterFile(path, "unknown", metadata=metadata)
    config = {}
    if DIFFUSERS_METADATA in metadata:  # diffusers' save_lora_weights(..., adapter_metadata)
        try:
            flat = json.loads(metadata[DIFFUSERS_METADATA])
            config = {k.removeprefix("unet."): v for k, v in flat.items() if k.startswith("unet.")}
        except (ValueError, AttributeError):
            config = {}
    for key, tensor in tensors.items():
        if is_kohya(key):
            found.scheme = "kohya"
            stem, part = parse_kohya(key)
            if part == "down":
                found.a[stem] = tensor
            elif part == "up":
                found.b[stem] = tensor
            elif part == "alpha":
                if tensor.numel() != 1:
                    raise LabError(
                        f"'{shown(path)}': {key} holds {tensor.numel()} numbers, not one alpha: "
                        "export the adapter again"
                    )
                found.alpha[stem] = float(tensor)
            else:
                found.unknown.append(key)
            continue
        parsed = parse_peft(key, folder=False)
        if parsed is None:
            found.unknown.append(key)
            continue
        found.scheme = "diffusers" if key.startswith("unet.") else "peft"
        module, part = parsed
        (found.a if part == "down" else found.b)[module] = tensor
    if found.scheme != "kohya":
        for module in found.modules:
            try:
                found.alpha[module] = _config_alpha(config, module, found)
            except (TypeError, ValueError, IndexError, AttributeError):
                raise LabError(
                    f"'{shown(path)}': its adapter metadata ({DIFFUSERS_METADATA}) has no usable rank "
                    "or alpha for its tensors: export the adapter again"
                ) from None
    return found


def _config_alpha(config: dict, module: str, found: AdapterFile) -> float | None:
    if not config:
        return None
    if module in found.a:
        rank = found.rank(module)
    else:
        rank = int(config.get("r", 1))
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", rank)))
    if config.get("use_rslora"):
        alpha *= math.sqrt(rank)
    return alpha


def _read_peft(folder: Path) -> AdapterFile:
    config = json.loads((folder / PEFT_CONFIG).read_text())
    weights = folder / PEFT_WEIGHTS
    if not weights.is_file():
        raise LabError(f"'{folder}' has no {PEFT_WEIGHTS} (pickled adapters are never read)")
    tensors, metadata = _tensors(weights)
    found = AdapterFile(folder, "peft", metadata=metadata)
    for key, tensor in tensors.items():
        parsed = parse_peft(key, folder=True)
        if parsed is None:
            found.unknown.append(key)
            continue
        module, part = parsed
        (found.a if part == "down" else found.b)[module] = tensor
    for module in found.modules:
        found.alpha[module] = _config_alpha(config, module, found)
    return found


def match_modules(adapter: AdapterFile, model: torch.nn.Module) -> tuple[dict[str, str], list[str]]:
    """(file module → model module, problems): every module of the file must exist in ``model``
    with shapes that fit; each problem is one line."""
    modules = dict(model.named_modules())
    modules = {name: m for name, m in modules.items() if ".base_layer" not in name and "lora_" not in name}
    flat = {kohya_module(name): name for name in modules}
    mapping: dict[str, str] = {}
    problems: list[str] = []
    for module in adapter.modules:
        name = flat.get(module, module if module in modules else None)
        if name is None:
            problems.append(f"{module}: no such module")
            continue
        target = modules[name]
        if isinstance(target, BaseTunerLayer):  # already holds (or held) a LoRA: match its base layer
            target = target.get_base_layer()
        a, b = adapter.a.get(module), adapter.b.get(module)
        if a is None or b is None:
            problems.append(f"{module}: only one of the down/up (A/B) pair")
            continue
        if isinstance(target, torch.nn.Linear):
            fits = a.shape[1:] == (target.in_features,) and b.shape == (target.out_features, a.shape[0])
            expected = f"({a.shape[0]}, {target.in_features}) and ({target.out_features}, {a.shape[0]})"
        elif isinstance(target, torch.nn.Conv2d):
            fits = a.shape[1] == target.in_channels and b.shape[0] == target.out_channels
            expected = f"in {target.in_channels}, out {target.out_channels} channels"
        else:
            problems.append(f"{module}: {type(target).__name__} cannot take LoRA")
            continue
        if not fits:
            problems.append(
                f"{module}: shapes {tuple(a.shape)} and {tuple(b.shape)}, the model needs {expected}"
            )
            continue
        mapping[module] = name
    return mapping, problems


def diagnose_mismatch(adapter: AdapterFile, problems: list[str]) -> str:
    """The most likely cause of unmatched keys, in words."""
    text = " ".join(problems)
    if "input_blocks" in text or "output_blocks" in text or "middle_block" in text:
        return "the keys use SGM block names (input_blocks/output_blocks): an SDXL adapter, not SD 1.x"
    widths = Counter(int(t.shape[-1]) for t in adapter.a.values() if t.ndim == 2)
    if "attn2_to_k" in text or "attn2.to_k" in text:
        if 2048 in widths or 1280 in widths:
            return (
                "cross-attention takes 2048/1280-wide text embeddings: an SDXL (or SD 2.x) adapter on SD 1.x"
            )
    if "no such module" in text:
        return "module names do not exist in this model: an adapter for another architecture"
    if "shapes" in text:
        return "the layer widths differ: an adapter trained on another model (or another size of it)"
    return "the file does not match this model"


def grouped(problems: list[str], limit: int = 6) -> str:
    blocks: dict[str, int] = Counter(block(p.split(":")[0]) for p in problems)
    return ", ".join(f"{block} ({count})" for block, count in list(blocks.items())[:limit])


def read_adapter(path: str | os.PathLike[str], model: torch.nn.Module) -> tuple[AdapterFile, dict[str, str]]:
    """Read ``path`` and match it to ``model`` (a U-Net) strictly.

    Raises:
        LabError: keys that land nowhere or do not fit, by block, with the likely cause.
    """
    adapter = read_adapter_file(path)
    if not adapter.modules:
        raise LabError(
            f"'{adapter.path}' holds no LoRA tensors this lab can read ({len(adapter.unknown)} other keys)"
        )
    unet_modules = [m for m in adapter.modules if not is_text_encoder(m)]
    adapter.a = {m: t for m, t in adapter.a.items() if m in unet_modules}
    adapter.b = {m: t for m, t in adapter.b.items() if m in unet_modules}
    mapping, problems = match_modules(adapter, model)
    if problems or adapter.unknown:
        lines = problems + [f"{key}: unknown key" for key in adapter.unknown]
        raise LabError(
            f"adapter '{adapter.path}' does not fit this model: {len(lines)} of "
            f"{len(adapter.modules) + len(adapter.unknown)} entries unmatched in {grouped(lines)} — "
            f"{diagnose_mismatch(adapter, lines)} (first: {lines[0]})"
        )
    return adapter, mapping


def kohya_state(adapter: AdapterFile, mapping: dict[str, str]) -> dict[str, torch.Tensor]:
    """The adapter as a kohya state dict (``.alpha`` = rank where the file had none: scale 1)."""
    state: dict[str, torch.Tensor] = {}
    for module, name in mapping.items():
        down, up, alpha_key = kohya_keys(name)
        state[down], state[up] = adapter.a[module], adapter.b[module]
        alpha = adapter.alpha.get(module)
        state[alpha_key] = torch.tensor(float(adapter.rank(module) if alpha is None else alpha))
    return state


def load_lora(pipe, path: str | os.PathLike[str], adapter_name: str = "default") -> AdapterFile:
    """Load any adapter file onto ``pipe`` strictly, as diffusers adapter ``adapter_name``
    (switch, weight and fuse it with ``pipe.set_adapters`` / ``pipe.fuse_lora``).

    Raises:
        LabError: keys that land nowhere or do not fit (by block, with the likely cause).
    """
    adapter, mapping = read_adapter(path, pipe.unet)
    load_checked(pipe, kohya_state(adapter, mapping), adapter_name)
    return adapter


def load_checked(pipe, state: dict[str, torch.Tensor], adapter_name: str) -> None:
    """``pipe.load_lora_weights`` for a state already matched key by key, without two notices that
    do not apply after the strict check: PEFT's "multiple adapters" warning (a second named adapter
    is what hot-swapping means) and diffusers' "no text-encoder keys" (the lab's adapters are U-Net
    only)."""
    lora_base = logging.getLogger("diffusers.loaders.lora_base")
    level = lora_base.level
    lora_base.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            pipe.load_lora_weights(state, adapter_name=adapter_name)
    finally:
        lora_base.setLevel(level)
