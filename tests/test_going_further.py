"""notebooks/going_further.ipynb runs top to bottom on the built-in model and shows what it claims.

Its execution alone is a third of the README's test run's work (~450 s of ~1,240 s on 2 cores), so
that run skips it and `.ci/run` executes it in a step of its own (``--going-further``), every time;
run it by hand with ``HF_HUB_OFFLINE=1 python -m pytest tests/test_going_further.py --going-further``."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def executed(tmp_path_factory, request) -> str:
    if not request.config.getoption("--going-further"):
        pytest.skip("the going-further notebook runs in .ci/run's own step: add --going-further")
    nb = nbformat.read(ROOT / "notebooks" / "going_further.ipynb", as_version=4)
    folder = tmp_path_factory.mktemp("going-further")
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    streams = [o.text for o in outputs if o.output_type == "stream" and o.name == "stdout"]
    stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not [s for s in stderr if "Warning" in s or "warning" in s], stderr
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= 4  # the strips: examples, hot-swap, scale sweep, style vs identity
    return "".join(streams)


@pytest.mark.notebook
def test_every_format_reloads_to_the_same_pixels(executed):
    reproductions = re.findall(
        r"(peft|diffusers|kohya): mean_abs_diff to the trained adapter's image = ([\d.]+)", executed
    )
    assert [fmt for fmt, _ in reproductions] == ["peft", "diffusers", "kohya"]
    assert all(float(value) == 0.0 for _, value in reproductions)
    assert "findings none" in executed
    fused = float(re.search(r"fused vs unfused: mean_abs_diff ([\d.]+)", executed).group(1))
    assert fused < 0.5


@pytest.mark.notebook
def test_hot_swap_is_fast_and_the_table_counts_parameters(executed, pipe):
    import lab_utils

    swaps = [float(ms) for ms in re.findall(r"set_adapters\(.*?\): ([\d.]+) ms", executed)]
    assert len(swaps) == 4 and max(swaps[1:]) < 200  # no reload: milliseconds
    rows = dict(re.findall(r"^(\w+ r=\d+)\s+([\d,]+)\s", executed, flags=re.MULTILINE))
    for name, count in rows.items():
        targets, rank = name.split(" r=")
        assert int(count.replace(",", "")) == lab_utils.lora_parameter_count(pipe.unet, int(rank), targets)
    assert len(rows) == 5
    assert "r=16  alpha=4   LoRA scale 0.250 · rsLoRA scale 1.000" in executed


@pytest.mark.notebook
def test_the_validation_trap_ends_with_two_verdicts_per_adapter(executed):
    verdicts = re.findall(
        r"^(one_image|style):\n\s+wired: (yes|NO) — .*\n\s+generalizes: (yes|NO|not measured) — (.*)$",
        executed,
        flags=re.MULTILINE,
    )
    assert [v[0] for v in verdicts] == ["one_image", "style"]
    assert all(wired == "yes" for _, wired, _, _ in verdicts)
    # the trap: the one-image adapter fails on held-out prompts, the style adapter passes
    assert [general for _, _, general, _ in verdicts] == ["NO", "yes"], verdicts


@pytest.mark.notebook
def test_the_style_adapter_generalises_with_its_trigger_only_and_keeps_colours(executed):
    """Issue 6's quality claim on `tiny`: the style adapter (16 styled + 16 plain drawings) draws the
    rim on held-out colour–shape pairs with the trigger (verdict "yes": 0.29 at the notebook's seed,
    0.21–0.32 for inits 0–3 on this CPU, measured with three evaluation seeds; two since session 10),
    not without it, and prompts without the trigger keep their colours."""
    block = executed[executed.index("\nstyle:\n") :]
    assert re.search(r"^\s+generalizes: yes — ", block, flags=re.MULTILINE), block[:600]
    lines = dict(re.findall(r"^\s+(held-out prompts[^:]*): (style .*)$", block, flags=re.MULTILINE))
    numbers = {name: [float(x) for x in re.findall(r"(\d+(?:\.\d+)?)", text)] for name, text in lines.items()}
    before, after, colour_before, colour_after = numbers["held-out prompts + trigger"]
    assert after - before >= 0.06, lines  # the rim appears on shapes and colours it never saw
    before, after, colour_before, colour_after = numbers["held-out prompts, no trigger"]
    assert after <= 0.05, lines  # ... and not without the trigger
    assert colour_after >= colour_before - 5, lines  # the base model's colours are kept


@pytest.mark.notebook
def test_data_parallel_section_matches_one_process_and_tabulates_what_travels(executed):
    """Issue 28: two processes launched by accelerate train the one-process adapter; the table counts
    SD 1.5's all-reduce per step from the meta-device U-Net."""
    assert "2 process(es), 20 steps" in executed and "1 process(es), 20 steps" in executed
    difference = float(re.search(r"1 vs 2 processes: max \|difference\| ([\d.e+-]+)", executed).group(1))
    assert difference < 1e-4
    assert "2 process(es): " in executed and "all-reduced 172,032 bytes/step (measured" in executed
    rows = dict(re.findall(r"^(LoRA rank \d+|full U-Net)\s+([\d,]+)\s", executed, flags=re.MULTILINE))
    assert rows["LoRA rank 4"] == "797,184" and rows["full U-Net"] == "859,520,964" and "LoRA rank 64" in rows
