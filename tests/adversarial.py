"""The adversarial catalogue: named submissions that try to fool, break or escape the grader.

Each case states the verdict the grader must reach — the score, which checks may keep credit, and
words the reason must contain — and tests/test_adversarial.py grades it. A case is one of:

- a **notebook** (most are the solution with an edit) graded by ``grade_notebook``: for attacks on
  the execution path — the kernel, the sandbox, the artefact cell, the grader's own modules;
- a **file** graded through ``python -m grader`` (not a notebook at all);
- **artefacts**: the lab's steps run in the test's process with a mistake, saved by the grader's own
  saver and verified — for mistakes that only the checks can catch (a wrong rank, alpha or seed, an
  untrained adapter, an edited image), where executing a whole notebook would test nothing more.

``docs/RELIABILITY.md`` is rendered from these results (``render_reliability``); a test fails when
the committed file no longer matches the catalogue's verdicts (see tests/test_adversarial.py).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from helpers import ADAPTED, LR0, SOLUTION, STEP3, STUDENT, cells, lab_artefacts, lab_namespace, solution_with

ROOT = Path(__file__).resolve().parents[1]
RELIABILITY = ROOT / "docs" / "RELIABILITY.md"


@dataclass
class Case:
    name: str
    attack: str  # what the submission tries
    build: Callable[..., Path]  # (tmp) → notebook or file; for "artefacts": (tmp, pipe) → artefact folder
    score: float = 0.0  # the score it must get (of 3)
    reasons: dict[str, str] = field(default_factory=dict)  # check name or "failure" → words required
    measured: dict[str, str] = field(default_factory=dict)  # check name → its exact "measured" text
    config: dict = field(default_factory=dict)  # checks-file tables for this grading
    kind: str = "notebook"  # "notebook" | "file" (through the CLI) | "artefacts"
    needs: str = ""  # "cgroup": skipped where the machine cannot enforce it
    escapes: bool = False  # attacks the sandbox itself: graded in every sandbox on every run

    @property
    def sandboxed(self) -> bool:
        """Executed in a kernel: graded in each sandbox the grader picks by itself."""
        return self.kind == "notebook"


def text_file(content: bytes, name: str = "submission.ipynb") -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(content)
        return path

    return build


def artefacts(mutate: Callable[[dict], None] | None = None, **lab) -> Callable[[Path, object], Path]:
    """The lab's steps with ``lab`` (see helpers.lab_namespace), the namespace then changed by
    ``mutate`` as a notebook cell could, saved with the grader's own saver."""

    def build(tmp: Path, pipe) -> Path:
        namespace = lab_namespace(pipe, **lab)
        if mutate is not None:
            mutate(namespace)
        return lab_artefacts(tmp / "artefacts", namespace)

    return build


def baseline_plus_noise(namespace: dict) -> None:
    """The adapted image replaced by the baseline plus noise, its generation record copied."""
    import numpy as np
    from PIL import Image

    baseline, adapted = namespace["baseline_image"], namespace["adapted_image"]
    noise = np.random.default_rng(0).integers(-3, 4, (*baseline.size[::-1], 3))
    noisy = np.asarray(baseline, dtype=np.int16) + noise
    fake = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    fake.info.update(adapted.info)
    namespace["adapted_image"] = fake


def record_by_hand(namespace: dict) -> None:
    """The adapted image brightened by hand and given a record written by hand (every field a
    pipeline call would record, claiming the baseline's seed)."""
    import numpy as np
    from PIL import Image

    baseline = namespace["baseline_image"]
    brighter = np.clip(np.asarray(baseline, dtype=np.int16) + 20, 0, 255).astype(np.uint8)
    fake = Image.fromarray(brighter)
    fake.info["sd_lora_lab"] = {**baseline.info["sd_lora_lab"], "call": "pipe(PROMPT, generator=g).images[0]"}
    namespace["adapted_image"] = fake


def pipeline_idioms(lr: float = 3e-3, adapted_seed: int = 0, claimed_seed: int | None = None):
    """The lab in diffusers' idioms, in this process: ``pipe.unet.add_adapter``, both images from
    plain pipeline calls (recorded by lab_utils.recording); ``claimed_seed``: the adapted image's
    record edited to say that seed."""

    def build(tmp: Path, pipe) -> Path:
        import torch
        from peft import LoraConfig

        import lab_utils

        def call(seed: int):
            generator = torch.Generator("cpu").manual_seed(seed)
            return pipe(lab_utils.TRAIN_PROMPT, num_inference_steps=10, generator=generator).images[0]

        baseline = call(0)
        torch.manual_seed(0)
        pipe.unet.add_adapter(
            LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        )
        image, prompt = lab_utils.training_example(lab_utils.native_size(pipe))
        lab_utils.train_lora(pipe, pipe.unet, image, prompt, steps=20, lr=lr)
        adapted = call(adapted_seed)
        if claimed_seed is not None:
            adapted.info["sd_lora_lab"] = {**adapted.info["sd_lora_lab"], "seed": claimed_seed}
        return lab_artefacts(
            tmp / "artefacts", {"pipe": pipe, "baseline_image": baseline, "adapted_image": adapted}
        )

    return build


HOOK_REPLACED = """
from diffusers import StableDiffusionPipeline
original = StableDiffusionPipeline.__call__.__wrapped__  # the library's own call, unobserved
claimed = dict(baseline_image.info["sd_lora_lab"])
def forged(self, *args, **kwargs):  # the recording replaced: every image claims the baseline's record
    output = original(self, *args, **kwargs)
    for image in output.images:
        image.info["sd_lora_lab"] = dict(claimed)
    return output
StableDiffusionPipeline.__call__ = forged
adapted_image = pipe(PROMPT, num_inference_steps=INFERENCE_STEPS, guidance_scale=GUIDANCE,
                     generator=torch.Generator("cpu").manual_seed(SEED + 1)).images[0]
"""


def stored_outputs_lie(tmp: Path) -> Path:
    """The unfilled student notebook carrying the outputs of a successful run: every code cell shows
    the solution's success lines, execution counts included."""
    nb = nbformat.read(STUDENT, as_version=4)
    claims = [
        "trainable LoRA parameters: 43,008 of 5,835,012 (0.737%) — expected 43,008",
        "adapter tensors with nonzero gradient: 112/112",
        "mean_abs_diff = 1.52 on the 0–255 scale (the check needs > 0.5)",
        "self-check — all checks passed",
    ]
    for count, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = count + 1
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="\n".join(claims) + "\n")]
    path = tmp / "submission.ipynb"
    nbformat.write(nb, path)
    return path


CANARY_NAME = "canary.txt"  # written by the test beside the submission, outside the sandbox
GRADER_FILE = ROOT / "grader" / "checks" / "__init__.py"
# how the grader is left to pick its sandbox (auto) in each run of the catalogue: with bubblewrap
# installed, and with it hidden from PATH (the grader builds its own namespaces)
SANDBOXES = ("bwrap", "namespaces")


def tmp_canary(tmp: Path) -> Path:
    """A file straight in the system's /tmp, one per test (written by it, outside the sandbox)."""
    digest = hashlib.sha256(str(tmp).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"sd-lora-lab-canary-{digest}.txt"


PATCH_EVERYTHING = """
import numpy as np, PIL.Image, torch
import lab_utils, lab_utils.metrics
for p in [p for n, p in unet.named_parameters() if "lora_" in n]:
    p.grad = torch.ones_like(p)             # gradients set by hand
    with torch.no_grad():
        p.add_(0.0)
lab_utils.mean_abs_diff = lambda a, b: 99.0  # the metric faked
lab_utils.metrics.mean_abs_diff = lab_utils.mean_abs_diff
lab_utils.adapter_grad_norms = lambda unet: {"x": 1.0}
torch.Tensor.any = lambda self, *a, **k: torch.tensor(True)
np.abs = lambda x, *a, **k: np.full_like(np.asarray(x, dtype=float), 99.0)
PIL.Image.Image.getdata = lambda self, *a: [(255, 255, 255)] * 10
print("mean_abs_diff = 99.00; adapter tensors with nonzero gradient: 112/112")
"""

ALWAYS_EQUAL = """
class AlwaysEqual(int):
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = int.__hash__
trainable = AlwaysEqual(43008)
expected = trainable
assert trainable == 797_184 and trainable == expected
print(f"trainable LoRA parameters: {trainable:,} — expected {expected:,}")
"""

HARD_CODED = """
print("trainable LoRA parameters: 43,008 of 5,835,012 (0.737%) — expected 43,008")
print("adapter tensors with nonzero gradient: 112/112")
print("mean_abs_diff = 1.52 on the 0–255 scale (the check needs > 0.5)")
"""

PATCHED_SAVER = """
import json, os, numpy as np
from PIL import Image, PngImagePlugin
import grader.artefacts as ga
def forged_save(directory, namespace):
    os.makedirs(directory, exist_ok=True)
    record = dict(baseline_image.info["sd_lora_lab"])
    noisy = np.clip(np.asarray(baseline_image, dtype=np.int16) + 40, 0, 255).astype(np.uint8)
    baseline_image.save(os.path.join(directory, "baseline_image.png"))
    Image.fromarray(noisy).save(os.path.join(directory, "adapted_image.png"))
    unet.save_pretrained(os.path.join(directory, "adapter"))
    images = {n: {"file": n + ".png", "record": record} for n in ("baseline_image", "adapted_image")}
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump({"images": images, "adapter": "adapter", "errors": []}, f)
ga.save_artefacts = forged_save
"""

ESCAPE_FILES = """
import os, pathlib, subprocess
hits = []
for target in [CANARY, TMP_CANARY, GRADER_FILE]:
    try:
        with open(target, "a") as f:
            f.write("pwned")
        hits.append(target)
    except OSError as error:
        print("blocked:", error)
subprocess.run(["sh", "-c", f"echo pwned > {os.path.dirname(CANARY)}/dropped.txt"])
subprocess.run(["sh", "-c", f"echo pwned > {TMP_CANARY}.dropped"])
assert not hits, f"wrote outside the sandbox: {hits}"
"""

FIND_GRADER = """
import os, signal
visible = [p for p in os.listdir("/proc") if p.isdigit()]
cmdlines = []
for p in visible:
    try:
        cmdlines.append(open(f"/proc/{p}/cmdline").read())
    except OSError:
        pass
# the kernel's own wrapper (bubblewrap, or the launcher's init) names the kernel: anything else
# that names pytest or the grader is the grader
grader = [c for c in cmdlines if "grader.execute.kernel" not in c and ("pytest" in c or "grader" in c)]
assert not grader, f"the grader's process is visible: {grader[:1]}"
for pid in visible:
    if int(pid) != os.getpid() and int(pid) > 1:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
"""

FORGED_MANIFEST = """
import json, os
import grader.artefacts as ga
def forged_save(directory, namespace):
    os.makedirs(os.path.join(directory, "adapter"), exist_ok=True)
    baseline_image.save(os.path.join(directory, "baseline_image.png"))
    baseline_image.save(os.path.join(directory, "adapted_image.png"))
    huge = {"prompt": PROMPT, "seed": 0, "steps": 10**9, "guidance": 7.5, "height": 100000, "width": 100000}
    images = {n: {"file": n + ".png", "record": huge} for n in ("baseline_image", "adapted_image")}
    with open(os.path.join(directory, "adapter", "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": 10**6, "lora_alpha": 1, "target_modules": ["to_q"]}, f)
    with open(os.path.join(directory, "adapter", "adapter_model.bin"), "wb") as f:
        f.write(b"a pickle the grader must never load")
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump({"images": images, "adapter": "adapter", "errors": 7}, f)
ga.save_artefacts = forged_save
"""

NETWORK = """
import socket, urllib.request
try:
    socket.create_connection(("1.1.1.1", 443), timeout=5)
    print("connected")
except OSError as error:
    print("no route:", error)
urllib.request.urlopen("https://pypi.org/simple/", timeout=5)
"""

LR0_CAUSE = "lora_B weight is still zero"
INCONSISTENT = "inconsistent: the saved image was not produced by this adapter"

CASES: list[Case] = [
    Case(
        "infinite loop",
        "`while True: pass` in a cell",
        cells("while True:\n    pass"),
        reasons={"failure": "per-cell timeout of 2 s"},
        config={"timeouts": {"cell": 2, "total": 60}},
        escapes=True,
    ),
    Case(
        "long sleep",
        "`time.sleep(3600)`, past the notebook's total timeout",
        cells("import time\ntime.sleep(3600)"),
        reasons={"failure": "total timeout of 4 s"},
        config={"timeouts": {"cell": 60, "total": 4}},
        escapes=True,
    ),
    Case(
        "sys.exit(0) mid-notebook",
        "the solution calls sys.exit(0) at the start of step 3 to end the run 'successfully'",
        solution_with(after="<" + STEP3, cell="import sys\nsys.exit(0)", quick=True),
        score=1,
        reasons={"failure": "step 3 failed: SystemExit", "adapter_gradients": "step 3 failed"},
    ),
    Case(
        "os._exit(0) mid-notebook",
        "the solution kills its own kernel with os._exit(0) at the start of step 3",
        solution_with(after="<" + STEP3, cell="import os\nos._exit(0)", quick=True),
        score=1,
        reasons={"failure": "step 3 failed: the kernel died", "pixel_difference": "step 3 failed"},
        escapes=True,
    ),
    Case(
        "exception",
        "an exception in step 3",
        solution_with(after="<" + STEP3, cell="raise RuntimeError('boom')", quick=True),
        score=1,
        reasons={"failure": "step 3 failed: RuntimeError: boom"},
    ),
    Case(
        "segfault",
        "the kernel dereferences a null pointer",
        cells("import ctypes\nctypes.string_at(0)"),
        reasons={"failure": "the kernel died"},
        escapes=True,
    ),
    Case(
        "memory exhaustion",
        "allocates 128 MB blocks until memory runs out (limit 1 GB)",
        cells("blocks = []\nwhile True:\n    blocks.append(bytearray(2**27))"),
        reasons={"failure": "out of memory"},
        config={"limits": {"memory_gb": 1}},
        escapes=True,
    ),
    Case(
        "fork bomb",
        "`while True: os.fork()` (limit 64 processes)",
        cells("import os\nwhile True:\n    os.fork()"),
        # its copies of the kernel share the kernel's sockets: killed before the artefact cell runs
        reasons={"failure": "failed", "notes": "processes the notebook left running were killed"},
        config={"limits": {"processes": 64}, "timeouts": {"cell": 30}},
        needs="cgroup",
        escapes=True,
    ),
    Case(
        "50 MB of output",
        "prints 50 MB, then does no work",
        cells("for _ in range(50):\n    print('x' * 2**20)"),
        reasons={"notes": "output over 20 MB was dropped", "parameter_count": "no LoRA adapter was found"},
    ),
    Case(
        "writing outside the working directory",
        "appends to a file beside the submission, one in /tmp and the grader's own source; a shell "
        "drops files beside the submission and in /tmp",
        lambda tmp: cells(
            f"CANARY = {str(tmp / CANARY_NAME)!r}\nTMP_CANARY = {str(tmp_canary(tmp))!r}\n"
            f"GRADER_FILE = {str(GRADER_FILE)!r}\n{ESCAPE_FILES}"
        )(tmp),
        reasons={"parameter_count": "no LoRA adapter was found"},
        escapes=True,
    ),
    Case(
        "reading and killing the grader",
        "looks for the grader's process in /proc to read its arguments and SIGKILLs every process it sees",
        cells(FIND_GRADER),
        reasons={"parameter_count": "no LoRA adapter was found"},
        escapes=True,
    ),
    Case(
        "network access",
        "opens a socket and downloads from PyPI",
        cells(NETWORK),
        reasons={"failure": "URLError"},
        escapes=True,
    ),
    Case(
        "monkeypatched torch, numpy, PIL and lab_utils",
        "learning rate 0, then gradients set by hand and the metrics patched to report success",
        solution_with(LR0, after=STEP3, cell=PATCH_EVERYTHING, quick=True),
        score=1,
        reasons={"adapter_gradients": LR0_CAUSE},
    ),
    Case(
        "__eq__-always-True parameter count",
        "adapter never attached; the count is an object equal to everything",
        solution_with(
            ("unet = get_peft_model(pipe.unet, lora_config)", "unet = pipe.unet"),
            after="unet = pipe.unet",
            cell=ALWAYS_EQUAL,
            quick=True,
        ),
        reasons={"parameter_count": "no LoRA adapter was found"},
    ),
    Case(
        "hard-coded printed numbers",
        "prints the solution's success lines and does nothing else",
        cells(HARD_CODED),
        reasons={"parameter_count": "no LoRA adapter was found", "pixel_difference": "not found"},
    ),
    Case(
        "adapted image = baseline + noise",
        "learning rate 0, then the adapted image replaced by the baseline plus noise, record copied",
        artefacts(baseline_plus_noise, lr=0.0),
        score=1,
        reasons={"pixel_difference": INCONSISTENT},
        measured={"pixel_difference": "0.00"},  # the grader's own regeneration: nothing changed
        kind="artefacts",
    ),
    Case(
        "forged artefacts through a patched grader module",
        "replaces grader.artefacts.save_artefacts in the kernel to write a brightened 'adapted' image",
        solution_with(LR0, after=ADAPTED, cell=PATCHED_SAVER, quick=True),
        score=1,
        reasons={"adapter_gradients": LR0_CAUSE, "pixel_difference": INCONSISTENT},
    ),
    Case(
        "forged manifest, pickled adapter and absurd generation records",
        "writes its own manifest: a pickle as the adapter with rank 10^6, records asking for 10^9 steps "
        "at 100,000 px — to make the trusted grader load a pickle, allocate or loop without bound",
        cells(
            "import lab_utils\npipe = lab_utils.load_pipeline('tiny')\nPROMPT = 'a red circle'\n"
            "baseline_image = lab_utils.generate(pipe, PROMPT, seed=0, steps=5)",
            FORGED_MANIFEST,
        ),
        reasons={
            "parameter_count": "never pickles",
            "pixel_difference": "generation record is not one lab_utils.generate or a pipeline call wrote (steps",
        },
    ),
    Case(
        "learning rate 0",
        "trains with lr = 0: the adapter never moves",
        artefacts(lr=0.0),
        kind="artefacts",
        score=1,
        reasons={"adapter_gradients": LR0_CAUSE, "pixel_difference": "mean_abs_diff = 0.0"},
        # lora_B gets gradients; lora_A cannot while B is zero
        measured={"parameter_count": "43,008", "adapter_gradients": "56/112", "pixel_difference": "0.00"},
    ),
    Case(
        "adapter never attached",
        "keeps the plain U-Net: no LoRA at all",
        solution_with(("unet = get_peft_model(pipe.unet, lora_config)", "unet = pipe.unet"), quick=True),
        reasons={"parameter_count": "no LoRA adapter was found", "failure": "step 3 failed: ValueError"},
    ),
    Case(
        "LoRA on the wrong modules",
        "targets to_q and to_v only",
        artefacts(targets=["to_q", "to_v"]),
        kind="artefacts",
        score=2,
        reasons={
            "parameter_count": "wrong target modules (missing attn1.to_k, attn1.to_out, attn2.to_k, "
            "attn2.to_out)"
        },
        measured={"parameter_count": "21,504"},
    ),
    Case(
        "wrong rank",
        "rank 8 instead of 4",
        artefacts(rank=8, alpha=8),
        kind="artefacts",
        score=2,
        reasons={"parameter_count": "rank 8 instead of 4"},
        measured={"parameter_count": "86,016"},
    ),
    Case(
        "wrong alpha",
        "lora_alpha 8 instead of 4 at rank 4: the right parameter count, twice the update",
        artefacts(alpha=8),
        kind="artefacts",
        score=2,
        reasons={"parameter_count": "alpha 8 instead of 4: the update is scaled ×2"},
        measured={"parameter_count": "43,008"},
    ),
    Case(
        "a different seed for the adapted image",
        "the adapted image uses seed 1, so the pixels differ without any training",
        artefacts(adapted_seed=1, lr=0.0),
        kind="artefacts",
        score=1,
        reasons={"pixel_difference": "seed 0 vs 1"},
    ),
    Case(
        "adapter attached after generating",
        "the adapted image is generated right after attaching, before any training",
        artefacts(adapted_before_training=True),
        kind="artefacts",
        score=2,
        reasons={"pixel_difference": INCONSISTENT},
    ),
    Case(
        "a record written by hand onto an image",
        "learning rate 0; the adapted image brightened by hand and given a hand-written pipeline record",
        artefacts(record_by_hand, lr=0.0),
        score=1,
        reasons={"pixel_difference": INCONSISTENT},
        measured={"pixel_difference": "0.00"},
        kind="artefacts",
    ),
    Case(
        "a seed that was not the one used",
        "learning rate 0 with diffusers' idioms (add_adapter, pipeline calls); the adapted image drawn "
        "with seed 1, its record edited to say seed 0",
        pipeline_idioms(lr=0.0, adapted_seed=1, claimed_seed=0),
        score=1,
        reasons={"adapter_gradients": LR0_CAUSE, "pixel_difference": INCONSISTENT},
        kind="artefacts",
    ),
    Case(
        "learning rate 0 with diffusers' idioms",
        "`pipe.unet.add_adapter(...)`, trained with lr = 0, both images from plain pipeline calls",
        pipeline_idioms(lr=0.0),
        score=1,
        reasons={"adapter_gradients": LR0_CAUSE, "pixel_difference": "mean_abs_diff = 0.0"},
        measured={"parameter_count": "43,008", "pixel_difference": "0.00"},
        kind="artefacts",
    ),
    Case(
        "the recording hook removed and replaced",
        "learning rate 0; the notebook restores diffusers' unobserved __call__ and replaces it with one "
        "that stamps the baseline's record on every image, then draws the adapted image with seed 1",
        solution_with(LR0, after=ADAPTED, cell=HOOK_REPLACED, quick=True),
        score=1,
        reasons={"adapter_gradients": LR0_CAUSE, "pixel_difference": INCONSISTENT},
    ),
    Case(
        "stored outputs claim success",
        "the unfilled notebook carries a successful run's outputs",
        stored_outputs_lie,
        reasons={"failure": "step 1 failed: NotImplementedError"},
    ),
    Case(
        "corrupted notebook file",
        "truncated JSON",
        text_file(SOLUTION.read_bytes()[:5000]),
        reasons={"stderr": "is not a notebook"},
        kind="file",
    ),
    Case(
        "not a notebook",
        "a PNG renamed to .ipynb",
        text_file(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8),
        reasons={"stderr": "is not a notebook"},
        kind="file",
    ),
]


RESULTS: dict[tuple[str, str], dict] = {}  # (case, sandbox or "") → what the grader decided (the tests)


def runs(every_sandbox: bool = True) -> list[tuple[Case, str]]:
    """The catalogue's gradings: an executed notebook once per sandbox, the rest once. Without
    ``every_sandbox`` (the developer's run; CI passes ``--all-sandboxes``), a notebook that does not
    attack the sandbox itself — its verdict comes from the grader's checks, not the isolation — is
    graded with bubblewrap only."""
    return [
        (c, sandbox)
        for c in CASES
        for sandbox in (SANDBOXES if c.sandboxed else [""])
        if every_sandbox or sandbox != "namespaces" or c.escapes
    ]


FUZZ: dict[str, int] = {}  # fuzz target → inputs tried (filled by the property-based tests)
KINDS = {
    "notebook": "notebook executed",
    "file": "file, through the CLI",
    "artefacts": "artefacts, checks only",
}


def render_reliability(
    results: dict[tuple[str, str], dict], fuzz: dict[str, int], modes: dict[str, dict]
) -> str:
    """docs/RELIABILITY.md for a run that graded every case (``modes``: what each sandbox enforced);
    the honest catalogue's section (tests/test_honest.py writes it) is kept as it is."""
    from honest import honest_section

    honest = honest_section(RELIABILITY.read_text()) if RELIABILITY.is_file() else ""
    rows = []
    for case in CASES:
        graded = [
            results[key]
            for key in ((case.name, s) for s in (SANDBOXES if case.sandboxed else [""]))
            if key in results
        ]
        verdicts = [r["verdict"] for r in graded] if case.sandboxed else [graded[0]["verdict"], "—"]
        verdicts += ["not graded in this run"] * (2 - len(verdicts))
        rows.append(
            f"| {case.name} | {case.attack} | {KINDS[case.kind]} | {' | '.join(verdicts)} | "
            f"{graded[0]['reason']} | "
            f"{'yes' if all(r['as_expected'] for r in graded) else '**NO**'} |"
        )
    false_passes = sum(1 for r in results.values() if r["false_pass"])
    crashes = sum(1 for r in results.values() if r["crash"])
    escapes = sum(1 for r in results.values() if r["escaped"])
    expected = sum(r["as_expected"] for r in results.values())
    fuzz_lines = [f"- {target}: {count} generated inputs" for target, count in sorted(fuzz.items())]
    attempts = list(next(iter(modes.values()))) if modes else []
    mode_rows = [
        f"| {mode} | " + " | ".join(found[a] for a in attempts) + " |" for mode, found in modes.items()
    ]
    return "\n".join(
        [
            "# Reliability: the adversarial catalogue",
            "",
            "Written by `HF_HUB_OFFLINE=1 python -m pytest tests/test_adversarial.py --write-reliability`;",
            "every test run compares the committed file with its own verdicts and fails when it is stale.",
            "Each submission below is graded by the real grader on the built-in model: a notebook is",
            "executed in the sandbox the grader picks by itself — once with bubblewrap installed and once",
            "with it hidden from PATH (the grader then builds its own namespaces) — a file goes through the",
            "CLI, and artefacts — the lab's steps with a mistake, saved by the grader's own saver — go",
            "straight to the checks. A case whose verdict differs from the expected one, or an executed",
            "notebook that changed a file outside its sandbox, fails the test run.",
            "",
            f"**Totals: {len(CASES)} cases, {len(results)} gradings · false passes {false_passes} · "
            f"escapes {escapes} · grader crashes {crashes} · "
            f"verdicts as expected {expected}/{len(results)}.**",
            "",
            *([honest, ""] if honest else []),
            "| submission | what it tries | graded as | verdict (bubblewrap) | verdict (bubblewrap hidden) "
            "| the grader's reason | as expected |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "## What each sandbox mode enforces on this machine",
            "",
            "A probe started by the sandbox's own launcher (grader/execute/launcher.py), as the grader",
            'starts a kernel, tries each of these; "blocked" is what it saw. `--sandbox auto` (the',
            "default) takes bwrap, else namespaces, else refuses to grade; `none` only when asked for,",
            "and every report graded so says so. A batch grades with a warm worker per slot (the",
            "grader's base model loaded once, a sandboxed kernel per submission) only in an isolating",
            "mode: with `none` each submission gets a grader process of its own, as a kernel with the",
            "instructor's privileges could otherwise reach the worker that grades the next ones.",
            "",
            "| mode | " + " | ".join(attempts) + " |",
            "|---|" + "---|" * len(attempts),
            *(mode_rows or ["| (not run) |"]),
            "",
            "## Property-based fuzzing (hypothesis)",
            "",
            "Every generated input either loads or raises the grader's own one-line `LabError`;",
            "no other exception escapes (tests/test_adversarial.py).",
            "",
            *(fuzz_lines or ["- (not run in the run that wrote this file)"]),
            "",
        ]
    )


def verdict_rows(text: str) -> list[tuple[str, ...]]:
    """The rows of a rendered report without the reason column (it quotes machine-specific error
    text such as a resolver's message): name, attack, graded as, both verdicts, as expected; and
    the sandbox modes' rows. The honest catalogue's table (tests/test_honest.py checks it) is left out."""
    from honest import honest_section

    section = honest_section(text)
    rows = []
    for line in text.replace(section, "").splitlines() if section else text.splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 7 and cells[0] != "submission":
            rows.append((cells[0], cells[1], cells[2], cells[3], cells[4], cells[6]))
        elif line.startswith("| ") and cells[0] != "mode" and len(cells) not in (6, 7):
            rows.append(tuple(cells))
    return rows
