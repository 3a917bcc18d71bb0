"""The built-in miniature Stable Diffusion ("tiny"): SD 1.5's component classes at toy sizes.

The pipeline folder ``lab_utils/tiny_model/`` ships the configs and the tokenizer. When it also
holds weights they are loaded as they are; otherwise each component is initialised from its config
with a fixed seed and the result is cached on disk, so every process gets the same model with no
download.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_MODEL_DIR = Path(__file__).parent / "tiny_model"
TINY_SEED = 0

# Words the lab's prompts use; each becomes one token (any other text still tokenizes, by bytes).
TINY_WORDS = """
a an the of on in with and at photo picture drawing painting image style sks
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


def build_tokenizer_files(words: list[str] = TINY_WORDS) -> tuple[dict[str, int], list[str]]:
    """CLIP BPE vocabulary and merges: every byte (with and without ``</w>``) plus one token per word.

    Each word gets a left-to-right chain of merges, so it tokenizes to a single token.
    """
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in dict.fromkeys(words):  # ordered, unique
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            merge = f"{left} {right}"
            left = left + right
            if merge not in merges:
                merges.append(merge)
                tokens.append(left)
    tokens = list(dict.fromkeys(tokens)) + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer_files(folder: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` (the files shipped in ``tiny_model/tokenizer``)."""
    vocab, merges = build_tokenizer_files()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def _has_weights(folder: Path) -> bool:
    return any((folder / "unet").glob("*.safetensors"))


def cache_root() -> Path:
    """Where seeded builds of ``tiny`` are cached: ``$SD_LORA_LAB_CACHE``, else ~/.cache/sd-lora-lab."""
    root = os.environ.get("SD_LORA_LAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sd-lora-lab"
    )
    return Path(root)


def config_fingerprint() -> str:
    """A short hash of the shipped configs and the torch version that initialises the weights."""
    import torch

    digest = hashlib.sha256(f"seed={TINY_SEED};torch={torch.__version__}".encode())
    for path in sorted(TINY_MODEL_DIR.rglob("*")):
        if path.is_file() and path.suffix in {".json", ".txt"}:
            digest.update(path.relative_to(TINY_MODEL_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def tiny_model_dir() -> Path:
    """The folder to load ``tiny`` from: the package's own weights, or a seeded build cached once."""
    if _has_weights(TINY_MODEL_DIR):
        return TINY_MODEL_DIR
    target = cache_root() / f"tiny-{config_fingerprint()}"
    if not _has_weights(target):
        _build_into(target)
    return target


def _build_into(target: Path) -> None:
    """Initialise every component from its config with a fixed seed; write the folder atomically."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    src = TINY_MODEL_DIR
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(src / "unet"))
        torch.manual_seed(TINY_SEED + 1)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(src / "vae"))
        torch.manual_seed(TINY_SEED + 2)
        text_config = CLIPTextConfig.from_pretrained(src / "text_encoder")
        text_encoder = CLIPTextModel(text_config)
        unet.save_pretrained(tmp / "unet")
        vae.save_pretrained(tmp / "vae")
        text_encoder.save_pretrained(tmp / "text_encoder")
        DDIMScheduler.from_pretrained(src / "scheduler")  # validate the shipped config
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep theirs
            if not _has_weights(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
