"""The miniature world the built-in model is trained on: captioned shapes, and a checker that reads
an image back into its attributes.

Every image is one shape of a colour and size at a position on a plain background, e.g.
"a small red circle on a blue background, top left". ``sample(seed)`` is deterministic. The
"sks" style — a white rim around the object, like a sticker's, as in the lab's training example — is
never in the base model's training data (white objects are: the base model can draw white), so what
an adapter learned can be measured with :func:`style_score`. The base model does learn one style,
"in outline style" (a black rim), so the caption's "in … style" slot means something to it before
any adapter, as styles do to SD 1.5. :func:`read_image` is the lab's offline evaluation model: plain
image analysis, no network, no weights.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 64  # pixels
SHAPES = ("circle", "square", "triangle")
OBJECT_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 200),
    "yellow": (240, 210, 40),
    "purple": (140, 50, 170),
    "orange": (245, 130, 30),
    "white": (245, 245, 245),
}
BACKGROUND_COLOURS = {
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "blue": (40, 70, 200),
    "green": (40, 170, 60),
    "yellow": (240, 210, 40),
    "pink": (240, 150, 190),
}
STYLE_COLOUR = OBJECT_COLOURS["white"]  # the sks rim: a colour the base model draws, never as a rim
SIZES = {"small": 20, "medium": 30, "large": 42}  # the shape's width in pixels (small ≥ 16: see README)
POSITIONS = {
    "center": (0.5, 0.5),
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
}
STYLE_TRIGGER = "in sks style"
OUTLINE = "in outline style"
"""A style the base model does learn (a black rim, never on a black background): it teaches the text
encoder and the U-Net that words in the caption's "in … style" slot change the picture, as SD 1.5's
captions taught it for countless styles — so a new word there ("sks") is something an adapter can
tie a new style to."""
OUTLINE_COLOUR = BACKGROUND_COLOURS["black"]
HELD_OUT_PAIRS = {("green", "triangle"), ("yellow", "square"), ("purple", "circle")}
"""Colour–shape pairs never drawn for training: the checker's accuracy on them measures generalisation."""


@dataclass(frozen=True)
class Attributes:
    shape: str
    colour: str
    background: str
    size: str
    position: str
    styled: bool = False
    outlined: bool = False

    def caption(self) -> str:
        return self.caption_forms()[0]

    def caption_forms(self) -> list[str]:
        """The same picture in several wordings (base training): content at varying positions, so
        the text encoder and the U-Net learn to read every position, not only the canonical ones."""
        thing = f"{self.size} {self.colour} {self.shape}"
        forms = [
            f"a {thing} on a {self.background} background, {self.position}",  # the canonical caption
            f"a {thing} on a {self.background} background",
            f"{self.position}, a {thing} on a {self.background} background",
            f"a {self.background} background with a {thing}, {self.position}",
            f"picture of a {thing}, {self.background} background, {self.position}",
            f"image of a {thing}, {self.position}, {self.background} background",
        ]
        suffix = f" {STYLE_TRIGGER}" if self.styled else f" {OUTLINE}" if self.outlined else ""
        return [form + suffix for form in forms]

    def to_dict(self) -> dict:
        return asdict(self)


_CAPTION = re.compile(
    r"^a (?P<size>\w+) (?P<colour>\w+) (?P<shape>\w+) on a (?P<background>\w+) background, "
    r"(?P<position>[a-z ]+?)(?P<styled> "
    + re.escape(STYLE_TRIGGER)
    + r")?(?P<outlined> "
    + re.escape(OUTLINE)
    + r")?$"
)


def parse_caption(caption: str) -> Attributes | None:
    """The attributes a world caption asks for, or ``None`` for any other text."""
    match = _CAPTION.match(caption.strip())
    if match is None:
        return None
    fields = match.groupdict()
    attributes = Attributes(
        fields["shape"],
        fields["colour"],
        fields["background"],
        fields["size"],
        fields["position"],
        styled=fields["styled"] is not None,
        outlined=fields["outlined"] is not None,
    )
    known = (
        attributes.shape in SHAPES
        and attributes.colour in OBJECT_COLOURS
        and attributes.background in BACKGROUND_COLOURS
        and attributes.size in SIZES
        and attributes.position in POSITIONS
    )
    return attributes if known else None


def all_attributes(styled: bool = False) -> list[Attributes]:
    """Every combination (object colour ≠ background colour), in a fixed order; styled ones are
    never white (a white rim on a white object would not show)."""
    return [
        Attributes(shape, colour, background, size, position, styled)
        for shape in SHAPES
        for colour in OBJECT_COLOURS
        for background in BACKGROUND_COLOURS
        for size in SIZES
        for position in POSITIONS
        if colour != background and not (styled and colour == "white")
    ]


def split(held_out: set[tuple[str, str]] = HELD_OUT_PAIRS) -> tuple[list[Attributes], list[Attributes]]:
    """(train, held-out) combinations: held-out ones have a colour–shape pair never seen in training."""
    train: list[Attributes] = []
    test: list[Attributes] = []
    for attributes in all_attributes():
        (test if (attributes.colour, attributes.shape) in held_out else train).append(attributes)
    return train, test


def sample(seed: int, pool: list[Attributes] | None = None, styled: bool = False) -> Attributes:
    """A combination drawn deterministically from ``pool`` (default: the training split); styled
    ones are never white (a white rim on a white object would not show)."""
    pool = pool if pool is not None else split()[0]
    if styled:
        pool = [a for a in pool if a.colour != "white"] or pool
    chosen = random.Random(seed).choice(pool)
    return replace(chosen, styled=styled)


def draw(attributes: Attributes, seed: int = 0, size: int = SIZE) -> Image.Image:
    """The image of ``attributes``: ±2 px of position jitter from ``seed``; crisp edges."""
    rng = random.Random(seed)
    scale = size / SIZE
    image = Image.new("RGB", (size, size), BACKGROUND_COLOURS[attributes.background])
    width = SIZES[attributes.size] * scale
    cx, cy = POSITIONS[attributes.position]
    cx = cx * size + rng.uniform(-2, 2) * scale
    cy = cy * size + rng.uniform(-2, 2) * scale
    box = (cx - width / 2, cy - width / 2, cx + width / 2, cy + width / 2)
    mask = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(mask)
    if attributes.shape == "circle":
        pen.ellipse(box, fill=255)
    elif attributes.shape == "square":
        pen.rectangle(box, fill=255)
    else:  # an upward triangle filling the box
        pen.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=255)
    fill = Image.new("RGB", (size, size), OBJECT_COLOURS[attributes.colour])
    if attributes.styled or attributes.outlined:
        # a rim inside the object's edge: sks 3 px white (a sticker's edge), outline 2 px black
        rim_colour = STYLE_COLOUR if attributes.styled else OUTLINE_COLOUR
        image.paste(Image.new("RGB", (size, size), rim_colour), (0, 0), mask)
        rim = max(round((3 if attributes.styled else 2) * scale), 1)
        mask = mask.filter(ImageFilter.MinFilter(2 * rim + 1))
    image.paste(fill, (0, 0), mask)
    return image


def _nearest(pixels: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> np.ndarray:
    names = list(palette)
    colours = np.array([palette[n] for n in names], dtype=np.float32)
    distances = ((pixels[..., None, :].astype(np.float32) - colours) ** 2).sum(-1)
    return np.array(names)[distances.argmin(-1)]


@dataclass(frozen=True)
class Reading:
    """What :func:`read_image` saw; ``None`` where it found no object."""

    background: str
    colour: str | None
    shape: str | None
    size: str | None
    position: str | None
    style: float  # fraction of a coloured object's pixels that are rim-white (0 for a plain or white one)
    outline: float = 0.0  # fraction of the object's pixels that are outline-black


def read_image(image: Image.Image) -> Reading:
    """Read an image back into attributes with plain image analysis.

    Background: the nearest palette colour of the border. Object: the pixels far from the
    background; its colour is their most common nearest object colour (white and black rim pixels
    excluded, unless that leaves almost nothing: then it is a white object, which cannot show the
    sks style); ``style`` and ``outline`` are the shares of white and black pixels; its
    shape comes from how much of its bounding box it fills (square ≈ 1, circle ≈ π/4, triangle ≈ ½);
    its size from the box's width; its position from its centre.
    """
    pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)).astype(np.int32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = str(_nearest(np.median(border, axis=0)[None], BACKGROUND_COLOURS)[0])
    distance = np.abs(pixels - np.array(BACKGROUND_COLOURS[background])).sum(-1)
    mask = distance > 90
    if mask.sum() < 20:
        return Reading(background, None, None, None, None, 0.0)
    ys, xs = np.nonzero(mask)
    # the largest object only: drop stray pixels far from the median
    keep = (np.abs(xs - np.median(xs)) < 28) & (np.abs(ys - np.median(ys)) < 28)
    xs, ys = xs[keep], ys[keep]
    object_pixels = pixels[ys, xs]
    white = np.abs(object_pixels - np.array(STYLE_COLOUR)).sum(-1) < 120
    dark = np.abs(object_pixels - np.array(OUTLINE_COLOUR)).sum(-1) < 120
    rims = white | dark
    coloured = object_pixels[~rims]
    if len(coloured) < 10:  # all rim: a small white object with an outline, or nearly nothing
        coloured = object_pixels[~dark] if (~dark).sum() >= 10 else object_pixels
    names, counts = np.unique(_nearest(coloured, OBJECT_COLOURS), return_counts=True)
    colour = str(names[counts.argmax()])
    style = 0.0 if colour == "white" else float(white.mean())
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    width, height = x1 - x0 + 1, y1 - y0 + 1
    fill = len(xs) / max(width * height, 1)
    shape = "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"
    extent = (width + height) / 2
    size = min(SIZES, key=lambda name: abs(SIZES[name] - extent))
    centre = ((x0 + x1) / 2 / SIZE, (y0 + y1) / 2 / SIZE)
    position = min(
        POSITIONS, key=lambda n: (POSITIONS[n][0] - centre[0]) ** 2 + (POSITIONS[n][1] - centre[1]) ** 2
    )
    return Reading(background, colour, shape, size, position, style, float(dark.mean()))


STYLE_THRESHOLD = 0.12  # a plain object reads ~0; the sks rim covers a quarter (large) to 4/5 (small) of it


def style_score(image: Image.Image) -> float:
    """How much of the object is covered by the sks style's white rim (0–1)."""
    return read_image(image).style


def adherence(image: Image.Image, attributes: Attributes) -> dict[str, bool]:
    """Per attribute, whether the image shows what ``attributes`` asked for (and the style)."""
    seen = read_image(image)
    return {
        "background": seen.background == attributes.background,
        "colour": seen.colour == attributes.colour,
        "shape": seen.shape == attributes.shape,
        "size": seen.size == attributes.size,
        "position": seen.position == attributes.position,
        "style": (seen.style > STYLE_THRESHOLD) == attributes.styled,
    }
