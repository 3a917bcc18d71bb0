"""The honest catalogue: correct labs written the way real learners write and save them.

Each case is the solution notebook (or the student notebook filled in) changed as a learner who
knows diffusers and PEFT would change it — their documented idioms, other names, cells merged, split,
added or deleted, the optional step skipped, saved by JupyterLab, Colab or VS Code, on Windows, in an
older nbformat — and every one must get full marks: a correct lab that loses credit is a false fail.
tests/test_honest.py grades them; ``docs/RELIABILITY.md`` carries the table (``render_honest``) beside
the adversarial one. The quick settings (helpers.QUICK) keep the catalogue's run short: what is under
test is how the lab is written, not how long it trains.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat
from helpers import QUICK, ROOT, SOLUTION, STUDENT

RELIABILITY = ROOT / "docs" / "RELIABILITY.md"
BEGIN, END = "<!-- honest catalogue: begin -->", "<!-- honest catalogue: end -->"

GENERATE = "lab_utils.generate(pipe, PROMPT, seed=SEED, steps=INFERENCE_STEPS, guidance=GUIDANCE)"
SETTINGS = "num_inference_steps=INFERENCE_STEPS, guidance_scale=GUIDANCE"
PIPE_CALL = f'pipe(PROMPT, {SETTINGS}, generator=torch.Generator("cpu").manual_seed(SEED)).images[0]'
GET_PEFT = "unet = get_peft_model(pipe.unet, lora_config)  # injects the adapters into pipe.unet in place"
STEP_ORDER = "    optimizer.zero_grad(set_to_none=True)\n    loss.backward()\n    optimizer.step()\n"
FORWARD = "    noise_pred = unet(noisy_latents, timesteps, encoder_hidden_states=text_embeddings).sample\n"
OPTIMIZER = (
    "optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=LEARNING_RATE)\n"
)


@dataclass
class Case:
    name: str
    how: str  # what the learner did differently
    build: Callable[[Path], Path]
    quick: bool = True  # graded by the README's test run too (the rest by .ci/run's --all-honest run)
    notes: str = ""  # words a report note must contain


def _edit(nb, old: str, new: str, regex: bool = False) -> None:
    hits = [c for c in nb.cells if (re.search(old, c.source) if regex else old in c.source)]
    assert hits, f"edit target not found: {old!r}"
    for cell in hits:
        cell.source = re.sub(old, new, cell.source) if regex else cell.source.replace(old, new)


def _index(nb, text: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if text in c.source)


def notebook(
    *edits: tuple[str, str] | tuple[str, str, bool],
    change: Callable | None = None,
    write: Callable[[nbformat.NotebookNode, Path], None] | None = None,
    source: Path = SOLUTION,
) -> Callable[[Path], Path]:
    """``source`` with text edits (``(old, new)``, or ``(pattern, replacement, True)``), then the quick
    settings where they still match, then ``change(nb)``; written by ``write`` (default nbformat)."""

    def build(tmp: Path) -> Path:
        nb = nbformat.read(source, as_version=4)
        for old, new, *regex in edits:
            _edit(nb, old, new, bool(regex and regex[0]))
        for old, new in QUICK:
            for cell in [c for c in nb.cells if old in c.source]:
                cell.source = cell.source.replace(old, new)
        if change is not None:
            change(nb)
        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / "submission.ipynb"
        (write or (lambda n, p: nbformat.write(n, p)))(nb, path)
        return path

    return build


# --- how notebooks are saved ------------------------------------------------------------------------


def jupyterlab_outputs(nb) -> None:
    """As JupyterLab saves a notebook it ran: execution counts, stream, image and widget outputs,
    the widget state in the notebook's metadata."""
    widget = "application/vnd.jupyter.widget-view+json"
    for count, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = count + 1
        cell.outputs = [
            nbformat.v4.new_output("stream", name="stdout", text="LoRA training: 100%\n"),
            nbformat.v4.new_output(
                "display_data",
                data={widget: {"model_id": f"m{count}", "version_major": 2, "version_minor": 0}},
            ),
            nbformat.v4.new_output(
                "execute_result", data={"image/png": "iVBORw0KGgo=", "text/plain": "<PIL.Image>"}
            ),
        ]
        cell.metadata["execution"] = {"iopub.execute_input": "2026-12-01T10:00:00.000000Z"}
    nb.metadata["widgets"] = {
        "application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2, "version_minor": 0}
    }
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.9", "mimetype": "text/x-python"}


def colab(nb) -> None:
    """As Colab saves it: its metadata, cell ids of its own, a GPU runtime, an install cell first."""
    nb.metadata.update(
        {
            "colab": {"provenance": [], "gpuType": "T4"},
            "accelerator": "GPU",
            "kernelspec": {"name": "python3", "display_name": "Python 3"},
        }
    )
    for number, cell in enumerate(nb.cells):
        cell.metadata["id"] = f"cOlAb{number:04d}"
        if cell.cell_type == "code":
            cell.metadata["colab"] = {"base_uri": "https://localhost:8080/"}
    install = nbformat.v4.new_code_cell("%pip install -q diffusers peft transformers accelerate")
    nb.cells.insert(1, install)


def vscode(nb) -> None:
    """As VS Code's Jupyter extension saves it: its interpreter hash, a venv kernel, full language info."""
    nb.metadata.update(
        {
            "kernelspec": {"display_name": ".venv", "language": "python", "name": "python3"},
            "language_info": {
                "codemirror_mode": {"name": "ipython", "version": 3},
                "file_extension": ".py",
                "name": "python",
                "version": "3.11.9",
            },
            "vscode": {"interpreter": {"hash": "5c7b" * 16}},
        }
    )
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.execution_count = None
            cell.outputs = []


def windows(nb: nbformat.NotebookNode, path: Path) -> None:
    """As saved on Windows: CRLF line endings in the file and inside every cell's source."""
    for cell in nb.cells:
        cell.source = cell.source.replace("\n", "\r\n")
    path.write_bytes(nbformat.writes(nb).replace("\n", "\r\n").encode())


def nbformat_minor(minor: int) -> Callable[[nbformat.NotebookNode, Path], None]:
    """An older nbformat 4 minor: no cell ids (they came in 4.5)."""

    def write(nb: nbformat.NotebookNode, path: Path) -> None:
        data = json.loads(nbformat.writes(nb))
        data["nbformat_minor"] = minor
        for cell in data["cells"]:
            cell.pop("id", None)
        path.write_text(json.dumps(data, indent=1))

    return write


# --- how cells are arranged ---------------------------------------------------------------------------


def merge_steps(nb) -> None:
    """Step 2's attach cell and step 3's loop in one cell; step 4's image and save cells in one."""
    for first, second in (
        ("lora_config = LoraConfig", "TRAIN_STEPS, LEARNING_RATE"),
        ("adapted_image =", "adapter_dir ="),
    ):
        a, b = _index(nb, first), _index(nb, second)
        nb.cells[a].source += "\n\n" + nb.cells[b].source
        del nb.cells[b]


def split_loop(nb) -> None:
    """Step 3's cell split where the loop starts."""
    index = _index(nb, "TRAIN_STEPS, LEARNING_RATE")
    cell = nb.cells[index]
    head, tail = cell.source.split("torch.manual_seed(SEED)\nloss_history", 1)
    cell.source = head
    second = nbformat.v4.new_code_cell("torch.manual_seed(SEED)\nloss_history" + tail)
    second.metadata["lab"] = dict(cell.metadata.get("lab", {}))
    nb.cells.insert(index + 1, second)


def add_and_delete(nb) -> None:
    """The reflections, the self-check and step 5 deleted; a look at the U-Net and notes added."""
    nb.cells = [
        c
        for c in nb.cells
        if c.metadata.get("lab", {}).get("step") != 5
        and "self-check" not in c.metadata.get("tags", [])
        and not (c.cell_type == "markdown" and "Reflection" in c.source)
    ]
    index = _index(nb, "lab_utils.describe(pipe)")
    nb.cells.insert(
        index + 1, nbformat.v4.new_markdown_cell("My notes: the U-Net is the only network adapted.")
    )
    nb.cells.insert(
        index + 2,
        nbformat.v4.new_code_cell("print(pipe.unet.config.sample_size, type(pipe.scheduler).__name__)"),
    )


def student_step5(nb) -> None:
    """Step 5's TODO cells as the student notebook has them: untouched."""
    student = nbformat.read(STUDENT, as_version=4)
    todo = [c for c in student.cells if c.metadata.get("lab", {}).get("step") == 5 and c.cell_type == "code"]
    mine = [
        i
        for i, c in enumerate(nb.cells)
        if c.metadata.get("lab", {}).get("step") == 5 and c.cell_type == "code"
    ]
    for index, cell in zip(mine, todo, strict=True):
        nb.cells[index] = cell


# The student notebook's TODOs filled in as a learner who knows diffusers writes them (issue 29): diffusers'
# names to generate, PEFT's get_peft_model, PyTorch's `step(); zero_grad()` order, the adapted image
# from a plain pipeline call; step 5 left as it is.
STUDENT_ANSWERS = {
    1: "baseline_image = lab_utils.generate(pipe, PROMPT, generator=torch.Generator('cpu').manual_seed(SEED),\n"
    "                                  num_inference_steps=INFERENCE_STEPS, guidance_scale=GUIDANCE)",
    2: "unet = get_peft_model(pipe.unet, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS))",
    3: "    noise_pred = unet(noisy_latents, timesteps, encoder_hidden_states=text_embeddings).sample\n"
    "    loss = F.mse_loss(noise_pred, noise)\n"
    "    loss.backward()\n"
    "    optimizer.step()\n"
    "    optimizer.zero_grad()",
    4: f"adapted_image = {PIPE_CALL}",
}


def student_filled(nb) -> None:
    """Each required TODO stub (its comment and raise) replaced by STUDENT_ANSWERS; optional ones kept."""
    for cell in nb.cells:
        lab = cell.metadata.get("lab", {})
        if cell.cell_type != "code" or "todo" not in lab or lab.get("optional"):
            continue
        lines = cell.source.split("\n")
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("# TODO"))
        assert "raise NotImplementedError" in lines[start + 1]
        lines[start : start + 2] = [STUDENT_ANSWERS[lab["step"]]]
        cell.source = "\n".join(lines)


def only_pipe_unet(nb) -> None:
    """No `unet` variable at all: every use says pipe.unet."""
    for cell in nb.cells:
        cell.source = re.sub(r"(?<![.\w])unet(?=[.(,)\s])", "pipe.unet", cell.source)


LOAD_LORA_WEIGHTS = """from diffusers import StableDiffusionPipeline
from peft.utils import get_peft_model_state_dict
pipe.unet.add_adapter(lora_config)  # a fresh adapter, shared as diffusers shares LoRA files
StableDiffusionPipeline.save_lora_weights("start-lora", unet_lora_layers=get_peft_model_state_dict(pipe.unet))
lab_utils.remove_lora(pipe.unet)
pipe.load_lora_weights("start-lora")  # continue training a LoRA file
for name, parameter in pipe.unet.named_parameters():
    parameter.requires_grad_("lora_" in name)
unet = pipe.unet"""

TWO_ADAPTERS = """pipe.unet.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=["to_q"]), adapter_name="draft")
pipe.unet.add_adapter(lora_config, adapter_name="style")  # the adapter added last is the active one
unet = pipe.unet"""

ACCELERATE = """from accelerate import Accelerator
accelerator = Accelerator()  # CPU here, the GPU on a pod
unet, optimizer = accelerator.prepare(unet, optimizer)
"""

CASES: list[Case] = [
    Case(
        "diffusers pipeline call",
        "both images from `pipe(PROMPT, num_inference_steps=…, guidance_scale=…, generator=torch.Generator('cpu').manual_seed(SEED)).images[0]`",
        notebook((GENERATE, PIPE_CALL)),
    ),
    Case(
        "the student notebook, filled with diffusers' idioms",
        "the TODOs written with diffusers' names to `generate`, `step(); zero_grad()`, the adapted image "
        "from `pipe(…)`; step 5 left",
        notebook(source=STUDENT, change=student_filled),
        quick=False,  # the README's run executes and grades it in tests/test_course.py
    ),
    Case(
        "torch.manual_seed as the generator",
        "diffusers' docs idiom `generator=torch.manual_seed(SEED)`",
        notebook((GENERATE, f"pipe(PROMPT, {SETTINGS}, generator=torch.manual_seed(SEED)).images[0]")),
        quick=False,
    ),
    Case(
        "keywords, negative prompt, height and width",
        "`pipe(prompt=PROMPT, negative_prompt='blurry', height=…, width=…, …)` for both images",
        notebook(
            (
                GENERATE,
                "pipe(prompt=PROMPT, negative_prompt='blurry, low quality', height=lab_utils.native_size(pipe), "
                f"width=lab_utils.native_size(pipe), {SETTINGS}, generator=torch.Generator('cpu').manual_seed(SEED)).images[0]",
            )
        ),
        quick=False,
    ),
    Case(
        "numpy output",
        "`output_type='np'`, converted with `pipe.numpy_to_pil` (the record is found by its pixels)",
        notebook(
            (
                GENERATE,
                f"pipe.numpy_to_pil(pipe(PROMPT, {SETTINGS}, generator=torch.Generator('cpu').manual_seed(SEED), "
                "output_type='np').images)[0]",
            )
        ),
        quick=False,
    ),
    Case(
        "another scheduler",
        "`pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)` before the baseline",
        notebook(
            (
                "lab_utils.describe(pipe)",
                "lab_utils.describe(pipe)\nfrom diffusers import DPMSolverMultistepScheduler\n"
                "pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)",
            ),
            (GENERATE, PIPE_CALL),
        ),
        quick=False,
    ),
    Case(
        "a list of generators",
        "a batch of two, `generator=[torch.Generator('cpu').manual_seed(SEED + i) for i in range(2)]`, image 0 kept",
        notebook(
            (
                GENERATE,
                f"pipe([PROMPT] * 2, {SETTINGS}, generator=[torch.Generator('cpu').manual_seed(SEED + i) "
                "for i in range(2)]).images[0]",
            )
        ),
        quick=False,
    ),
    Case(
        "lab_utils.generate with diffusers' names",
        "`lab_utils.generate(pipe, PROMPT, num_inference_steps=…, guidance_scale=…, generator=…)`",
        notebook(
            (
                GENERATE,
                f"lab_utils.generate(pipe, PROMPT, {SETTINGS}, generator=torch.Generator('cpu').manual_seed(SEED))",
            )
        ),
        quick=False,
    ),
    Case(
        "adapted image with cross_attention_kwargs",
        "the baseline with `lab_utils.generate`, the adapted image with `pipe(…, cross_attention_kwargs={'scale': 1.0})`",
        notebook(
            (
                f"adapted_image = {GENERATE}",
                f"adapted_image = pipe(PROMPT, {SETTINGS}, generator=torch.Generator('cpu').manual_seed(SEED), "
                "cross_attention_kwargs={'scale': 1.0}).images[0]",
            )
        ),
        quick=False,
    ),
    Case(
        "diffusers add_adapter",
        "as diffusers' LoRA training script: `pipe.unet.requires_grad_(False); pipe.unet.add_adapter(lora_config)`",
        notebook(
            (
                GET_PEFT,
                "pipe.unet.requires_grad_(False)\npipe.unet.add_adapter(lora_config)\nunet = pipe.unet",
            )
        ),
    ),
    Case(
        "add_adapter, only pipe.unet",
        "no `unet` variable: `pipe.unet.add_adapter(…)`, `pipe.unet(…)`, `save_adapter(pipe.unet, …)`",
        notebook((GET_PEFT, "pipe.unet.add_adapter(lora_config)"), change=only_pipe_unet),
        quick=False,
    ),
    Case(
        "PEFT inject_adapter_in_model",
        "`unet = inject_adapter_in_model(lora_config, pipe.unet)`",
        notebook(
            (
                GET_PEFT,
                "from peft import inject_adapter_in_model\nunet = inject_adapter_in_model(lora_config, pipe.unet)",
            )
        ),
        quick=False,
    ),
    Case(
        "load_lora_weights, then trained",
        "a LoRA file loaded with `pipe.load_lora_weights` and trained further",
        notebook((GET_PEFT, LOAD_LORA_WEIGHTS)),
        quick=False,
    ),
    Case(
        "two adapters, the second active",
        "a draft adapter, then `add_adapter(lora_config, adapter_name='style')`: the active one is graded",
        notebook((GET_PEFT, TWO_ADAPTERS)),
        quick=False,
        notes="graded the active adapter 'style' of `unet` (also there: 'draft')",
    ),
    Case(
        "other variable names",
        "`lora_unet` for the adapted U-Net, `opt` for the optimizer",
        notebook((r"(?<![.\w])unet(?=[.(,)\s])", "lora_unet", True), (r"\boptimizer\b", "opt", True)),
        quick=False,
    ),
    Case(
        "step, then zero_grad",
        "`loss.backward(); optimizer.step(); optimizer.zero_grad()` (PyTorch's default set_to_none=True)",
        notebook((STEP_ORDER, "    loss.backward()\n    optimizer.step()\n    optimizer.zero_grad()\n")),
        quick=False,
    ),
    Case(
        "Adam, 30 steps",
        "`torch.optim.Adam` instead of AdamW, 30 training steps",
        notebook(
            ("torch.optim.AdamW(", "torch.optim.Adam("),
            ("TRAIN_STEPS, LEARNING_RATE = 50,", "TRAIN_STEPS, LEARNING_RATE = 30,"),
        ),
        quick=False,
    ),
    Case(
        "bf16 autocast",
        "the forward pass under `torch.autocast('cpu', dtype=torch.bfloat16)`, LoRA weights in fp32",
        notebook((FORWARD, "    with torch.autocast('cpu', dtype=torch.bfloat16):\n    " + FORWARD)),
        quick=False,
    ),
    Case(
        "accelerate",
        "`accelerator.prepare(unet, optimizer)` and `accelerator.backward(loss)`",
        notebook(
            (OPTIMIZER, OPTIMIZER + ACCELERATE), ("    loss.backward()\n", "    accelerator.backward(loss)\n")
        ),
        quick=False,
    ),
    Case(
        "lab_utils' accelerate loop",
        "step 3 trained by `lab_utils.train_lora_accelerated(pipe, unet, train_image, train_prompt, …)`",
        notebook(
            (
                r"(?s)torch\.manual_seed\(SEED\)\nloss_history = \[\]\n.*?unet\.eval\(\)\n",
                "result = lab_utils.train_lora_accelerated(pipe, unet, train_image, train_prompt, "
                "steps=TRAIN_STEPS, lr=LEARNING_RATE, seed=SEED)\nloss_history = result.loss_history\n",
                True,
            )
        ),
        quick=False,
    ),
    Case(
        "cells merged",
        "step 2's and step 3's code in one cell, step 4's two cells in one",
        notebook(change=merge_steps),
        quick=False,
    ),
    Case("cell split", "step 3's cell split where the loop starts", notebook(change=split_loop), quick=False),
    Case(
        "cells added and deleted",
        "reflections, the self-check and step 5 deleted; a note and a look at the U-Net added",
        notebook(change=add_and_delete),
        quick=False,
    ),
    Case(
        "optional step skipped",
        "step 5's TODO cells left as the student notebook has them",
        notebook(change=student_step5),
        quick=False,
    ),
    Case(
        "saved by JupyterLab after running",
        "execution counts, outputs (images, widgets), widget state in the metadata",
        notebook(change=jupyterlab_outputs),
        quick=False,
    ),
    Case(
        "saved by Colab",
        "Colab's metadata and cell ids, a GPU runtime, a `%pip install` cell",
        notebook(change=colab),
        quick=False,
    ),
    Case(
        "saved by VS Code",
        "VS Code's interpreter metadata, a `.venv` kernel, outputs cleared",
        notebook(change=vscode),
        quick=False,
    ),
    Case(
        "saved on Windows",
        "CRLF line endings in the file and in every cell",
        notebook(write=windows),
        quick=False,
    ),
    Case(
        "nbformat 4.4", "an older nbformat minor: no cell ids", notebook(write=nbformat_minor(4)), quick=False
    ),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_honest(results: dict[str, dict]) -> str:
    """The honest section of docs/RELIABILITY.md, between its markers."""
    rows = [
        f"| {case.name} | {_cell(case.how)} | {results[case.name]['verdict']} | "
        f"{'yes' if results[case.name]['full_marks'] else '**NO**'} |"
        for case in CASES
        if case.name in results
    ]
    false_fails = sum(1 for r in results.values() if not r["full_marks"])
    return "\n".join(
        [
            BEGIN,
            f"**Honest catalogue: {len(results)} correct labs · false fails {false_fails} of {len(results)}.** "
            "Written by `HF_HUB_OFFLINE=1 python -m pytest tests/test_honest.py --all-honest --write-reliability`: each is",
            "the solution (or the student notebook filled in) written or saved as a real learner does",
            "(tests/honest.py), executed and graded by the real grader on the built-in model; every one must get",
            "full marks.",
            "",
            "| correct lab | what the learner did | score | full marks |",
            "|---|---|---|---|",
            *rows,
            END,
        ]
    )


def honest_section(text: str) -> str:
    """The honest section of a RELIABILITY.md text ('' when it has none)."""
    if BEGIN not in text or END not in text:
        return ""
    return text[text.index(BEGIN) : text.index(END) + len(END)]
