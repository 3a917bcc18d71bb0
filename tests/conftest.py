"""Shared fixtures: everything on CPU, offline, with the built-in tiny model."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub reads it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _default_model():
    """Every test starts from the built-in model, whatever the shell exported."""
    os.environ.pop("SD_LORA_LAB_MODEL", None)
    yield


@pytest.fixture
def pipe():
    """A fresh tiny pipeline on CPU, fp32, progress bars off (0.2 s once cached)."""
    import lab_utils

    p = lab_utils.load_pipeline("tiny", device="cpu")
    p.set_progress_bar_config(disable=True)
    return p


FAST = dict(steps=8, guidance=5.0)  # fewer denoising steps: same mechanics, faster tests


def pytest_sessionfinish(session, exitstatus):
    """Rewrite docs/RELIABILITY.md from the adversarial catalogue when this run graded every case."""
    import sys

    adversarial = sys.modules.get("adversarial")
    if adversarial is not None:
        adversarial.write_reliability()
