"""``describe(pipe)``: what a Stable Diffusion pipeline is made of, and where its attention lives."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention


@dataclass(frozen=True)
class ComponentRow:
    component: str
    cls: str
    parameters: int | None
    dtype: str
    device: str


@dataclass(frozen=True)
class AttentionRow:
    block: str  # down_blocks.0, mid_block, up_blocks.3
    self_attention: int  # attn1 modules: image tokens attend to image tokens
    cross_attention: int  # attn2 modules: image tokens attend to the text embedding


@dataclass(frozen=True)
class PipelineDescription:
    components: list[ComponentRow]
    attention: list[AttentionRow]

    def _rows(self) -> tuple[list[list[str]], list[list[str]]]:
        comp = [
            [r.component, r.cls, "" if r.parameters is None else f"{r.parameters:,}", r.dtype, r.device]
            for r in self.components
        ]
        attn = [[r.block, str(r.self_attention), str(r.cross_attention)] for r in self.attention]
        return comp, attn

    def __str__(self) -> str:
        comp, attn = self._rows()
        return "\n\n".join(
            [
                _text_table(["component", "class", "parameters", "dtype", "device"], comp),
                _text_table(["U-Net block", "self-attn (attn1)", "cross-attn (attn2)"], attn),
            ]
        )

    __repr__ = __str__

    def _repr_html_(self) -> str:
        comp, attn = self._rows()
        return _html_table(["component", "class", "parameters", "dtype", "device"], comp) + _html_table(
            ["U-Net block", "self-attention (attn1)", "cross-attention (attn2)"], attn
        )


def describe(pipe) -> PipelineDescription:
    """A table of the pipeline's components (class, parameters, dtype, device) and the U-Net's
    attention layers per block: self-attention (attn1) and cross-attention (attn2)."""
    components = []
    for name, value in pipe.components.items():
        if value is None:
            continue
        if isinstance(value, torch.nn.Module):
            first = next(value.parameters(), None)
            components.append(
                ComponentRow(
                    name,
                    type(value).__name__,
                    sum(p.numel() for p in value.parameters()),
                    str(first.dtype).removeprefix("torch.") if first is not None else "",
                    str(first.device) if first is not None else "",
                )
            )
        else:
            components.append(ComponentRow(name, type(value).__name__, None, "", ""))
    counts: dict[str, list[int]] = {}
    for name, module in pipe.unet.named_modules():
        if isinstance(module, Attention):
            match = re.match(
                r"(?:base_model\.model\.)?((?:down|up)_blocks\.\d+|mid_block)\..*(attn[12])$", name
            )
            if match:
                block, kind = match.groups()
                counts.setdefault(block, [0, 0])[kind == "attn2"] += 1
    attention = [AttentionRow(b, s, c) for b, (s, c) in counts.items()]
    return PipelineDescription(components, attention)


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
