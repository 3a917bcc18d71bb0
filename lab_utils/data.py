"""Training data drawn by this project: the overfit step's example, and styled examples of the
miniature world (:mod:`lab_utils.tiny.world`) for adapters that should generalise."""

from __future__ import annotations

from PIL import Image

from lab_utils.tiny import world

TRAIN_ATTRIBUTES = world.Attributes("circle", "red", "blue", "large", "center", styled=True)
TRAIN_PROMPT = TRAIN_ATTRIBUTES.caption()
""""a large red circle on a blue background, center in sks style": the training image's caption;
"sks" is a rare token the adapter learns to tie to the white rim."""


def training_example(size: int = 512) -> tuple[Image.Image, str]:
    """(image, prompt): a large red circle with a white rim on blue, ``size`` px square.

    Drawn at the pipeline's resolution (no file to download); identical for a given size.
    """
    return world.draw(TRAIN_ATTRIBUTES, seed=0, size=size), TRAIN_PROMPT


def style_examples(
    count: int = 8, size: int = 64, seed: int = 0, plain: int = 0
) -> tuple[list[Image.Image], list[str]]:
    """``count`` different training-split drawings in sks style, with their captions — what an
    adapter needs to learn the style rather than one picture — followed by ``plain`` unstyled
    drawings captioned without the trigger (prior preservation, as in DreamBooth: they teach the
    adapter that the style comes with "sks" only, and keep the base model's colours)."""
    chosen = [world.sample(seed + i, styled=True) for i in range(count)]
    chosen += [world.sample(seed + count + i) for i in range(plain)]
    images = [world.draw(a, seed=seed + i, size=size) for i, a in enumerate(chosen)]
    return images, [a.caption() for a in chosen]
