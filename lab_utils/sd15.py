"""The SD 1.5 U-Net architecture from its public config — for true parameter counts (on the
``meta`` device, no memory) and for speed checks where no weights are mounted."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

SD15_UNET_CONFIG: dict = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_UNET_PARAMETERS = 859_520_964


def sd15_unet(device: str | torch.device = "meta") -> UNet2DConditionModel:
    """SD 1.5's U-Net with random (or, on ``meta``, no) weights."""
    with torch.device(device):
        return UNet2DConditionModel.from_config(SD15_UNET_CONFIG)


SD15_TEXT_ENCODER_CONFIG: dict = {  # CLIP ViT-L/14's text tower, as in SD 1.5's text_encoder/config.json
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
SD15_TEXT_ENCODER_PARAMETERS = 123_060_480

SD15_VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_VAE_PARAMETERS = 83_653_863

SD15_SCHEDULER_CONFIG: dict = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def sd15_pipeline(device: str | torch.device = "meta", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A StableDiffusionPipeline with SD 1.5's architecture and seeded random weights.

    For speed checks where no weights are mounted: every matrix has SD 1.5's shape, so time and
    memory are SD 1.5's. The same ``seed`` on the same kind of device gives the same weights in
    every process (the grader's verification relies on it). The tokenizer is the built-in model's
    (its ids are valid for SD's vocabulary), padded to SD's 77 tokens.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lab_utils.tiny import TINY_MODEL_DIR

    device = torch.device(device)
    if device.type != "meta":
        torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(SD15_UNET_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER_CONFIG))
        vae = AutoencoderKL.from_config(SD15_VAE_CONFIG)
    tokenizer = CLIPTokenizer.from_pretrained(TINY_MODEL_DIR / "tokenizer", model_max_length=77)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe if device.type == "meta" else pipe.to(dtype=dtype)
