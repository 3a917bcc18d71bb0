"""Adapters exported as PEFT, diffusers and kohya files reload (through lab_utils and through
diffusers' own loader) and reproduce the adapted image exactly, with the trained alpha; strict
loading names what does not fit; diagnose_adapter flags the classic broken adapters."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lab_utils
from lab_utils.adapters import diagnose_adapter, export_adapter, load_lora, read_adapter, read_adapter_file
from lab_utils.errors import LabError

PROMPT, STEPS = "a red circle on a blue background", 6


def fresh():
    pipe = lab_utils.load_pipeline("tiny", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe):
    return lab_utils.generate(pipe, PROMPT, seed=0, steps=STEPS)


@pytest.fixture(scope="module", params=[False, True], ids=["lora", "rslora"])
def trained(request, tmp_path_factory):
    """An adapter with alpha ≠ rank (8 vs 4) and nonzero B, its image, and its three files."""
    pipe = fresh()
    unet = lab_utils.attach_lora(pipe.unet, rank=4, alpha=8, use_rslora=request.param)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    adapted = image(pipe)
    with unet.disable_adapter():
        assert lab_utils.mean_abs_diff(adapted, image(pipe)) > 0.3  # the adapter does something
    folder = tmp_path_factory.mktemp("exports")
    files = {
        "peft": export_adapter(unet, folder / "peft", "peft"),
        "diffusers": export_adapter(unet, folder / "diffusers", "diffusers"),
        "kohya": export_adapter(
            unet,
            folder / "sks.safetensors",
            "kohya",
            trigger="sks style",
            steps=30,
            caption=PROMPT,
            epochs=30,
        ),
    }
    return unet, adapted, files


@pytest.mark.parametrize("scheme", ["peft", "diffusers", "kohya"])
def test_every_format_reloads_and_reproduces_the_adapted_image(trained, scheme):
    _, adapted, files = trained
    pipe = fresh()
    load_lora(pipe, files[scheme], "mine")
    assert lab_utils.mean_abs_diff(image(pipe), adapted) == 0.0


@pytest.mark.parametrize("scheme", ["diffusers", "kohya"])
def test_diffusers_own_loader_reproduces_the_image_with_the_trained_alpha(trained, scheme):
    _, adapted, files = trained
    pipe = fresh()
    pipe.load_lora_weights(str(files[scheme]))
    assert lab_utils.mean_abs_diff(image(pipe), adapted) == 0.0


def test_kohya_file_round_trips_exactly_with_alpha_and_header(trained):
    unet, _, files = trained
    config = unet.peft_config["default"]
    read = read_adapter_file(files["kohya"])
    assert read.scheme == "kohya" and len(read.modules) == 56  # to_q/k/v/out in 14 attention layers
    scale = 8 / (4**0.5) if config.use_rslora else 8 / 4
    assert all(read.scale(m) == pytest.approx(scale) for m in read.modules)  # trained alpha, not rank
    peft = {k.removeprefix("base_model.model."): v for k, v in unet.state_dict().items() if "lora_" in k}
    for module in read.modules:
        name = module.removeprefix("lora_unet_")
        original = next(v for k, v in peft.items() if k.replace(".", "_").startswith(name + "_lora_A"))
        assert torch.equal(read.a[module], original)
    with safe_open(str(files["kohya"]), "pt") as handle:
        header = handle.metadata()
    assert header["ss_network_dim"] == "4" and header["ss_base_model_version"] == "sd_lora_lab_miniature"
    assert header["sd_lora_lab_trigger"] == "sks style" and (header["ss_steps"], header["ss_epoch"]) == (
        "30",
        "30",
    )
    assert header["ss_output_name"] == "sks" and header["ss_v2"] == "False"
    tags = json.loads(header["ss_tag_frequency"])["sd_lora_lab"]
    assert tags == {"sks style": 1, PROMPT: 1}  # the trigger word first, then the training caption
    assert "attn2.to_k" in header["sd_lora_lab_targets"]


def test_strict_load_names_an_sdxl_adapter_and_a_rank_mismatch(trained, tmp_path):
    _, _, files = trained
    state = load_file(str(files["kohya"]))
    sdxl = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 2048),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(640, 4),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.alpha": torch.tensor(4.0),
    }
    save_file(sdxl, tmp_path / "sdxl.safetensors")
    with pytest.raises(LabError, match="SDXL adapter, not SD 1.x") as info:
        read_adapter(tmp_path / "sdxl.safetensors", fresh().unet)
    assert "1 of 1 entries unmatched in input_blocks.4" in str(info.value)
    key = next(k for k in state if k.endswith("lora_up.weight"))
    state[key] = torch.zeros(state[key].shape[0], 8)  # the up matrix of another rank
    save_file(state, tmp_path / "mixed.safetensors")
    with pytest.raises(LabError, match=r"does not fit this model: 1 of 56 entries .* shapes"):
        read_adapter(tmp_path / "mixed.safetensors", fresh().unet)
    (tmp_path / "model.bin").write_bytes(b"a pickle")
    with pytest.raises(LabError, match="only .safetensors adapters are read"):
        read_adapter_file(tmp_path / "model.bin")


def test_diagnose_flags_untrained_nan_sdxl_and_missing_alpha(trained, tmp_path):
    _, _, files = trained
    pipe = fresh()
    healthy = diagnose_adapter(files["kohya"], pipe, PROMPT)
    assert healthy.healthy and healthy.ranks == [4] and healthy.pixel_effect > 0.3
    assert healthy.delta_norm > 0 and sum(healthy.targets_by_block.values()) == 56
    state = load_file(str(files["kohya"]))
    zero = {k: (torch.zeros_like(v) if k.endswith("lora_up.weight") else v) for k, v in state.items()}
    save_file(zero, tmp_path / "zero.safetensors")
    untrained = diagnose_adapter(tmp_path / "zero.safetensors", pipe)
    assert any(f.startswith("untrained") for f in untrained.findings) and untrained.pixel_effect == 0.0
    nan = dict(state)
    key = next(k for k in nan if k.endswith("lora_up.weight"))
    nan[key] = torch.full_like(nan[key], float("nan"))
    save_file(nan, tmp_path / "nan.safetensors")
    assert any("NaN" in f for f in diagnose_adapter(tmp_path / "nan.safetensors", pipe).findings)
    no_alpha = {k: v for k, v in state.items() if not k.endswith(".alpha")}
    save_file(no_alpha, tmp_path / "no_alpha.safetensors")
    assert any(
        f.startswith("alpha missing") for f in diagnose_adapter(tmp_path / "no_alpha.safetensors").findings
    )
    sdxl = {k.replace("down_blocks_0_attentions_0", "input_blocks_4_1"): v for k, v in state.items()}
    save_file(sdxl, tmp_path / "sdxl.safetensors")
    mismatch = diagnose_adapter(tmp_path / "sdxl.safetensors", pipe)
    assert any(f.startswith("key mismatch") and "SDXL" in f for f in mismatch.findings)


def test_grader_feedback_summarises_the_saved_adapter_with_diagnose_adapter(pipe, tmp_path):
    from grader.outputs.feedback import adapter_summary

    unet = lab_utils.attach_lora(pipe.unet)  # B = 0: untrained
    folder = lab_utils.save_adapter(unet, tmp_path / "fresh")
    lines = adapter_summary(folder)
    assert lines[0].startswith("- peft adapter: ") and "rank 4, alpha 4, scale 1" in lines[0]
    assert "down_blocks.0" in lines[1]
    assert "untrained: every up/B weight is zero" in lines[-1]
    (folder / "adapter_model.safetensors").write_bytes(b"not safetensors")
    assert adapter_summary(folder)[0].startswith("- could not be read: ")


def test_base_model_version_comes_from_the_unet_shapes():
    """SD 1.x only for SD 1.x's U-Net (the SD 1.5 architecture, built on the meta device), SD 2.x
    and SDXL from their configs (hand-built), the miniature model a value of its own."""
    from types import SimpleNamespace

    from diffusers.configuration_utils import FrozenDict

    from lab_utils.adapters.write import base_model_version
    from lab_utils.sd15 import sd15_unet

    def unet(**config):
        base = dict(block_out_channels=(320, 640, 1280, 1280), in_channels=4, sample_size=64)
        return SimpleNamespace(config=FrozenDict({**base, **config}))

    assert base_model_version(sd15_unet("meta")) == "sd_v1"
    assert base_model_version(unet(cross_attention_dim=1024, sample_size=96)) == "sd_v2_768_v"
    assert base_model_version(unet(cross_attention_dim=1024)) == "sd_v2_512"
    assert (
        base_model_version(unet(cross_attention_dim=2048, addition_embed_type="text_time"))
        == "sdxl_base_v1-0"
    )
    assert base_model_version(fresh().unet) == "sd_lora_lab_miniature"
    assert base_model_version(unet(cross_attention_dim=512, block_out_channels=(32, 64))) == "unknown"
