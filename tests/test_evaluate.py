"""lab_utils.evaluate: the validation trap as numbers — on the trained built-in model, and with a
local CLIP folder for CLIP score and KID."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import FAST

import lab_utils
from lab_utils.errors import LabError
from lab_utils.evaluation import evaluate, held_out_prompts
from lab_utils.tiny import world


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A small random CLIPModel saved as a local folder (config, weights, tokenizer, processor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from lab_utils.tiny import TINY_MODEL_DIR

    folder = tmp_path_factory.mktemp("clip")
    tokenizer = CLIPTokenizer.from_pretrained(TINY_MODEL_DIR / "tokenizer", model_max_length=77)
    text = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return folder


def test_held_out_prompts_are_world_captions_of_held_out_pairs():
    for styled in (True, False):
        for prompt in held_out_prompts(4, styled=styled):
            attributes = world.parse_caption(prompt)
            assert attributes is not None and attributes.styled == styled
            assert (attributes.colour, attributes.shape) in world.HELD_OUT_PAIRS


def test_train_lora_needs_one_caption_per_image(pipe):
    unet = lab_utils.attach_lora(pipe.unet)
    images, captions = lab_utils.style_examples(3)
    with pytest.raises(LabError, match="one caption per image: got 3 images, 2 captions"):
        lab_utils.train_lora(pipe, unet, images, captions[:2], steps=1)


def test_clip_score_kid_and_notes_with_a_local_clip_folder(pipe, clip_folder, tmp_path):
    unet = lab_utils.attach_lora(pipe.unet)
    image, prompt = lab_utils.training_example(64)
    lab_utils.train_lora(pipe, unet, image, prompt, steps=5, lr=1e-2)
    for i in range(4):
        world.draw(world.sample(i, styled=True), seed=i).save(tmp_path / f"real{i}.png")
    result = evaluate(
        pipe,
        image,
        prompt,
        held_out=["a photo of a dog in sks style"],
        seeds=(0, 1),
        clip_model=clip_folder,
        reference=tmp_path,
        **FAST,
    )
    training, held = result.groups
    assert (training.samples, held.samples) == (2, 2)
    assert held.style is None and held.accuracy is None  # not a world caption: no checker
    for group in result.groups:
        assert group.clip_score is not None and all(0 <= s <= 100 for s in group.clip_score)
        assert group.kid is not None and all(map(torch.isfinite, map(torch.tensor, group.kid[1])))
    assert "KID on CLIP image features against 4 reference images" in result.notes
    assert result.wired == (training.pixel_change > 0.5)
    assert result.generalizes is not None  # CLIP score is held-out evidence
    assert "CLIP score" in result.generalizes_evidence
    text = str(result)
    assert "CLIP score" in text and "KID vs reference" in text and text.splitlines()[-2].startswith("wired: ")
    assert "<table>" in result._repr_html_()


def test_without_clip_a_non_world_prompt_gives_no_generalisation_verdict(pipe):
    unet = lab_utils.attach_lora(pipe.unet)
    image, _ = lab_utils.training_example(64)
    result = evaluate(pipe, image, "a photo of a cat", seeds=(0,), **FAST)
    assert unet is not None and len(result.groups) == 1
    assert result.generalizes is None and "no held-out prompts" in result.generalizes_evidence
    assert result.wired is False and result.groups[0].pixel_change == 0.0  # B = 0: nothing changed
    assert "not attached, not trained, or too weak" in result.verdicts()[0]


def test_bad_clip_and_reference_folders_are_one_line_errors(pipe, clip_folder, tmp_path):
    image, prompt = lab_utils.training_example(64)
    with pytest.raises(LabError, match="clip_model='.*' is not a local CLIPModel folder"):
        evaluate(pipe, image, prompt, held_out=[], clip_model=tmp_path)
    with pytest.raises(LabError, match="needs a folder with at least 2 PNG/JPEG images"):
        evaluate(pipe, image, prompt, held_out=[], clip_model=clip_folder, reference=tmp_path)


def test_collapse_is_caught_by_diversity():
    """Identical outputs for every seed of a held-out prompt = collapsed, whatever the style says."""
    from lab_utils.evaluation import GroupResult, _verdicts

    styled = held_out_prompts(1)[0]
    training = GroupResult("training prompt", ["t"], [0, 1], 3.0, (10.0, 5.0), (20.0, 20.0))
    held = GroupResult("held-out", [styled], [0, 1], 9.0, (40.0, 2.0), (30.0, 1.0), style=(0.0, 0.4))
    result = _verdicts([training, held], [])
    assert result.wired and result.generalizes is False
    assert "collapsed (diversity 1.0 vs base 30.0)" in result.generalizes_evidence
    fine = dataclasses.replace(held, diversity=(30.0, 25.0))
    assert _verdicts([training, fine], []).generalizes is True


def test_a_style_that_also_shows_without_the_trigger_does_not_generalise():
    """The style must come with its trigger only: a rim on prompts without "sks" is a leak, even when
    the triggered prompts gain it and colours are kept (the trained adapter itself is measured on
    `tiny` by tests/test_going_further.py)."""
    from lab_utils.evaluation import GroupResult, _verdicts

    training = GroupResult("training prompt", ["t"], [0, 1], 3.0, (10.0, 5.0), (20.0, 20.0))
    styled = GroupResult(
        "held-out + trigger", held_out_prompts(1), [0, 1], 9.0, (40.0, 30.0), (30.0, 25.0), style=(0.0, 0.25)
    )
    accuracy = {"background": 100.0, "colour": 100.0, "shape": 100.0}
    plain = GroupResult(
        "held-out, no trigger",
        held_out_prompts(1, styled=False),
        [0, 1],
        9.0,
        (40.0, 30.0),
        (30.0, 25.0),
        style=(0.0, 0.2),
        accuracy=(accuracy, accuracy),
    )
    leaking = _verdicts([training, styled, plain], [])
    assert leaking.generalizes is False
    assert "the style leaks without the trigger (style score 0.00 → 0.20" in leaking.generalizes_evidence
    tied = _verdicts([training, styled, dataclasses.replace(plain, style=(0.0, 0.01))], [])
    assert tied.generalizes is True, tied.generalizes_evidence
