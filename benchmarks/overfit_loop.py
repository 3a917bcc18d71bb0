"""Benchmark: the lab's overfit loop against the plain loop, in the same process.

    python benchmarks/overfit_loop.py [--model tiny|sd15-arch|FOLDER] [--steps 20] [--repeats 3]

Plain: the seed lab written from the docs — every step re-encodes the image with the VAE and the
prompt with the text encoder, and reads the loss back (``loss.item()``, a host sync per step).
Lab: ``lab_utils.train_lora`` — latents and text embedding computed once; losses and gradient norms
stay on the device until the loop ends. Both train the same rank-4 adapter on to_q/k/v/out, with
the pipeline's dtype (bf16/fp16 weights on a GPU, LoRA parameters fp32). Each figure is the median
of ``--repeats`` timed runs of ``--steps`` steps after one warm-up run, with a device sync before
every clock read. ``sd15-arch`` builds SD 1.5's architecture from its config (random weights).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import median, quiet_loading, report, timed

import lab_utils


def plain_loop(pipe, unet, image, prompt, steps: int, optimizer) -> None:
    scheduler = lab_utils.training_scheduler(pipe)
    for _ in range(steps):
        latents = lab_utils.encode_image(pipe, image)  # re-encoded every step
        embeddings = lab_utils.encode_prompt(pipe, prompt)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (1,), device=latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        loss = F.mse_loss(
            unet(noisy, timesteps, encoder_hidden_states=embeddings).sample.float(), noise.float()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # the plain loop logs every step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    quiet_loading()
    pipe = lab_utils.load_pipeline(args.model)
    image, prompt = lab_utils.training_example(lab_utils.native_size(pipe))
    unet = lab_utils.attach_lora(pipe.unet, rank=4, alpha=4)
    params = [p for p in unet.parameters() if p.requires_grad]
    plain_optimizer = torch.optim.AdamW(params, lr=1e-4)

    def plain() -> None:
        unet.train()
        plain_loop(pipe, unet, image, prompt, args.steps, plain_optimizer)

    def lab() -> None:
        lab_utils.train_lora(pipe, unet, image, prompt, steps=args.steps, lr=1e-4)

    plain_times = timed(plain, args.repeats, warmup=1)
    lab_times = timed(lab, args.repeats, warmup=1)
    plain_ms = 1000 * median(plain_times) / args.steps
    lab_ms = 1000 * median(lab_times) / args.steps
    rows = [
        ["plain (re-encode + sync every step)", round(plain_ms, 2), round(1000 / plain_ms, 2), 1.0],
        ["lab_utils.train_lora", round(lab_ms, 2), round(1000 / lab_ms, 2), round(plain_ms / lab_ms, 2)],
    ]
    return report(
        "overfit loop",
        ["loop", "ms/step", "steps/s", "speed-up"],
        rows,
        {
            "model": args.model,
            "dtype": str(pipe.unet.dtype),
            "steps": args.steps,
            "repeats": args.repeats,
            "plain_ms_per_step": round(plain_ms, 3),
            "lab_ms_per_step": round(lab_ms, 3),
            "speedup": round(plain_ms / lab_ms, 3),
            "target_speedup": 4.0,
        },
    )


if __name__ == "__main__":
    main()
