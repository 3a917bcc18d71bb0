"""Data-parallel LoRA training across processes, one command:

    accelerate launch --multi_gpu --num_processes N -m lab_utils.distributed --steps S --out DIR
    python -m lab_utils.distributed --steps S --out DIR            # one process, the same global batch

On a CPU machine add ``--cpu`` after the module name: accelerate's launcher (torchrun underneath)
starts N processes that join one gloo group; on a pod each process takes one GPU and NCCL. Every
process trains rank-R LoRA on its shard of the same global batch of the style set
(:func:`lab_utils.style_examples`: different shapes and colours in sks style, plus plain drawings),
and the processes' adapters are checked to be identical. Rank 0 writes ``DIR/adapter/`` (PEFT's
folder: adapter_config.json + adapter_model.safetensors) and ``DIR/report.json``: the world size, the
loss per step, steps per second, the bytes the gradient all-reduces carried per step (measured by a
DDP communication hook: only the LoRA gradients travel) beside what the full U-Net's gradients would
be (computed from its parameter count, and SD 1.5's from the meta-device U-Net).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lab_utils.errors import LabError

FP32_BYTES = 4  # gradients are all-reduced in the parameters' dtype: the LoRA weights stay fp32


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # a bad option is one line, not argparse's usage block
        self.exit(2, f"error: {message} (python -m lab_utils.distributed --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m lab_utils.distributed",
        description="Data-parallel LoRA training of the style set (accelerate launch for N processes).",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for adapter/ and report.json")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    parser.add_argument("--batch", type=int, default=8, help="global batch per optimizer step (default 8)")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (alpha = rank; default 4)")
    parser.add_argument("--images", type=int, default=8, help="styled drawings in the set (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="the data, noise and adapter seed (default 0)")
    parser.add_argument("--model", default=None, help="a model folder, 'tiny' or 'sd15-arch' (default: tiny)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    parser.add_argument(
        "--mixed-precision",
        choices=["auto", "no", "bf16", "fp16"],
        default="auto",
        help="autocast for the forward pass; LoRA weights stay fp32 (auto: no on CPU, bf16 on a GPU)",
    )
    parser.add_argument("--cpu", action="store_true", help="train on the CPU (gloo) even with a GPU")
    return parser


def _check(args: argparse.Namespace) -> None:
    for name in ("steps", "batch", "grad_accum", "rank", "images"):
        if getattr(args, name) < 1:
            raise LabError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if not args.lr > 0:
        raise LabError(f"--lr must be positive (got {args.lr})")
    if args.out.exists() and not args.out.is_dir():
        raise LabError(f"--out '{args.out}' is a file: give a folder")


def allreduce_table(unet, ranks=(1, 2, 4, 8, 16, 32, 64), targets: str = "attn") -> list[dict]:
    """Bytes one data-parallel step all-reduces (fp32 gradients): LoRA at each rank beside the full
    U-Net — computed from parameter counts (``unet`` may live on the meta device)."""
    from lab_utils.lora import lora_parameter_count

    full = sum(p.numel() for p in unet.parameters())
    counts = [(f"LoRA rank {r}", lora_parameter_count(unet, r, targets)) for r in ranks]
    counts.append(("full U-Net", full))
    return [{"what": what, "parameters": n, "bytes": n * FP32_BYTES} for what, n in counts]


def ring_allreduce_seconds(nbytes: float, gpus: int, gigabytes_per_second: float) -> float:
    """A ring all-reduce's time from a stated bandwidth (each GPU sends and receives 2(N−1)/N of the
    data) — computed, not measured: latency and overlap with the backward pass are ignored."""
    return 2 * (gpus - 1) / gpus * nbytes / (gigabytes_per_second * 1e9)


def comparison_runs(
    model: str, gpus: int, python: str, accelerate: str, steps: int = 20, batch: int = 8
) -> tuple[list[list[str]], str]:
    """The two runs going_further.ipynb §5 compares — one process, then two on the same global
    batch — where both can run: with two or more GPUs, one GPU per process (NCCL, bf16 autocast);
    otherwise two CPU processes in a gloo group, on the built-in ``tiny`` model unless ``model`` is
    it already (one SD 1.5 training step takes minutes on a CPU). Returns both commands (``--out``
    still to add) and one line saying where they run."""
    from lab_utils.models import resolve_model

    common = ["-m", "lab_utils.distributed", "--steps", str(steps), "--batch", str(batch)]
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--dynamo_backend", "no"]  # --multi_gpu: torchrun's launcher, on GPUs and CPUs alike
    if gpus >= 2:
        run = [*common, "--model", model]
        return [
            [python, *run],
            [*launch, *run],
        ], f"on GPUs: one process on 1 GPU, then 2 processes on 2 GPUs ({model})"
    tiny = resolve_model(model).kind == "tiny"
    run = [*common, "--cpu", "--model", model if tiny else "tiny"]
    where = "on this machine's CPU: 1 process, then 2 processes in one gloo group"
    if not tiny:
        where += f" — with the built-in tiny model, not {model}: an SD 1.5 step on a CPU takes minutes"
    return [[python, *run], [*launch, "--mixed_precision", "no", *run]], where


def run(args: argparse.Namespace) -> dict:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    import lab_utils
    from lab_utils.accelerated import check_split, default_mixed_precision, train_lora_accelerated
    from lab_utils.files import atomic_path

    precision = args.mixed_precision
    if precision == "auto":
        precision = "no" if args.cpu else default_mixed_precision()
    accelerator = Accelerator(
        cpu=args.cpu, mixed_precision=precision, gradient_accumulation_steps=args.grad_accum
    )
    check_split(args.batch, accelerator.num_processes, args.grad_accum)  # before loading anything
    # fp32 weights without mixed precision; with it the base may be half (the LoRA weights stay fp32)
    dtype = torch.float32 if precision == "no" else None
    pipe = lab_utils.load_pipeline(
        args.model or lab_utils.model_from_env(), device=accelerator.device, dtype=dtype
    )
    pipe.set_progress_bar_config(disable=True)
    size = args.size or lab_utils.native_size(pipe)
    images, prompts = lab_utils.style_examples(count=args.images, size=size, seed=args.seed)
    (full,) = allreduce_table(pipe.unet, ranks=())  # before the adapter is attached
    set_seed(args.seed)  # the same initial adapter in every process (DDP also broadcasts rank 0's)
    unet = lab_utils.attach_lora(pipe.unet, rank=args.rank, alpha=args.rank)
    lora = sum(p.numel() for p in lab_utils.lora_parameters(unet).values())
    result = train_lora_accelerated(
        pipe, unet, images, prompts, steps=args.steps, lr=args.lr, seed=args.seed,
        global_batch=args.batch, accelerator=accelerator,
    )  # fmt: skip
    from lab_utils.sd15 import sd15_unet

    sd15_lora, sd15_full = allreduce_table(sd15_unet(), ranks=(args.rank,))  # meta device: counts only
    report = {
        "world_size": result.world_size,
        "backend": result.backend,
        "device": result.device,
        "mixed_precision": result.mixed_precision,
        "model": args.model or lab_utils.model_from_env(),
        "steps": result.steps,
        "global_batch": result.global_batch,
        "per_process_batch": result.per_process_batch,
        "gradient_accumulation_steps": result.gradient_accumulation_steps,
        "lr": args.lr,
        "rank": args.rank,
        "seed": args.seed,
        "loss": result.loss_history,
        "seconds": round(result.seconds, 3),
        "steps_per_second": round(result.steps_per_second, 3),
        "allreduce_bytes_per_step": result.allreduce_bytes_per_step,
        "allreduce_calls_per_step": result.allreduce_calls / result.steps if result.steps else 0,
        "allreduce_bytes_per_step_is": "measured: the bytes DDP's gradient all-reduces carried (a comm hook)",
        "lora_parameters": lora,
        "full_unet_parameters": full["parameters"],
        "full_unet_allreduce_bytes_per_step": full["bytes"],
        "full_unet_allreduce_bytes_per_step_is": "computed: every U-Net parameter's fp32 gradient",
        "sd15": {
            "is": "computed from SD 1.5's U-Net on the meta device: fp32 gradients per step",
            "lora_parameters": sd15_lora["parameters"],
            "lora_allreduce_bytes_per_step": sd15_lora["bytes"],
            "full_unet_parameters": sd15_full["parameters"],
            "full_unet_allreduce_bytes_per_step": sd15_full["bytes"],
        },
        "adapters_identical_across_processes": True,  # asserted by train_lora_accelerated
        "versions": {"torch": torch.__version__},
    }
    if accelerator.is_main_process:
        args.out.mkdir(parents=True, exist_ok=True)
        lab_utils.save_adapter(unet, args.out / "adapter")
        with atomic_path(args.out / "report.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check(args)
        report = run(args)
    except LabError as error:
        if os.environ.get("RANK", "0") == "0":  # one line, from one process
            print(f"error: {error}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":
        losses = report["loss"]
        print(
            f"{report['world_size']} process(es), {report['steps']} steps: "
            f"loss {losses[0]:.4f} → {losses[-1]:.4f}, {report['steps_per_second']:.2f} steps/s, "
            f"all-reduced {report['allreduce_bytes_per_step']:,.0f} bytes/step "
            f"(full U-Net: {report['full_unet_allreduce_bytes_per_step']:,}) → {args.out}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
