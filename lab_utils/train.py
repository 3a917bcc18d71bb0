"""The overfit loop on one image + caption (the notebook's step 3, as a tested function)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image

from lab_utils.environment import out_of_memory_hint
from lab_utils.errors import LabError
from lab_utils.lora import lora_parameters


@dataclass
class TrainResult:
    """What the loop measured: the loss per step and each adapter tensor's gradient norm per step."""

    loss_history: list[float] = field(default_factory=list)
    grad_norm_history: list[dict[str, float]] = field(default_factory=list)

    @property
    def last_grad_norms(self) -> dict[str, float]:
        return self.grad_norm_history[-1] if self.grad_norm_history else {}


def encode_image(pipe, image: Image.Image) -> torch.Tensor:
    """(1, 4, H/f, W/f) VAE latents of ``image``, scaled as the U-Net expects (f = 8 for SD 1.5)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0  # (H, W, 3) in [-1, 1]
    pixels = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W)
    pixels = pixels.to(pipe.device, pipe.vae.dtype)
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mode()
    return latents * pipe.vae.config.scaling_factor


def encode_prompt(pipe, prompt: str) -> torch.Tensor:
    """(1, 77, D) text-encoder hidden states for ``prompt`` (D = 768 for SD 1.5)."""
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompt, pipe.device, 1, do_classifier_free_guidance=False)
    return embeds


def training_scheduler(pipe) -> DDPMScheduler:
    """A DDPM scheduler with the pipeline's noise schedule, for ``add_noise`` in training."""
    return DDPMScheduler.from_config(pipe.scheduler.config)


def encode_examples(
    pipe, image: Image.Image | Sequence[Image.Image], prompt: str | Sequence[str], who: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 4, h, w) latents and (N, 77, D) text embeddings of one image and caption, or of a list of
    each, encoded once for a training loop (``who`` names it in the error)."""
    images = [image] if isinstance(image, Image.Image) else list(image)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not images or len(images) != len(prompts):
        raise LabError(
            f"{who} needs one caption per image: got {len(images)} images, {len(prompts)} captions"
        )
    latents = torch.cat([encode_image(pipe, i) for i in images])
    return latents, torch.cat([encode_prompt(pipe, p) for p in prompts])


def noised(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """(noisy latents, the U-Net's target): ``latents`` noised at ``timesteps``, and what the model
    must predict — the noise, or the velocity for a v-prediction model."""
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        return noisy_latents, scheduler.get_velocity(latents, noise, timesteps)
    return noisy_latents, noise


def train_lora(
    pipe,
    unet: torch.nn.Module,
    image: Image.Image | Sequence[Image.Image],
    prompt: str | Sequence[str],
    steps: int = 30,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 1,
) -> TrainResult:
    """Train the LoRA adapters of ``unet`` (already attached to ``pipe.unet``): overfit one
    example, or learn from several (a list of images and one caption each).

    Latents and text embeddings are computed once; each step draws ``batch_size`` examples (always
    the one, for a single example), noise and timesteps, asks the U-Net for the scheduler's target,
    and steps AdamW on the LoRA parameters only.
    """
    latents, text_embeddings = encode_examples(pipe, image, prompt, "train_lora")
    scheduler = training_scheduler(pipe)
    params = [p for p in lora_parameters(unet).values() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    generator = torch.Generator("cpu").manual_seed(seed)
    result = TrainResult()
    unet.train()
    with out_of_memory_hint("training", "the image size (training_example(size=...)) or batch_size"):
        _train_steps(
            unet, scheduler, latents, text_embeddings, optimizer, generator, steps, result, batch_size
        )
    unet.eval()
    return result


def _train_steps(
    unet, scheduler, all_latents, all_embeddings, optimizer, generator, steps, result, batch_size=1
) -> None:
    adapter = lora_parameters(unet)
    names, params = list(adapter), list(adapter.values())
    losses, norms = [], []  # kept on the device: one host sync at the end, none per step
    for _ in range(steps):
        if len(all_latents) == 1:
            latents, text_embeddings = all_latents, all_embeddings
        else:  # a batch of examples, drawn on the CPU like the noise (same on every device)
            index = torch.randint(0, len(all_latents), (batch_size,), generator=generator)
            latents = all_latents[index.to(all_latents.device)]
            text_embeddings = all_embeddings[index.to(all_embeddings.device)]
        # forward: noise the clean latents at a random timestep
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator
        )
        timesteps = timesteps.to(latents.device)
        noisy_latents, target = noised(scheduler, latents, noise, timesteps)
        prediction = unet(noisy_latents, timesteps, encoder_hidden_states=text_embeddings).sample
        loss = F.mse_loss(prediction.float(), target.float())
        # backward and step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(_grad_norms(params))
        optimizer.step()
        losses.append(loss.detach())
    if losses:
        result.loss_history.extend(torch.stack(losses).cpu().tolist())
        for row in torch.stack(norms).cpu().tolist():
            result.grad_norm_history.append(dict(zip(names, row, strict=True)))


def _grad_norms(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each parameter's gradient L2 norm (0 where there is none), as one fp32 tensor on the device."""
    return torch.stack(
        [
            p.grad.detach().float().norm() if p.grad is not None else p.new_zeros((), dtype=torch.float32)
            for p in params
        ]
    )
