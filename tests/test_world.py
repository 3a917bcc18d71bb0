"""The miniature world: deterministic captioned images, and a checker that reads every attribute
back (it is the lab's offline evaluation model, so it must be right on clean images)."""

from __future__ import annotations

import random

import pytest

from lab_utils import world
from lab_utils.data import training_example
from lab_utils.tiny import TINY_WORDS


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
    assert len(combos) == 3 * 6 * 6 * 3 * 5 - 3 * 3 * 3 * 5  # minus object colour == background colour
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
    from lab_utils.train_world import main

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
    for attributes in world.all_attributes() + world.all_attributes(styled=True):
        assert world.parse_caption(attributes.caption()) == attributes
    for text in (
        "a photo of a cat",
        "a large red hexagon on a blue background, center",
        "a large red circle on a blue background, center in van gogh style",
        "",
    ):
        assert world.parse_caption(text) is None
