"""Loading models: the built-in tiny model, local folders, and the one-line errors."""

from __future__ import annotations

import json

import layouts
import numpy as np
import pytest
import torch
from helpers import FAST, ROOT

import lab_utils
from lab_utils.tiny import TINY_MODEL_DIR, tiny_model_dir
from lab_utils.tiny.tokenizer import build_tokenizer_files

GUIDANCE = 7.5  # the notebook's


def test_tiny_is_real_sd_classes_on_cpu_fp32(pipe):
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.tokenizer).__name__ == "CLIPTokenizer"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.device.type == "cpu" and pipe.unet.dtype == torch.float32
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    assert lab_utils.native_size(pipe) == 64


def test_tiny_tokenizer_keeps_every_lab_word_whole(pipe):
    """BPE merges by rank, so one word's merges can split another ("g r" from "green" once split
    "background" into six pieces): every word of every caption wording must be a single token."""
    from lab_utils.tiny import world
    from lab_utils.tiny.tokenizer import TINY_WORDS

    assert [pipe.tokenizer.tokenize(w) for w in TINY_WORDS] == [[f"{w}</w>"] for w in TINY_WORDS]
    outlined = world.Attributes("triangle", "green", "pink", "large", "bottom right", outlined=True)
    styled = world.Attributes("star", "yellow", "black", "small", "top left", styled=True)
    for attributes in (outlined, styled):
        for caption in attributes.caption_forms():
            words = caption.replace(",", " ,").split()
            assert pipe.tokenizer.tokenize(caption) == [f"{w}</w>" for w in words], caption
    assert pipe.tokenizer.tokenize("zebra")  # any text still tokenizes (bytes)


def test_shipped_tokenizer_files_match_their_builder():
    vocab, merges = build_tokenizer_files()
    assert json.loads((TINY_MODEL_DIR / "tokenizer" / "vocab.json").read_text()) == vocab
    assert (TINY_MODEL_DIR / "tokenizer" / "merges.txt").read_text().splitlines()[1:] == merges


def test_tiny_ships_trained_weights_that_draw_the_world(pipe):
    """The package's own fp16 weights (≤ 20 MB), and they follow prompts on held-out combinations:
    a quick sample here; python -m lab_utils.tiny.train measured the full figures (training.json)."""
    weights = sum(p.stat().st_size for p in TINY_MODEL_DIR.rglob("*.safetensors"))
    assert tiny_model_dir() == TINY_MODEL_DIR and 5e6 < weights <= 20e6
    record = json.loads((TINY_MODEL_DIR / "training.json").read_text())
    assert {"settings", "metrics", "versions", "parameters"} <= set(record)
    recorded = record["metrics"]["held_out_accuracy"]  # issue 6's targets, on 96 held-out prompts
    assert record["settings"]["eval_prompts"] == 96
    run, seconds = record, 0  # the whole run, every resumed stage included, took under 2 hours here
    while run:
        seconds += run["metrics"]["total_seconds"]
        run = run["metrics"].get("resumed_from")
    assert seconds <= 2 * 3600, seconds
    assert recorded["background"] >= 90 and recorded["colour"] >= 85 and recorded["shape"] >= 70, recorded
    record_doc = (ROOT / "docs" / "tiny-model.md").read_text()
    row = " | ".join(
        f"{recorded[k]:g}%" for k in ("background", "colour", "shape", "size", "position", "style")
    )
    assert f"| {row} |" in record_doc, row  # docs/tiny-model.md shows the shipped model's figures
    from lab_utils.tiny import world

    _, held_out = world.split()
    hits = {"background": 0, "colour": 0}
    prompts = [world.sample(i, held_out) for i in range(8)]
    for i, attributes in enumerate(prompts):
        image = lab_utils.generate(pipe, attributes.caption(), seed=i, steps=20, guidance=GUIDANCE)
        seen = world.adherence(image, attributes)
        for name in hits:
            hits[name] += seen[name]
    assert hits["background"] >= 6 and hits["colour"] >= 6, hits  # random weights: ~1 in 6 each


def test_tiny_draws_its_outline_style_on_held_out_pairs_and_never_the_sks_rim(pipe):
    """The base model's own style: "… in outline style" on colour–shape pairs it never saw draws a
    black rim (the slot an adapter's "sks" later fills means something), and never the white one."""
    from lab_utils.tiny import world

    _, held_out = world.split()
    asked = [a for a in held_out[::37][:12] if a.background != "black"][:4]
    readings = []
    for i, attributes in enumerate(asked):
        outlined = world.Attributes(**{**attributes.to_dict(), "outlined": True})
        image = lab_utils.generate(pipe, outlined.caption(), seed=i, steps=20, guidance=3.0)
        readings.append(world.read_image(image))
    assert sum(r.outline > 0.05 for r in readings) >= 3, readings
    assert all(r.style <= world.STYLE_THRESHOLD for r in readings), readings


def test_a_local_diffusers_folder_loads_like_sd15_on_a_pod(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "sd")
    again = lab_utils.load_pipeline(str(tmp_path / "sd"), device="cpu")
    again.set_progress_bar_config(disable=True)
    a = lab_utils.generate(pipe, "a blue square", seed=1, **FAST)
    b = lab_utils.generate(again, "a blue square", seed=1, **FAST)
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("/nonexistent/sd15", "model '/nonexistent/sd15' not found"),
        ("./models/sd15", "model './models/sd15' not found"),
        ("someone/some-model", "cannot be downloaded offline (HF_HUB_OFFLINE=1)"),
    ],
)
def test_bad_models_are_one_clear_line(model, message):
    with pytest.raises(lab_utils.LabError) as info:
        lab_utils.load_pipeline(model)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_folder_without_model_index_and_file_without_config(tmp_path):
    with pytest.raises(lab_utils.LabError, match="has no model_index.json"):
        lab_utils.load_pipeline(str(tmp_path))
    checkpoint = tmp_path / "sd15.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(lab_utils.LabError, match=r"is empty \(0 bytes\)"):
        lab_utils.load_pipeline(str(checkpoint))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(lab_utils.LabError, match="not a .safetensors or .ckpt"):
        lab_utils.load_pipeline(str(tmp_path / "notes.txt"))


# --- model folders as pods have them (tests/layouts.py builds each from the built-in weights) -------

LAYOUTS = {
    "fp16 variant only": (layouts.fp16_only, 1e-3),
    ".bin only": (layouts.bin_only, 0.0),
    "safetensors and fp16 mixed": (layouts.mixed, 1e-3),
    "classic: CLIPFeatureExtractor, safety checker, PNDM": (layouts.classic, 0.0),
    "classic: CLIPImageProcessor": (lambda t: layouts.classic(t, "CLIPImageProcessor"), 0.0),
    "classic, feature_extractor/ not downloaded": (lambda t: layouts.classic(t, its_folder=False), 0.0),
    "single file (LDM keys) beside its configs": (lambda t: layouts.single_file(t, True).parent, 0.0),
    "single file (LDM keys) alone, given as its path": (lambda t: layouts.single_file(t, False), 0.0),
    "single file (LDM keys) alone, given as its folder": (
        lambda t: layouts.single_file(t, False).parent,
        0.0,
    ),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_pod_folders_load_to_the_same_weights_without_library_noise(layout, pipe, tmp_path, capfd):
    """Every layout loads — the single files through diffusers' own LDM conversion — to exactly the
    built-in weights (fp16 files within their rounding), and loading prints nothing."""
    build, tolerance = LAYOUTS[layout]
    model = build(tmp_path / "model")
    capfd.readouterr()
    loaded = lab_utils.load_pipeline(str(model), device="cpu")
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    for name in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(loaded, name).state_dict(), getattr(pipe, name).state_dict()
        assert set(mine) == set(theirs), name
        assert all(mine[k].dtype == torch.float32 for k in mine), name
        worst = max((mine[k] - theirs[k]).abs().max().item() for k in mine)
        assert worst <= tolerance * max(1.0, max(t.abs().max().item() for t in theirs.values())), (
            name,
            worst,
        )
    spec = lab_utils.resolve_model(str(model))
    assert spec.variant == ("fp16" if "fp16" in layout else None)
    assert spec.kind == ("single_file" if "single" in layout else "folder")


def _sd1_checkpoint(folder, name="v1-5-pruned-emaonly.safetensors"):
    """A file with the original SD 1.x U-Net's first key and shape: what a lone v1-5 file starts with."""
    from safetensors.torch import save_file

    save_file(
        {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(folder / name)
    )
    return folder / name


def _empty(folder):
    (folder / "v1-5.safetensors").write_bytes(b"")
    return folder / "v1-5.safetensors"


def _not_safetensors(folder):
    (folder / "v1-5.safetensors").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    return folder / "v1-5.safetensors"


def _an_adapter(folder):
    from safetensors.torch import save_file

    save_file(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)},
        str(folder / "lora.safetensors"),
    )
    return folder / "lora.safetensors"


def _two_checkpoints(folder):
    _sd1_checkpoint(folder, "a.safetensors")
    _sd1_checkpoint(folder, "b.safetensors")
    return folder


def _no_text_encoder_weights(folder):
    return layouts.folder(folder / "sd", {"unet": ("safetensors",), "vae": ("fp16",)})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            _no_text_encoder_weights,
            "text_encoder/ has no weights (model.safetensors, .bin or .fp16.safetensors)",
        ),
        (_sd1_checkpoint, "has no configs or tokenizer beside it, and offline they cannot be fetched"),
        (_empty, "is empty (0 bytes): give the complete file"),
        (_not_safetensors, "is not a readable safetensors file (empty, truncated or another format)"),
        (_an_adapter, "is not a Stable Diffusion checkpoint (no model.diffusion_model.* keys)"),
        (_two_checkpoints, "holds 2 checkpoints (a.safetensors, b.safetensors): give the one to use"),
    ],
    ids=[
        "component without weights",
        "lone SD 1.x file",
        "empty",
        "not safetensors",
        "an adapter",
        "two checkpoints",
    ],
)
def test_a_model_that_cannot_load_is_one_line_naming_what_is_missing(build, message, tmp_path):
    model = build(tmp_path)
    with pytest.raises(lab_utils.LabError) as info:
        lab_utils.load_pipeline(str(model), device="cpu")
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_truncated_weight_file_is_one_line(tmp_path):
    model = layouts.fp16_only(tmp_path / "m")
    weights = model / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(lab_utils.LabError) as info:
        lab_utils.load_pipeline(str(model), device="cpu")
    assert str(info.value).startswith(f"could not load model '{model}': ") and "\n" not in str(info.value)


def test_lab_error_renders_as_one_line_in_ipython():
    assert lab_utils.LabError("model 'x' not found")._render_traceback_() == ["LabError: model 'x' not found"]


def test_device_and_dtype_defaults_on_this_machine():
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectation")
    assert lab_utils.default_device().type in {"cpu", "mps"}
    assert lab_utils.default_dtype(torch.device("cpu")) == torch.float32
