"""Step 3: one forward/backward of the grader's own on the lab's training example, through the
learner's adapter: every lora_A and lora_B tensor must get a finite, nonzero gradient. (lora_B
starts at zero, so lora_A only gets a gradient once training has moved lora_B.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grader.types import Check, CheckResult

if TYPE_CHECKING:
    from grader.checks.context import Context
    from grader.config import CheckSettings


def run(context: Context, settings: CheckSettings) -> CheckResult:
    import torch
    import torch.nn.functional as F

    import lab_utils

    result = CHECK.result(measured="none", expected="all", value=0.0)
    peft_unet, pipe = context.peft_unet, context.pipe
    if peft_unet is None:
        return result.fail("no_adapter", f"no adapter to differentiate ({context.missing_why})")
    lora = lab_utils.lora_parameters(peft_unet)
    weights_finite = all(torch.isfinite(p).all() for p in lora.values())
    b_all_zero = all(not p.detach().any() for n, p in lora.items() if "lora_B" in n)
    for p in lora.values():
        p.requires_grad_(True)
        p.grad = None
    image, prompt = lab_utils.training_example(lab_utils.native_size(pipe))
    latents = lab_utils.encode_image(pipe, image)
    embeddings = lab_utils.encode_prompt(pipe, prompt)
    scheduler = lab_utils.training_scheduler(pipe)
    noise = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(0)).to(latents)
    timesteps = torch.tensor([scheduler.config.num_train_timesteps // 2], device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = peft_unet(noisy, timesteps, encoder_hidden_states=embeddings).sample
    F.mse_loss(prediction.float(), noise.float()).backward()
    nonzero = sum(
        1 for p in lora.values() if p.grad is not None and torch.isfinite(p.grad).all() and p.grad.any()
    )
    result.measured, result.expected, result.value = (
        f"{nonzero}/{len(lora)}",
        f"{len(lora)}/{len(lora)}",
        float(nonzero),
    )
    for p in lora.values():
        p.grad = None
    if nonzero == len(lora) and len(lora) > 0 and weights_finite:
        result.passed = True
        return result
    if not weights_finite:
        return result.fail(
            "not_finite",
            "the adapter weights contain NaN or inf: training diverged (lower the learning rate)",
        )
    if b_all_zero:
        return result.fail(
            "never_updated",
            "every lora_B weight is still zero, so the adapter was never updated: the learning rate "
            "is 0, the LoRA parameters are frozen, or the optimizer was not given them "
            "(AdamW([p for p in unet.parameters() if p.requires_grad], ...))",
        )
    return result.fail(
        "disconnected", "some adapter tensors get no gradient: part of the adapter is frozen or disconnected"
    )


CHECK = Check(
    name="adapter_gradients",
    title="adapter gradients nonzero",
    step=3,
    run=run,
    causes={
        "no_adapter": "no adapter to differentiate",
        "not_finite": "NaN or inf in the adapter weights (training diverged)",
        "never_updated": "every lora_B weight is still zero (learning rate 0, frozen, not in the optimizer)",
        "disconnected": "part of the adapter is frozen or disconnected",
    },
)
