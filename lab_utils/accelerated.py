"""The LoRA training loop through 🤗 accelerate: device placement, mixed precision, gradient
accumulation and data parallelism from one ``Accelerator``.

One process or many, the loop draws the same *global* batch at every step — its examples, noise and
timesteps from one CPU generator seeded alike in every process — and each process trains on its own
contiguous shard of it. DistributedDataParallel then all-reduces (averages) the gradients of the
trainable tensors only — the LoRA adapter's — so N processes take the step one process takes on the
whole batch, up to the order of floating-point sums. The bytes each all-reduce carried are counted
by a DDP communication hook (PyTorch's public hook API): measured, not computed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed
import torch.nn.functional as F
from PIL import Image

from lab_utils.errors import LabError
from lab_utils.lora import lora_parameters
from lab_utils.train import encode_examples, noised, training_scheduler


@dataclass
class AcceleratedResult:
    """What the loop measured. ``loss_history``: the global batch's mean loss per optimizer step
    (averaged over processes); ``allreduce_bytes``: every byte DDP's gradient all-reduces carried."""

    world_size: int
    global_batch: int
    per_process_batch: int  # per micro-step
    gradient_accumulation_steps: int
    mixed_precision: str
    device: str
    backend: str | None
    loss_history: list[float] = field(default_factory=list)
    allreduce_bytes: int = 0
    allreduce_calls: int = 0
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.loss_history)

    @property
    def allreduce_bytes_per_step(self) -> float:
        return self.allreduce_bytes / self.steps if self.steps else 0.0

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0


def default_mixed_precision() -> str:
    """ "no" on the CPU; on a GPU bf16 where it is supported (Ampere and later), else fp16."""
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


class _Counter:
    """The comm hook's state: bytes and calls of the gradient all-reduces."""

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0


def _counting_allreduce(counter: _Counter, bucket):
    """DDP's default all-reduce of one gradient bucket, counted on the way."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    buffer = bucket.buffer()
    counter.bytes += buffer.numel() * buffer.element_size()
    counter.calls += 1
    return default_hooks.allreduce_hook(None, bucket)  # None: the default process group


def check_split(batch: int, world: int, accumulation: int) -> None:
    """A global batch must split evenly into ``world`` processes × ``accumulation`` micro-steps."""
    if batch < 1 or batch % (world * accumulation):
        raise LabError(
            f"--batch {batch} cannot be split into {world} processes × {accumulation} accumulation steps: "
            f"use a multiple of {world * accumulation}"
        )


def train_lora_accelerated(
    pipe,
    unet: torch.nn.Module,
    images: Image.Image | Sequence[Image.Image],
    prompts: str | Sequence[str],
    steps: int = 30,
    lr: float = 1e-3,
    seed: int = 0,
    global_batch: int | None = None,
    accelerator=None,
    mixed_precision: str | None = None,
    gradient_accumulation_steps: int = 1,
) -> AcceleratedResult:
    """Train the LoRA adapters of ``unet`` (attached to ``pipe.unet``, in place) with an
    ``accelerate.Accelerator`` — the one given, or one made here with ``mixed_precision`` (default:
    :func:`default_mixed_precision`) and ``gradient_accumulation_steps``. Launched with
    ``accelerate launch`` over N processes it trains data-parallel; alone it is one process.

    Each optimizer step sees ``global_batch`` examples (default: every image once a step, drawn at
    random with replacement when there are more images than the batch), split into
    ``gradient_accumulation_steps`` micro-steps and, within each, into N equal shards. The LoRA
    weights stay fp32 under mixed precision (autocast runs the forward pass in bf16/fp16).

    Raises:
        LabError: a global batch that N processes × accumulation steps do not divide (checked after
            encoding: call :func:`check_split` first to fail before), or not one caption per image.
    """
    from accelerate import Accelerator

    if accelerator is None:
        accelerator = Accelerator(
            mixed_precision=mixed_precision or default_mixed_precision(),
            gradient_accumulation_steps=gradient_accumulation_steps,
        )
    world, rank = accelerator.num_processes, accelerator.process_index
    accumulation = accelerator.gradient_accumulation_steps
    # data: encoded once, every example in every process (the shards are drawn per step)
    pipe.to(accelerator.device)
    all_latents, all_embeddings = encode_examples(pipe, images, prompts, "train_lora_accelerated")
    all_latents, all_embeddings = all_latents.float(), all_embeddings.float()
    count = len(all_latents)
    batch = global_batch or count
    check_split(batch, world, accumulation)
    micro = batch // accumulation  # examples per micro-step, all processes together
    shard = micro // world  # this process's share of it
    result = AcceleratedResult(
        world_size=world,
        global_batch=batch,
        per_process_batch=shard,
        gradient_accumulation_steps=accumulation,
        mixed_precision=str(accelerator.mixed_precision),
        device=str(accelerator.device),
        backend=torch.distributed.get_backend() if world > 1 else None,
    )
    scheduler = training_scheduler(pipe)
    params = [p for p in lora_parameters(unet).values() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model, optimizer = accelerator.prepare(unet, optimizer)
    counter = _Counter()
    if world > 1:  # DDP: only the trainable (LoRA) tensors' gradients are in its buckets
        model.register_comm_hook(counter, _counting_allreduce)
    generator = torch.Generator("cpu").manual_seed(seed)  # the same draws in every process
    losses = []
    model.train()
    started = time.perf_counter()
    for _ in range(steps):
        # the global batch: examples, noise and timesteps, drawn alike in every process
        if count == batch:
            every = torch.arange(batch)
        else:
            every = torch.randint(0, count, (batch,), generator=generator)
        every_noise = torch.randn((batch, *all_latents.shape[1:]), generator=generator)
        every_t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        step_loss = torch.zeros((), device=accelerator.device)
        for micro_step in range(accumulation):
            # this micro-step's slice of the batch, then this process's shard of the slice
            mine = slice(micro_step * micro + rank * shard, micro_step * micro + (rank + 1) * shard)
            index = every[mine].to(all_latents.device)
            latents = all_latents[index]
            noise = every_noise[mine].to(latents)
            timesteps = every_t[mine].to(latents.device)
            noisy_latents, target = noised(scheduler, latents, noise, timesteps)
            with accelerator.accumulate(model):  # prepare() made the forward autocast under mixed precision
                embeddings = all_embeddings[index]
                prediction = model(noisy_latents, timesteps, encoder_hidden_states=embeddings).sample
                loss = F.mse_loss(prediction.float(), target.float())
                accelerator.backward(loss)  # scaled by 1/accumulation; DDP all-reduces on the last
                optimizer.step()  # accelerate steps only when the gradients were synchronised
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach() / accumulation
        losses.append(accelerator.reduce(step_loss, reduction="mean"))  # 4 bytes: not a gradient
    result.seconds = time.perf_counter() - started
    model.eval()
    result.loss_history = torch.stack(losses).cpu().tolist() if losses else []
    result.allreduce_bytes, result.allreduce_calls = counter.bytes, counter.calls
    _assert_identical_across_processes(accelerator, unet)
    return result


def _assert_identical_across_processes(accelerator, unet: torch.nn.Module) -> None:
    """Every process must hold the very same adapter after training (DDP's promise, checked)."""
    if accelerator.num_processes == 1:
        return
    flat = torch.cat([p.detach().float().flatten() for p in lora_parameters(unet).values()])
    gathered = accelerator.gather(flat.to(accelerator.device).unsqueeze(0))  # (world, n)
    spread = (gathered - gathered[0]).abs().max().item()
    if spread != 0.0:
        raise LabError(f"the processes' adapters differ after training (max |difference| {spread:.3g})")
