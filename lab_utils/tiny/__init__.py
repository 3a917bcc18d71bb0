"""The built-in miniature Stable Diffusion ("tiny") and everything that made it: SD 1.5's component
classes at toy sizes, trained by this project on a world of coloured shapes.

- ``model/`` — the diffusers pipeline folder that ``load_pipeline("tiny")`` loads offline: CLIP text
  encoder and tokenizer, UNet2DConditionModel with cross-attention, AutoencoderKL, DDIM scheduler,
  fp16 safetensors, and ``training.json`` (settings, seed, durations, held-out checker accuracy);
- :mod:`lab_utils.tiny.world` — the miniature world: captioned drawings and the analytic checker
  that reads them back (the offline evaluation model of ``lab_utils.evaluate``);
- :mod:`lab_utils.tiny.tokenizer` — the tokenizer files' builder;
- :mod:`lab_utils.tiny.train` — ``python -m lab_utils.tiny.train``, which trained the weights
  (docs/tiny-model.md has the record).
"""

from __future__ import annotations

from pathlib import Path

from lab_utils.errors import LabError

TINY_MODEL_DIR = Path(__file__).parent / "model"


def tiny_model_dir() -> Path:
    """The folder ``tiny`` loads from: the package's own trained weights."""
    if not any((TINY_MODEL_DIR / "unet").glob("*.safetensors")):
        raise LabError(
            f"the built-in model's weights are missing from {TINY_MODEL_DIR}: reinstall the package "
            "(pip install -e .) or restore the folder from the repository"
        )
    return TINY_MODEL_DIR
