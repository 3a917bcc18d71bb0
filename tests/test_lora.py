"""LoRA counts, presets and attaching, against SD 1.5's real architecture and PEFT itself."""

from __future__ import annotations

import pytest
import torch

import lab_utils
from lab_utils.sd15 import SD15_UNET_PARAMETERS, sd15_unet


@pytest.fixture(scope="module")
def sd15():
    return sd15_unet("meta")


def test_sd15_unet_has_the_true_parameter_count(sd15):
    assert sum(p.numel() for p in sd15.parameters()) == SD15_UNET_PARAMETERS == 859_520_964


@pytest.mark.parametrize(
    ("rank", "targets", "expected"),
    [
        (4, "attn", 797_184),
        (4, ["to_q", "to_k", "to_v", "to_out.0"], 797_184),
        (4, "cross", 397_824),
        (4, "self", 399_360),
        (8, "attn", 1_594_368),
    ],
)
def test_lora_parameter_count_on_sd15(sd15, rank, targets, expected):
    assert lab_utils.lora_parameter_count(sd15, rank, targets) == expected


def test_sd15_attention_modules_split_evenly(sd15):
    names = lab_utils.target_module_names(sd15, "attn")
    assert len(names) == 4 * 32  # 16 transformer blocks × (attn1 + attn2) × 4 projections
    assert set(names) == set(lab_utils.target_module_names(sd15, "cross")) | set(
        lab_utils.target_module_names(sd15, "self")
    )


@pytest.mark.parametrize("targets", ["attn", "cross", "self", "full", ["to_q", "to_v"]])
@pytest.mark.parametrize("rank", [1, 4])
def test_count_matches_what_peft_attaches(pipe, targets, rank):
    expected = lab_utils.lora_parameter_count(pipe.unet, rank, targets)
    unet = lab_utils.attach_lora(pipe.unet, rank=rank, alpha=rank, targets=targets)
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    assert trainable == expected > 0
    assert set(lab_utils.lora_parameters(unet)) == {n for n, p in unet.named_parameters() if p.requires_grad}


def test_full_preset_adds_feed_forward_and_resnet_convs(pipe):
    names = lab_utils.target_module_names(pipe.unet, "full")
    assert any(n.endswith("ff.net.2") for n in names)
    assert any(n.endswith("conv1") and "resnets" in n for n in names)
    assert lab_utils.lora_parameter_count(pipe.unet, 4, "full") > lab_utils.lora_parameter_count(
        pipe.unet, 4, "attn"
    )


def test_unknown_preset_and_bad_rank_are_clear_errors(pipe):
    with pytest.raises(lab_utils.LabError, match="targets='attention' is not a preset"):
        lab_utils.lora_parameter_count(pipe.unet, 4, "attention")
    with pytest.raises(lab_utils.LabError, match="rank=0"):
        lab_utils.attach_lora(pipe.unet, rank=0)


def test_attaching_twice_does_not_stack(pipe):
    lab_utils.attach_lora(pipe.unet)
    with pytest.raises(lab_utils.LabError, match="already has LoRA layers"):
        lab_utils.attach_lora(pipe.unet)


def test_only_lora_parameters_are_trainable(pipe):
    unet = lab_utils.attach_lora(pipe.unet)
    frozen = [n for n, p in unet.named_parameters() if p.requires_grad and "lora_" not in n]
    assert frozen == []
    assert all(not p.any() for n, p in unet.named_parameters() if "lora_B" in n)  # B starts at zero
    assert all(p.dtype == torch.float32 for p in lab_utils.lora_parameters(unet).values())
