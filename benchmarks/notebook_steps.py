"""Benchmark: the solution notebook's wall time by step, in a fresh kernel, against the plain lab.

    python benchmarks/notebook_steps.py [--model tiny|sd15-arch|FOLDER] [--runs 2]

Each run starts a new kernel (as a learner or the grader does) and executes the solution notebook
cell by cell with nbclient, timing kernel start-up and each step (setup = the cells before step 1:
imports and the environment check). The self-check cell is skipped (it grades). The reference is
the seed lab written the plain way from the diffusers/PEFT docs (re-encoding image and prompt every
training step, ``loss.item()`` every step, 30-step generations), run the same way in the same
invocation. Reports every run; the summary uses the median over runs of each total.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import nbformat
from common import SOLUTION, report
from nbclient import NotebookClient

from grader.notebook import cell_steps

SEED_LAB = (  # the seed lab as the diffusers/PEFT docs write it, one cell per step
    """
import torch, torch.nn.functional as F
from peft import LoraConfig, get_peft_model
import lab_utils
MODEL, PROMPT = lab_utils.model_from_env(), lab_utils.TRAIN_PROMPT
""",
    """
pipe = lab_utils.load_pipeline(MODEL)
seed = torch.Generator("cpu").manual_seed(0)
baseline = pipe(PROMPT, num_inference_steps=30, generator=seed).images[0]
""",
    """
targets = ["to_q", "to_k", "to_v", "to_out.0"]
unet = get_peft_model(pipe.unet, LoraConfig(r=4, lora_alpha=4, target_modules=targets))
""",
    """
image, prompt = lab_utils.training_example(lab_utils.native_size(pipe))
scheduler = lab_utils.training_scheduler(pipe)
optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-3)
unet.train()
for step in range(30):
    latents = lab_utils.encode_image(pipe, image)
    embeddings = lab_utils.encode_prompt(pipe, prompt)
    noise = torch.randn_like(latents)
    t = torch.randint(0, 1000, (1,), device=latents.device)
    pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=embeddings).sample
    loss = F.mse_loss(pred.float(), noise.float())
    optimizer.zero_grad(); loss.backward(); optimizer.step()
    print(step, loss.item())
unet.eval()
""",
    """
seed = torch.Generator("cpu").manual_seed(0)
adapted = pipe(PROMPT, num_inference_steps=30, generator=seed).images[0]
unet.save_pretrained("plain-lora")
""",
)


def plain_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    for step, source in enumerate(SEED_LAB):
        cell = nbformat.v4.new_code_cell(source.strip())
        if step:
            cell.metadata["lab"] = {"step": step}
        nb.cells.append(cell)
    return nb


def run(nb: nbformat.NotebookNode, model: str) -> dict[str, float]:
    """Seconds for kernel start-up and each step, executing in a fresh kernel in a temporary folder."""
    steps = cell_steps(nb)
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        os.environ["SD_LORA_LAB_MODEL"] = model
        client = NotebookClient(
            nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": folder}}
        )
        start = time.perf_counter()
        with client.setup_kernel():
            times["kernel start"] = time.perf_counter() - start
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code" or "self-check" in cell.metadata.get("tags", []):
                    continue
                label = "setup" if steps[index] is None else f"step {steps[index]}"
                began = time.perf_counter()
                client.execute_cell(cell, index)
                times[label] = times.get(label, 0.0) + time.perf_counter() - began
    times["total"] = sum(times.values())
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    solution = nbformat.read(SOLUTION, as_version=4)
    lab_runs = [run(solution, args.model) for _ in range(args.runs)]
    plain_runs = [run(plain_notebook(), args.model) for _ in range(args.runs)]
    labels = list(lab_runs[0])
    rows = []
    for label in labels:
        lab = statistics.median(r[label] for r in lab_runs)
        plain = statistics.median(r.get(label, 0.0) for r in plain_runs)
        rows.append([label, round(lab, 2), round(plain, 2)] + [round(r[label], 2) for r in lab_runs])
    lab_total = statistics.median(r["total"] for r in lab_runs)
    plain_total = statistics.median(r["total"] for r in plain_runs)
    return report(
        "notebook by step",
        ["part", "solution s (median)", "plain s (median)"]
        + [f"solution run {i + 1}" for i in range(args.runs)],
        rows,
        {
            "model": args.model,
            "runs": args.runs,
            "solution_total_s": round(lab_total, 2),
            "plain_total_s": round(plain_total, 2),
            "speedup": round(plain_total / lab_total, 3),
            "solution_runs": [{k: round(v, 3) for k, v in r.items()} for r in lab_runs],
            "plain_runs": [{k: round(v, 3) for k, v in r.items()} for r in plain_runs],
            "target_gpu_s": 20,
        },
    )


if __name__ == "__main__":
    main()
