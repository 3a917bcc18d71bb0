"""A learner's environment problems are one short line, and re-running cells is safe."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import FAST
from peft import LoraConfig, get_peft_model

import lab_utils
from lab_utils.environment import out_of_memory_hint

CONFIG = dict(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])


def test_rerunning_the_attach_cell_replaces_the_adapter_instead_of_stacking(pipe):
    base = lab_utils.generate(pipe, lab_utils.TRAIN_PROMPT, seed=0, **FAST)
    unet = get_peft_model(pipe.unet, LoraConfig(**CONFIG))
    image, prompt = lab_utils.training_example(64)
    lab_utils.train_lora(pipe, unet, image, prompt, steps=3, lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PEFT warns when it wraps a model a second time
        lab_utils.remove_lora(pipe.unet)  # what the notebook's step 2 cell does first
        assert not lab_utils.has_lora(pipe.unet)
        assert (
            lab_utils.mean_abs_diff(base, lab_utils.generate(pipe, lab_utils.TRAIN_PROMPT, seed=0, **FAST))
            == 0
        )
        again = get_peft_model(pipe.unet, LoraConfig(**CONFIG))
    assert sum(p.numel() for p in again.parameters() if p.requires_grad) == 43_008
    assert sum(1 for name, _ in pipe.unet.named_parameters() if "lora_A" in name) == 56  # not 112
    assert lab_utils.remove_lora(again) is pipe.unet and not lab_utils.has_lora(pipe.unet)


def test_check_environment_summarises_versions_device_and_model():
    line = lab_utils.check_environment("tiny")
    assert line.startswith("torch ") and "diffusers " in line and "peft " in line and "model: tiny" in line
    assert "\n" not in line and "no GPU found" not in line


def test_a_too_old_or_missing_package_is_one_line_with_the_fix():
    with pytest.raises(lab_utils.LabError) as info:
        lab_utils.check_environment("tiny", minimums={"peft": "99.0"})
    assert "peft" in str(info.value) and "too old" in str(info.value)
    assert "pip install -U 'peft>=99.0'" in str(info.value)
    with pytest.raises(lab_utils.LabError, match="no-such-package is not installed: pip install"):
        lab_utils.check_environment("tiny", minimums={"no-such-package": "1.0"})


def test_a_model_that_is_not_mounted_is_one_line(tmp_path):
    with pytest.raises(lab_utils.LabError, match="not found") as info:
        lab_utils.check_environment(str(tmp_path / "models" / "sd15"))
    assert info.value._render_traceback_() == [f"LabError: {info.value}"]


def test_sd15_on_a_cpu_warns_that_there_is_no_gpu(pipe, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectation")
    pipe.save_pretrained(tmp_path / "sd")
    assert "no GPU found" in lab_utils.check_environment(str(tmp_path / "sd"))


def test_out_of_gpu_memory_names_the_setting_to_lower():
    with pytest.raises(lab_utils.LabError) as info:
        with out_of_memory_hint("generation", "size="):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert str(info.value).startswith("out of GPU memory during generation: lower size=")


def test_out_of_memory_anywhere_in_a_notebook_is_one_line(capsys):
    from lab_utils.environment import show_out_of_memory

    show_out_of_memory(None, torch.OutOfMemoryError, torch.OutOfMemoryError("CUDA out of memory"), None)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(
        "OutOfMemoryError: out of GPU memory in this cell: lower the image size"
    )


def test_check_environment_registers_the_out_of_memory_handler_in_ipython():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        lab_utils.check_environment("tiny")
        assert shell.custom_exceptions == (torch.OutOfMemoryError,)
        result = shell.run_cell("import torch\nraise torch.OutOfMemoryError('CUDA out of memory')")
        assert isinstance(result.error_in_exec, torch.OutOfMemoryError)
    finally:
        InteractiveShell.clear_instance()
