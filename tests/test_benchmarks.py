"""The benchmark commands run and print what they promise (figures are not asserted: no timed tests)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from lab_utils.models import resolve_model
from lab_utils.sd15 import (
    SD15_TEXT_ENCODER_PARAMETERS,
    SD15_UNET_PARAMETERS,
    SD15_VAE_PARAMETERS,
    sd15_pipeline,
)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield lambda name: importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_sd15_architecture_has_sd15_counts():
    pipe = sd15_pipeline("meta")
    counts = {
        n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in ("unet", "text_encoder", "vae")
    }
    assert counts == {
        "unet": SD15_UNET_PARAMETERS,
        "text_encoder": SD15_TEXT_ENCODER_PARAMETERS,
        "vae": SD15_VAE_PARAMETERS,
    }
    assert pipe.tokenizer.model_max_length == 77
    assert resolve_model("sd15-arch").kind == "sd15-arch"


def test_overfit_loop_benchmark_prints_table_and_json(bench, capsys):
    record = bench("overfit_loop").main(["--steps", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "lab_utils.train_lora" in out and "plain" in out
    assert last_json(out) == record
    assert record["hardware"] and record["plain_ms_per_step"] > 0 and record["lab_ms_per_step"] > 0
    assert record["speedup"] == pytest.approx(
        record["plain_ms_per_step"] / record["lab_ms_per_step"], rel=0.01
    )


def test_generation_benchmark_measures_base_unfused_fused_and_swap(bench, capsys):
    record = bench("generation").main(["--steps", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert last_json(out) == record
    for key in ("base_s", "unfused_s", "fused_s", "swap_ms"):
        assert record[key] > 0, key
    assert "missing keys" not in out + capsys.readouterr().err


def test_plain_lab_reference_is_the_seed_lab(bench):
    nb = bench("notebook_steps").plain_notebook()
    from grader.notebook import cell_steps

    assert [s for s in cell_steps(nb) if s is not None] == [1, 2, 3, 4]
    loop = nb.cells[3].source
    assert "encode_image" in loop.split("for step")[1] and "loss.item()" in loop  # re-encodes, syncs
