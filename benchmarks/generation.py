"""Benchmark: generation with no adapter, with an unfused LoRA, with the LoRA fused; adapter swap.

    python benchmarks/generation.py [--model tiny|sd15-arch|FOLDER] [--steps 30] [--repeats 3]

Two rank-4 adapters (to_q/k/v/out, random nonzero weights: the cost does not depend on the values)
are exported in the diffusers format and loaded with ``lab_utils.adapters.load_lora`` (diffusers'
``load_lora_weights`` underneath). Base = adapters disabled; unfused = one adapter active;
fused = ``pipe.fuse_lora()``; swap = ``pipe.set_adapters(other)``, which switches without
reloading anything. Medians after a warm-up, with a device sync before every clock read.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import median, quiet_loading, report, timed

import lab_utils
from lab_utils.adapters import export_adapter, load_lora


def make_adapter(pipe, path: Path, seed: int) -> Path:
    unet = lab_utils.attach_lora(pipe.unet, rank=4, alpha=4)
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in lab_utils.lora_parameters(unet).items():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
    export_adapter(unet, path, "diffusers")
    lab_utils.remove_lora(pipe.unet)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    quiet_loading()
    pipe = lab_utils.load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    prompt = lab_utils.TRAIN_PROMPT

    def generate() -> None:
        lab_utils.generate(pipe, prompt, seed=0, steps=args.steps, guidance=7.5)

    with tempfile.TemporaryDirectory() as tmp:
        files = {
            name: make_adapter(pipe, Path(tmp) / f"{name}.safetensors", seed)
            for name, seed in (("first", 1), ("second", 2))
        }
        for name, path in files.items():
            load_lora(pipe, path, name)
    pipe.disable_lora()
    base = timed(generate, args.repeats, warmup=1)
    pipe.enable_lora()
    pipe.set_adapters("first")
    unfused = timed(generate, args.repeats, warmup=1)
    pipe.fuse_lora(adapter_names=["first"])
    fused = timed(generate, args.repeats, warmup=1)
    pipe.unfuse_lora()
    names = iter(["second", "first"] * 50)
    swap = timed(lambda: pipe.set_adapters(next(names)), min(20, 4 * args.repeats), warmup=2)
    b, u, f, s = (median(t) for t in (base, unfused, fused, swap))
    rows = [
        ["base (adapters off)", round(b, 3), 1.0],
        ["LoRA unfused", round(u, 3), round(u / b, 3)],
        ["LoRA fused", round(f, 3), round(f / b, 3)],
        ["adapter swap (set_adapters)", round(s, 4), "target < 0.050 s"],
    ]
    return report(
        "generation",
        ["case", "seconds", "vs base"],
        rows,
        {
            "model": args.model,
            "dtype": str(pipe.unet.dtype),
            "steps": args.steps,
            "size": lab_utils.native_size(pipe),
            "base_s": round(b, 4),
            "unfused_s": round(u, 4),
            "fused_s": round(f, 4),
            "unfused_vs_base": round(u / b, 3),
            "fused_vs_base": round(f / b, 3),
            "swap_ms": round(1000 * s, 2),
        },
    )


if __name__ == "__main__":
    main()
