"""Pixel metrics on the 0–255 scale."""

from __future__ import annotations

import numpy as np
from PIL import Image

ImageLike = Image.Image | np.ndarray

RECORD_KEY = "sd_lora_lab"
"""Key under which ``lab_utils.generate`` stores its generation record in ``image.info`` (here, not in
lab_utils.generation, so the grader's artefact cell reads it without importing torch)."""


def to_array(image: ImageLike) -> np.ndarray:
    """(H, W, 3) float64 in 0–255 from a PIL image or an array (uint8, or float already 0–255)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got an array of shape {array.shape}")
    return array


def mean_abs_diff(a: ImageLike, b: ImageLike) -> float:
    """Mean absolute difference of two same-size images, on the 0–255 scale (0 = identical)."""
    x, y = to_array(a), to_array(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {x.shape[:2]} vs {y.shape[:2]}")
    return float(np.abs(x - y).mean())
