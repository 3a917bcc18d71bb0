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
