"""Adapters in the file formats people load, read back strictly, and diagnosed.

Three schemes (../shared/reference/adapter-formats.md has the whole zoo):

* ``peft`` — ``save_pretrained``: a folder with ``adapter_config.json`` + ``adapter_model.safetensors``.
* ``diffusers`` — ``pytorch_lora_weights.safetensors`` as diffusers' training scripts write it
  (``StableDiffusionPipeline.save_lora_weights``), with the LoRA config (alpha included) in the
  file's metadata so ``pipe.load_lora_weights`` restores the trained strength.
* ``kohya`` — the flat file A1111, ComfyUI and kohya's sd-scripts read:
  ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, where
  ``.alpha`` is the **trained** alpha (diffusers' own converter writes alpha = rank), plus ``ss_*``
  header metadata (base model, rank, alpha) and the targets, steps and trigger prompt.

:func:`read_adapter` loads any of them strictly: every tensor must land on a module of the model
with a matching shape, or one LabError lists what did not, grouped by block, with a diagnosis.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from lab_utils.errors import LabError
from lab_utils.lora import save_adapter

SCHEMES = ("peft", "diffusers", "kohya")
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"


def _peft_state(unet: PeftModel) -> dict[str, torch.Tensor]:
    """{module path + ".lora_A.weight" | ".lora_B.weight": tensor}, module paths as in the U-Net."""
    if not isinstance(unet, PeftModel):
        raise LabError("export needs the PEFT-wrapped U-Net returned by get_peft_model/attach_lora")
    state = get_peft_model_state_dict(unet)
    return {k.removeprefix("base_model.model."): v.detach().cpu().contiguous() for k, v in state.items()}


def _lora_config(unet: PeftModel) -> LoraConfig:
    config = unet.peft_config["default"]
    if not isinstance(config, LoraConfig):
        raise LabError(f"the adapter is {type(config).__name__}, not LoRA")
    return config


def _pattern_value(patterns: dict | None, module: str, default):
    for key, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def module_rank_alpha(unet: PeftModel, module: str) -> tuple[int, float]:
    """The (rank, alpha) PEFT uses for ``module``, rank_pattern/alpha_pattern included."""
    config = _lora_config(unet)
    return (
        int(_pattern_value(config.rank_pattern, module, config.r)),
        float(_pattern_value(config.alpha_pattern, module, config.lora_alpha)),
    )


def export_adapter(
    unet: PeftModel,
    path: str | os.PathLike[str],
    scheme: str = "kohya",
    trigger: str = "",
    steps: int | None = None,
    base_model: str = "sd_v1",
) -> Path:
    """Write the adapter of ``unet`` as ``scheme``; returns the file (or, for peft, the folder)."""
    if scheme not in SCHEMES:
        raise LabError(f"scheme={scheme!r}: use one of {', '.join(SCHEMES)}")
    path = Path(path)
    if scheme == "peft":
        return save_adapter(unet, path)
    state = _peft_state(unet)
    config = _lora_config(unet)
    if scheme == "diffusers":
        from diffusers import StableDiffusionPipeline

        path.mkdir(parents=True, exist_ok=True)
        adapter_metadata = {
            "r": config.r,
            "lora_alpha": config.lora_alpha,
            "target_modules": sorted(_modules(state)),
            "use_rslora": bool(config.use_rslora),
            "rank_pattern": dict(config.rank_pattern or {}),
            "alpha_pattern": dict(config.alpha_pattern or {}),
        }
        StableDiffusionPipeline.save_lora_weights(
            path, unet_lora_layers=state, unet_lora_adapter_metadata=adapter_metadata, safe_serialization=True
        )
        return path / DIFFUSERS_FILE
    tensors: dict[str, torch.Tensor] = {}
    for module in sorted(_modules(state)):
        rank, alpha = module_rank_alpha(unet, module)
        if config.use_rslora:  # PEFT scales by alpha/√r; kohya readers by alpha/r
            alpha = alpha * math.sqrt(rank)
        flat = "lora_unet_" + module.replace(".", "_")
        tensors[f"{flat}.lora_down.weight"] = state[f"{module}.lora_A.weight"]
        tensors[f"{flat}.lora_up.weight"] = state[f"{module}.lora_B.weight"]
        tensors[f"{flat}.alpha"] = torch.tensor(float(alpha))
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.r),
        "ss_network_alpha": str(float(config.lora_alpha) * (math.sqrt(config.r) if config.use_rslora else 1)),
        "ss_base_model_version": base_model,
        "ss_steps": str(steps) if steps is not None else "",
        "sd_lora_lab_targets": json.dumps(sorted({_kind(m) for m in _modules(state)})),
        "sd_lora_lab_trigger": trigger,
    }
    if path.suffix != ".safetensors":
        raise LabError(f"'{path}': a kohya adapter is one .safetensors file")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".lora-", suffix=".safetensors", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _modules(state: dict[str, torch.Tensor]) -> set[str]:
    return {key.rsplit(".lora_", 1)[0] for key in state}


def _kind(module: str) -> str:
    match = re.search(r"(attn[12]\.to_(q|k|v|out))", module)
    return match.group(1) if match else module.rsplit(".", 1)[-1]


# ---------------------------------------------------------------------------------- reading


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
        raise LabError(f"'{file}' is not a readable safetensors file ({type(error).__name__})") from None


def read_adapter_file(path: str | os.PathLike[str]) -> AdapterFile:
    """Read a PEFT folder, a diffusers file (or its folder) or a kohya file into :class:`AdapterFile`."""
    path = Path(path)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return _read_peft(path)
        if (path / DIFFUSERS_FILE).is_file():
            path = path / DIFFUSERS_FILE
        else:
            raise LabError(f"'{path}' holds neither adapter_config.json nor {DIFFUSERS_FILE}")
    if not path.is_file():
        raise LabError(f"adapter '{path}' does not exist")
    if path.suffix != ".safetensors":
        raise LabError(f"'{path}': only .safetensors adapters are read (pickled .bin/.pt/.ckpt never are)")
    tensors, metadata = _tensors(path)
    found = AdapterFile(path, "unknown", metadata=metadata)
    config = {}
    if "lora_adapter_metadata" in metadata:  # diffusers' save_lora_weights(..., adapter_metadata)
        try:
            flat = json.loads(metadata["lora_adapter_metadata"])
            config = {k.removeprefix("unet."): v for k, v in flat.items() if k.startswith("unet.")}
        except (ValueError, AttributeError):
            config = {}
    for key, tensor in tensors.items():
        if key.startswith("lora_unet_") or key.startswith(("lora_te_", "lora_te1_", "lora_te2_")):
            found.scheme = "kohya"
            stem, _, suffix = key.partition(".")
            if suffix == "lora_down.weight":
                found.a[stem] = tensor
            elif suffix == "lora_up.weight":
                found.b[stem] = tensor
            elif suffix == "alpha":
                found.alpha[stem] = float(tensor)
            else:
                found.unknown.append(key)
            continue
        match = re.fullmatch(
            r"(?:unet\.|base_model\.model\.)?(.+)\.(lora_A|lora_B|lora\.down|lora\.up)\.weight", key
        )
        if match is None:
            found.unknown.append(key)
            continue
        found.scheme = "diffusers" if key.startswith("unet.") else "peft"
        module, which = match.groups()
        (found.a if which in ("lora_A", "lora.down") else found.b)[module] = tensor
    if found.scheme != "kohya":
        for module in found.modules:
            found.alpha[module] = _config_alpha(config, module, found)
    return found


def _config_alpha(config: dict, module: str, found: AdapterFile) -> float | None:
    if not config:
        return None
    if module in found.a:
        rank = found.rank(module)
    else:
        rank = int(config.get("r", 1))
    alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", rank)))
    if config.get("use_rslora"):
        alpha *= math.sqrt(rank)
    return alpha


def _read_peft(folder: Path) -> AdapterFile:
    config = json.loads((folder / "adapter_config.json").read_text())
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise LabError(f"'{folder}' has no adapter_model.safetensors (pickled adapters are never read)")
    tensors, metadata = _tensors(weights)
    found = AdapterFile(folder, "peft", metadata=metadata)
    for key, tensor in tensors.items():
        match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B)(?:\.default)?\.weight", key)
        if match is None:
            found.unknown.append(key)
            continue
        module, which = match.groups()
        (found.a if which == "lora_A" else found.b)[module] = tensor
    for module in found.modules:
        found.alpha[module] = _config_alpha(config, module, found)
    return found


def _block(module: str) -> str:
    """'down_blocks.0' for a module in it, whatever the key scheme."""
    match = re.match(
        r"(?:lora_unet_)?((?:down|up)_blocks[._]\d+|mid_block|input_blocks[._]\d+|output_blocks[._]\d+|"
        r"middle_block|lora_te\d?)",
        module,
    )
    block = match.group(1) if match else module.split(".")[0]
    return re.sub(r"_(\d+)$", r".\1", block)


def match_modules(adapter: AdapterFile, model: torch.nn.Module) -> tuple[dict[str, str], list[str]]:
    """(file module → model module, problems): every module of the file must exist in ``model``
    with shapes that fit; each problem is one line."""
    modules = dict(model.named_modules())
    modules = {name: m for name, m in modules.items() if ".base_layer" not in name and "lora_" not in name}
    flat = {"lora_unet_" + name.replace(".", "_"): name for name in modules}
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
    blocks: dict[str, int] = Counter(_block(p.split(":")[0]) for p in problems)
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
    unet_modules = [m for m in adapter.modules if not m.startswith(("lora_te_", "lora_te1_", "lora_te2_"))]
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
        flat = "lora_unet_" + name.replace(".", "_")
        state[f"{flat}.lora_down.weight"] = adapter.a[module]
        state[f"{flat}.lora_up.weight"] = adapter.b[module]
        alpha = adapter.alpha.get(module)
        state[f"{flat}.alpha"] = torch.tensor(float(adapter.rank(module) if alpha is None else alpha))
    return state


def load_lora(pipe, path: str | os.PathLike[str], adapter_name: str = "default") -> AdapterFile:
    """Load any adapter file onto ``pipe`` strictly, as diffusers adapter ``adapter_name``
    (switch, weight and fuse it with ``pipe.set_adapters`` / ``pipe.fuse_lora``).

    Raises:
        LabError: keys that land nowhere or do not fit (by block, with the likely cause).
    """
    adapter, mapping = read_adapter(path, pipe.unet)
    _load_checked(pipe, kohya_state(adapter, mapping), adapter_name)
    return adapter


def _load_checked(pipe, state: dict[str, torch.Tensor], adapter_name: str) -> None:
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


@dataclass
class Diagnosis:
    """What :func:`diagnose_adapter` found; ``findings`` are the problems, in words."""

    path: str
    scheme: str
    modules: int
    ranks: list[int]
    alphas: list[float | None]
    scales: list[float]
    targets_by_block: dict[str, int]
    delta_norm: float  # ‖scale · B·A‖ summed over modules
    findings: list[str]
    pixel_effect: float | None = None  # mean_abs_diff, adapter off vs on, when a pipeline was given

    @property
    def healthy(self) -> bool:
        return not self.findings


def diagnose_adapter(path: str | os.PathLike[str], pipe=None, prompt: str = "", seed: int = 0) -> Diagnosis:
    """Read an adapter file and say what is in it and what is wrong with it: scheme, rank, alpha
    and scale, targets by block, ΔW norms; all-zero up/B weights ("untrained"), NaN or inf, a
    missing alpha, keys that do not fit ``pipe``'s U-Net — and, given ``pipe``, a pixel smoke test."""
    adapter = read_adapter_file(path)
    findings: list[str] = []
    modules = adapter.modules
    if not modules:
        findings.append(f"no LoRA tensors found ({len(adapter.unknown)} other keys)")
    complete = [m for m in modules if m in adapter.a and m in adapter.b]
    delta = 0.0
    finite = True
    for module in complete:
        a, b = adapter.a[module].float(), adapter.b[module].float()
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            finite = False
            continue
        product = b.flatten(1) @ a.flatten(1)  # conv LoRA: (out × r) @ (r × in·k·k)
        delta += float(adapter.scale(module) * product.norm())
    if not finite:
        findings.append(
            "NaN or inf in the weights: training diverged (lower the learning rate, use bf16/fp32)"
        )
    if complete and all(not adapter.b[m].any() for m in complete):
        findings.append(
            "untrained: every up/B weight is zero, so the adapter changes nothing (the optimizer never "
            "stepped, or its learning rate was 0)"
        )
    if adapter.scheme == "kohya" and any(adapter.alpha.get(m) is None for m in modules):
        findings.append(
            "alpha missing: readers disagree on its strength (ComfyUI: scale 1, others alpha/rank)"
        )
    if adapter.unknown:
        findings.append(
            f"{len(adapter.unknown)} keys in no LoRA scheme this lab reads (first: {adapter.unknown[0]})"
        )
    pixel = None
    if pipe is not None and modules:
        mapping, problems = match_modules(adapter, pipe.unet)
        if problems:
            findings.append(
                f"key mismatch: {len(problems)} of {len(modules)} modules do not fit this model, in "
                f"{grouped(problems)} — {diagnose_mismatch(adapter, problems)}"
            )
        elif finite:
            pixel = _pixel_effect(pipe, adapter, mapping, prompt, seed)
            if pixel == 0.0 and not any("untrained" in f for f in findings):
                findings.append("loads but changes no pixel on this model (scale 0 or disconnected)")
    ranks = sorted({adapter.rank(m) for m in complete})
    blocks = Counter(_block(m) for m in modules)
    return Diagnosis(
        str(adapter.path),
        adapter.scheme,
        len(modules),
        ranks,
        sorted({adapter.alpha.get(m) for m in modules}, key=lambda v: (v is None, v or 0)),
        sorted({round(adapter.scale(m), 6) for m in complete}),
        dict(blocks),
        round(delta, 6),
        findings,
        pixel,
    )


def _pixel_effect(pipe, adapter: AdapterFile, mapping: dict[str, str], prompt: str, seed: int) -> float:
    from lab_utils.generate import generate
    from lab_utils.metrics import mean_abs_diff

    name = "sd_lora_lab_diagnose"
    _load_checked(pipe, kohya_state(adapter, mapping), name)
    try:
        pipe.set_adapters([name], adapter_weights=[1.0])
        adapted = generate(pipe, prompt or "a picture", seed=seed, steps=10)
        pipe.set_adapters([name], adapter_weights=[0.0])
        base = generate(pipe, prompt or "a picture", seed=seed, steps=10)
    finally:
        pipe.delete_adapters(name)
    return mean_abs_diff(base, adapted)
