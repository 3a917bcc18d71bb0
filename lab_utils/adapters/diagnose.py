"""What an adapter file holds and what is wrong with it, in words: scheme, ranks, alphas, scales,
targets by block, the size of the update, and findings (untrained, NaN, alpha missing, key mismatch),
with a pixel smoke test when a pipeline is given."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import torch

from lab_utils.adapters.load import (
    AdapterFile,
    diagnose_mismatch,
    grouped,
    kohya_state,
    load_checked,
    match_modules,
    read_adapter_file,
)
from lab_utils.adapters.schemes import block


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
    blocks = Counter(block(m) for m in modules)
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
    from lab_utils.generation import generate
    from lab_utils.metrics import mean_abs_diff

    name = "sd_lora_lab_diagnose"
    load_checked(pipe, kohya_state(adapter, mapping), name)
    try:
        pipe.set_adapters([name], adapter_weights=[1.0])
        adapted = generate(pipe, prompt or "a picture", seed=seed, steps=10)
        pipe.set_adapters([name], adapter_weights=[0.0])
        base = generate(pipe, prompt or "a picture", seed=seed, steps=10)
    finally:
        pipe.delete_adapters(name)
    return mean_abs_diff(base, adapted)
