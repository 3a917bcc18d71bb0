"""Named sets of U-Net modules to put LoRA on — plain data, so the grader's config can validate a
``targets`` value without importing torch."""

from __future__ import annotations

_ATTN = r"(to_q|to_k|to_v|to_out\.0)"

TARGET_PRESETS: dict[str, str | list[str]] = {
    # the lab: q/k/v/out projections of self-attention (attn1) and cross-attention (attn2)
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    # cross-attention only: where the text conditions the image (style)
    "cross": rf".*attn2\.{_ATTN}",
    # self-attention only: how image regions relate to each other (identity, layout)
    "self": rf".*attn1\.{_ATTN}",
    # attention + feed-forward + the ResNet convolutions
    "full": rf".*(attn[12]\.{_ATTN}|ff\.net\.(0\.proj|2)|resnets\.\d+\.(conv1|conv2))",
}
"""Named target sets; each value is what PEFT's ``LoraConfig(target_modules=...)`` takes."""
