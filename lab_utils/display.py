"""What the notebook shows: images side by side with a difference heatmap, and the loss curve."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from lab_utils.metrics import ImageLike, mean_abs_diff, to_array

_MIN_PANEL = 256  # px: tiny 64 px images are upscaled (nearest) so the pixels stay visible


def difference_heatmap(a: ImageLike, b: ImageLike) -> Image.Image:
    """Per-pixel |a − b| (mean over RGB), black → red → yellow, scaled so the largest change is yellow."""
    diff = np.abs(to_array(a) - to_array(b)).mean(axis=-1)
    peak = diff.max()
    gray = Image.fromarray((diff / peak * 255 if peak > 0 else diff).astype(np.uint8), mode="L")
    return ImageOps.colorize(gray, black="black", mid="red", white="yellow")


def show_side_by_side(
    base: ImageLike, adapted: ImageLike, titles: tuple[str, str] = ("baseline", "adapted")
) -> Image.Image:
    """One image: baseline | adapted | difference heatmap, each titled (mean_abs_diff in the third)."""
    score = mean_abs_diff(base, adapted)
    panels = [base, adapted, difference_heatmap(base, adapted)]
    return image_strip(panels, [titles[0], titles[1], f"|difference|  mean {score:.2f}/255"])


def plot_loss(losses: list[float], title: str = "LoRA overfit loss"):
    """A matplotlib figure of the loss per step."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.plot(range(1, len(losses) + 1), losses, marker=".")
    ax.set(xlabel="step", ylabel="MSE loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)  # returned for display; closing stops a second copy from the inline backend
    return fig


def _to_image(image: ImageLike) -> Image.Image:
    return (
        image.convert("RGB")
        if isinstance(image, Image.Image)
        else Image.fromarray(to_array(image).astype(np.uint8))
    )


def image_strip(images: list[ImageLike], labels: list[str]) -> Image.Image:
    """Images side by side, each titled (e.g. a LoRA scale sweep)."""
    panels = [_to_image(i) for i in images]
    side = max(_MIN_PANEL, panels[0].width)
    header = 18
    canvas = Image.new("RGB", (len(panels) * (side + 10) - 10, side + header), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (panel, label) in enumerate(zip(panels, labels, strict=True)):
        x = i * (side + 10)
        canvas.paste(panel.resize((side, side), Image.Resampling.NEAREST), (x, header))
        draw.text((x + 2, 3), label, fill="black")
    return canvas
