"""The overfit step's training example, drawn by this project: a striped shape "in sks style"."""

from __future__ import annotations

from PIL import Image, ImageDraw

TRAIN_PROMPT = "a red circle on a blue background in sks style"
"""The caption of the training image; "sks" is a rare token the adapter learns to tie to the stripes."""


def training_example(size: int = 512) -> tuple[Image.Image, str]:
    """(image, prompt): a red circle with white diagonal stripes on blue, ``size`` × ``size`` px.

    Drawn with PIL at the pipeline's resolution (no file to download); identical for a given size.
    """
    scale = 4  # draw large then downsample: smooth edges at every size
    big = size * scale
    image = Image.new("RGB", (big, big), (40, 70, 190))
    mask = Image.new("L", (big, big), 0)
    margin = big // 5
    ImageDraw.Draw(mask).ellipse((margin, margin, big - margin, big - margin), fill=255)
    shape = Image.new("RGB", (big, big), (220, 40, 40))
    stripes = ImageDraw.Draw(shape)
    step = max(big // 8, 2)
    for offset in range(-big, big, step):  # 45° stripes, a third of each period wide
        stripes.line((offset, big, offset + big, 0), fill=(245, 245, 245), width=max(step // 3, 1))
    image.paste(shape, (0, 0), mask)
    return image.resize((size, size), Image.Resampling.LANCZOS), TRAIN_PROMPT
