"""The built-in model's CLIP tokenizer files: a byte-level BPE vocabulary in which every word the
lab's prompts use is one token (shipped as ``model/tokenizer/vocab.json`` and ``merges.txt``)."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

# Words the lab's prompts use; each becomes one token (any other text still tokenizes, by bytes).
TINY_WORDS = """
a an the of on in with and at photo picture drawing painting image style sks outline
small medium large big tiny circle square triangle star shape object
red green blue yellow purple orange white black gray grey pink brown cyan
background top bottom left right center middle corner stripes striped diagonal
""".split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE: merge the lowest-ranked adjacent pair until none of the merges applies."""
    while len(symbols) > 1:
        pairs = {(a, b): ranks.get((a, b), len(ranks)) for a, b in pairwise(symbols)}
        best = min(pairs, key=pairs.__getitem__)
        if best not in ranks:
            break
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def build_tokenizer_files(words: list[str] = TINY_WORDS) -> tuple[dict[str, int], list[str]]:
    """CLIP BPE vocabulary and merges: every byte (with and without ``</w>``) plus one token per word.

    BPE merges by rank, not left to right: each word is first split by the merges the earlier words
    added, then its pieces are joined left to right by new (later-ranked) merges. Later merges never
    apply while an earlier one can, so every word ends as one token and earlier words stay whole.
    """
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(words):  # ordered, unique
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        left = pieces[0]
        for right in pieces[1:]:
            ranks[(left, right)] = len(merges)
            merges.append(f"{left} {right}")
            left = left + right
            tokens.append(left)
    tokens = list(dict.fromkeys(tokens)) + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer_files(folder: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` (the files shipped in ``lab_utils/tiny/model/tokenizer``)."""
    vocab, merges = build_tokenizer_files()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
