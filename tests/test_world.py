"""The miniature world: deterministic captioned images, and a checker that reads every attribute
back (it is the lab's offline evaluation model, so it must be right on clean images)."""

from __future__ import annotations

import random

import pytest

from lab_utils.data import training_example
from lab_utils.tiny import world
from lab_utils.tiny.tokenizer import TINY_WORDS


def test_captions_are_plain_words_the_tokenizer_knows():
    a = world.Attributes("circle", "red", "blue", "small", "top left")
    assert a.caption() == "a small red circle on a blue background, top left"
    styled = world.Attributes("square", "green", "pink", "large", "center", styled=True)
    assert styled.caption().endswith("center in sks style")
    words = {
        w.strip(",") for attributes in world.all_attributes(styled=True) for w in attributes.caption().split()
    }
    assert words <= set(TINY_WORDS), words - set(TINY_WORDS)


def test_combinations_split_and_sampling_are_deterministic():
    combos = world.all_attributes()
    assert len(combos) == 3 * 7 * 6 * 3 * 5 - 3 * 3 * 3 * 5  # minus object colour == background colour
    assert len(world.all_attributes(styled=True)) == len(combos) - 3 * 6 * 3 * 5  # no white styled
    assert all(c.colour != c.background for c in combos)
    train, held_out = world.split()
    assert len(train) + len(held_out) == len(combos) and held_out
    assert not {(c.colour, c.shape) for c in train} & world.HELD_OUT_PAIRS
    assert {(c.colour, c.shape) for c in held_out} == world.HELD_OUT_PAIRS
    assert world.sample(7) == world.sample(7) and world.sample(7) in train
    a = world.sample(3)
    assert world.draw(a, seed=5).tobytes() == world.draw(a, seed=5).tobytes()
    assert world.draw(a, seed=5).size == (64, 64)


@pytest.mark.parametrize("styled", [False, True])
def test_checker_reads_every_attribute_of_clean_images(styled):
    rng = random.Random(0)
    combos = world.all_attributes(styled=styled)
    wrong: dict[str, int] = {}
    trials = 400
    for _ in range(trials):
        attributes = rng.choice(combos)
        image = world.draw(attributes, seed=rng.randrange(10**6))
        for name, ok in world.adherence(image, attributes).items():
            wrong[name] = wrong.get(name, 0) + (not ok)
    assert wrong == dict.fromkeys(["background", "colour", "shape", "size", "position", "style"], 0), wrong


def test_checker_agrees_with_the_labs_training_example():
    image, prompt = training_example(64)
    seen = world.read_image(image)
    assert (seen.colour, seen.background, seen.shape) == ("red", "blue", "circle")
    assert seen.style > world.STYLE_THRESHOLD and "sks style" in prompt


def test_the_style_is_a_white_rim_and_a_white_object_is_not_styled():
    """White is a colour of the world (the base model learns to draw it); the sks style is a white
    rim around a coloured object, and a white object never reads as styled."""
    plain = world.Attributes("square", "purple", "gray", "large", "center")
    styled = world.Attributes(**{**plain.to_dict(), "styled": True})
    assert world.style_score(world.draw(plain)) == 0.0
    assert 0.2 < world.style_score(world.draw(styled)) < 0.35  # a large square: a quarter of it
    white = world.read_image(world.draw(world.Attributes("circle", "white", "black", "medium", "top left")))
    assert (white.colour, white.shape, white.style) == ("white", "circle", 0.0)
    assert all(world.sample(i, styled=True).colour != "white" for i in range(200))
    assert any(world.sample(i).colour == "white" for i in range(200))


def test_the_outline_style_reads_back_and_never_as_sks():
    """The base world's own style ("in outline style": a black rim, never on a black background)
    gives the caption's "in … style" slot a meaning before any adapter; the checker reads the
    object through it and never takes it for the sks rim."""
    outlined = world.Attributes("triangle", "yellow", "pink", "small", "top right", outlined=True)
    assert outlined.caption().endswith("top right in outline style")
    assert world.parse_caption(outlined.caption()) == outlined
    forms = outlined.caption_forms()
    assert len(set(forms)) == 6 and all(f.endswith(" in outline style") for f in forms)
    assert all(
        f.endswith(" in sks style")
        for f in world.Attributes(**{**outlined.to_dict(), "outlined": False, "styled": True}).caption_forms()
    )
    rng = random.Random(1)
    for attributes in rng.sample([a for a in world.all_attributes() if a.background != "black"], 300):
        seen = world.read_image(world.draw(world.Attributes(**{**attributes.to_dict(), "outlined": True})))
        assert (seen.colour, seen.shape, seen.size) == (attributes.colour, attributes.shape, attributes.size)
        assert seen.outline > 0.05 and seen.style == 0.0, (attributes, seen)
    plain = world.read_image(world.draw(world.Attributes("square", "red", "gray", "large", "center")))
    assert plain.outline == 0.0


def test_base_training_captions_vary_in_wording_and_include_the_outline_style():
    from lab_utils.tiny.train import Settings, dataset

    _, captions = dataset(Settings(images=400))
    outlined = [c for c in captions if c.endswith(" in outline style")]
    assert 0.15 < len(outlined) / len(captions) < 0.3
    assert not any("sks" in c for c in captions)  # the sks style is the adapter's to learn
    assert len({c.split(" ")[0] for c in captions}) >= 4  # not every caption starts "a …"


def test_checker_handles_an_empty_picture_and_other_sizes():
    from PIL import Image

    blank = world.read_image(Image.new("RGB", (64, 64), world.BACKGROUND_COLOURS["gray"]))
    assert blank.background == "gray" and blank.colour is None and blank.style == 0.0
    attributes = world.Attributes("triangle", "orange", "black", "medium", "bottom right")
    assert all(world.adherence(world.draw(attributes, size=256), attributes).values())


def test_training_script_runs_end_to_end_and_its_folder_loads_as_a_model(tmp_path):
    """A few seconds of each stage: the script draws, trains, evaluates and writes a diffusers
    folder with training.json that lab_utils loads like any local model."""
    import json

    import lab_utils
    from lab_utils.tiny.train import main

    out = tmp_path / "tiny-world"
    record = main(
        ["--out", str(out), "--images", "64", "--vae-minutes", "0.01", "--diffusion-minutes", "0.01"]
        + ["--decoder-minutes", "0.01"]
        + ["--eval-prompts", "2", "--eval-steps", "2", "--threads", "1"]
    )
    saved = json.loads((out / "training.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert set(saved["metrics"]["held_out_accuracy"]) == {
        "background",
        "colour",
        "shape",
        "size",
        "position",
        "style",
    }
    assert saved["metrics"]["vae_steps"] >= 1 and saved["metrics"]["diffusion_steps"] >= 1
    assert saved["metrics"]["decoder_steps"] >= 1
    pipe = lab_utils.load_pipeline(str(out), device="cpu")
    assert pipe.vae_scale_factor == 4 and lab_utils.native_size(pipe) == 64
    assert sum(f.stat().st_size for f in out.rglob("*.safetensors")) < 20 * 2**20


def test_parse_caption_reads_every_world_caption_and_nothing_else():
    outlined = [world.Attributes(**{**a.to_dict(), "outlined": True}) for a in world.all_attributes()]
    for attributes in world.all_attributes() + world.all_attributes(styled=True) + outlined:
        assert world.parse_caption(attributes.caption()) == attributes
    for text in (
        "a photo of a cat",
        "a large red hexagon on a blue background, center",
        "a large red circle on a blue background, center in van gogh style",
        "",
    ):
        assert world.parse_caption(text) is None
