"""Data-parallel LoRA (lab_utils.distributed): two processes launched by accelerate's own launcher
(gloo on CPU) train the adapter one process trains on the same global batch, all-reduce only the
LoRA gradients (measured), and every bad option is one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
COMMON = ["--steps", "4", "--batch", "4", "--images", "4", "--cpu"]
TOLERANCE = 1e-4  # max |difference| of any adapter weight (they are ~0.1): float sums in another order
LORA, FULL = 43_008, 5_835_012  # the built-in U-Net: rank-4 LoRA on to_q/k/v/out, and all of it


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _one_process(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lab_utils.distributed", *COMMON, "--out", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launched(processes: int, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "lab_utils.distributed", *COMMON, "--out", str(out), *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)


def _adapter(folder: Path) -> dict:
    return load_file(folder / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """One process; one process accumulating 2 micro-steps; two processes — the same global batch.
    Returns their folder and what each printed."""
    root = tmp_path_factory.mktemp("dp")
    printed = {}
    for name, result in (
        ("one", _one_process(root / "one")),
        ("accumulated", _one_process(root / "accumulated", "--grad-accum", "2")),
        ("two", _launched(2, root / "two")),
    ):
        assert result.returncode == 0, result.stderr
        printed[name] = result.stdout
    return root, printed


def test_gradient_accumulation_takes_the_same_steps(runs):
    root, _ = runs
    one, accumulated = (json.loads((root / n / "report.json").read_text()) for n in ("one", "accumulated"))
    assert accumulated["gradient_accumulation_steps"] == 2 and accumulated["per_process_batch"] == 2
    assert accumulated["loss"] == pytest.approx(one["loss"], abs=1e-5)
    a, b = _adapter(root / "one"), _adapter(root / "accumulated")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < TOLERANCE


def test_two_processes_train_the_one_process_adapter_reducing_only_lora_gradients(runs):
    root, printed = runs
    assert "2 process(es), 4 steps" in printed["two"] and printed["two"].count("process(es)") == 1  # rank 0
    one = json.loads((root / "one" / "report.json").read_text())
    two = json.loads((root / "two" / "report.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["backend"] == "gloo" and two["per_process_batch"] == 2 and one["per_process_batch"] == 4
    # measured by the comm hook: exactly the LoRA gradients in fp32, once a step; nothing in one process
    assert two["allreduce_bytes_per_step"] == LORA * 4 and one["allreduce_bytes_per_step"] == 0
    assert two["full_unet_allreduce_bytes_per_step"] == FULL * 4 and two["lora_parameters"] == LORA
    assert two["sd15"]["lora_allreduce_bytes_per_step"] == 797_184 * 4
    assert two["sd15"]["full_unet_allreduce_bytes_per_step"] == 859_520_964 * 4
    assert len(two["loss"]) == 4 and two["steps_per_second"] > 0
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
    a, b = _adapter(root / "one"), _adapter(root / "two")
    assert a.keys() == b.keys() and len(a) == 112
    assert max((a[k] - b[k]).abs().max().item() for k in a) < TOLERANCE
    assert max(a[k].abs().max().item() for k in a if "lora_B" in k) > 1e-3  # it trained


def test_a_batch_the_processes_do_not_divide_is_one_line(tmp_path):
    result = _launched(2, tmp_path / "x", "--batch", "3")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: --batch 3")]
    assert lines == [
        "error: --batch 3 cannot be split into 2 processes × 1 accumulation steps: use a multiple of 2"
    ]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--batch", "3", "--grad-accum", "2"], "error: --batch 3 cannot be split into 1 processes × 2"),
        (["--steps", "0"], "error: --steps must be at least 1 (got 0)"),
        (["--lr", "0"], "error: --lr must be positive"),
        (["--speed", "9"], "error: unrecognized arguments: --speed 9"),
        (["--mixed-precision", "fp64"], "error: argument --mixed-precision: invalid choice"),
    ],
)
def test_a_bad_option_is_one_line(tmp_path, extra, words):
    result = _one_process(tmp_path / "x", *extra)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, result.stderr


def test_bf16_mixed_precision_trains_and_keeps_the_lora_weights_fp32(tmp_path):
    """What a GPU run does (autocast in bf16, fp32 adapter), here on the CPU's bf16 autocast."""
    result = _one_process(tmp_path / "bf16", "--mixed-precision", "bf16", "--steps", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "bf16" / "report.json").read_text())
    assert report["mixed_precision"] == "bf16" and len(report["loss"]) == 2
    adapter = _adapter(tmp_path / "bf16")
    assert {str(t.dtype) for t in adapter.values()} == {"torch.float32"}
    assert max(t.abs().max().item() for k, t in adapter.items() if "lora_B" in k) > 0  # it stepped


def test_the_notebook_s_comparison_runs_where_both_runs_can(tmp_path):
    """going_further §5: two GPUs or more take one process each; without them both runs stay on the
    CPU — and on the tiny model, whatever the notebook's model (SD 1.5 on a CPU would take hours)."""
    from lab_utils.distributed import comparison_runs

    (one, two), where = comparison_runs("tiny", 0, "python", "accelerate")
    assert one == [
        "python",
        "-m",
        "lab_utils.distributed",
        "--steps",
        "20",
        "--batch",
        "8",
        "--cpu",
        "--model",
        "tiny",
    ]
    assert two[:4] == ["accelerate", "launch", "--multi_gpu", "--num_processes"] and two[-9:] == one[1:]
    assert "--mixed_precision" in two and where.startswith("on this machine's CPU")

    (one, two), where = comparison_runs("sd15-arch", 1, "python", "accelerate")
    assert (
        one[-2:] == ["--model", "tiny"]
        and "--cpu" in one
        and "with the built-in tiny model, not sd15-arch" in where
    )

    (one, two), where = comparison_runs("sd15-arch", 8, "python", "accelerate")
    assert "--cpu" not in one + two and one[-2:] == two[-2:] == ["--model", "sd15-arch"]
    assert two[two.index("--num_processes") + 1] == "2" and where.startswith("on GPUs")
