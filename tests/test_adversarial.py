"""The grader cannot be fooled or broken: every submission of the adversarial catalogue
(tests/adversarial.py) gets its expected verdict and reason, the grader never crashes or hangs, and
nothing outside the sandbox changes. Property-based tests fuzz the notebook reader, the artefact
reader and the checks loader. The last test compares docs/RELIABILITY.md with this run's verdicts
(``--write-reliability`` rewrites it). pytest-xdist runs a whole file in one worker
(``--dist loadfile``), so the last test sees every case's result."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from adversarial import (
    CANARY_NAME,
    CASES,
    FIND_GRADER,
    FUZZ,
    GRADER_FILE,
    RELIABILITY,
    RESULTS,
    ROOT,
    Case,
    render_reliability,
    runs,
    tmp_canary,
    verdict_rows,
)
from helpers import cells, config, grade_artefacts, path_without, solution_with
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grader import GradingConfig, grade_notebook, load_config
from grader.execute.processes import can_limit_processes, descendants
from grader.execute.sandbox import bwrap_works, namespaces_problem
from grader.grade import reflections
from grader.notebook import cell_steps, read_notebook
from lab_utils.errors import LabError
from lab_utils.files import shown

MARGIN = 120.0  # seconds the grader may take beyond the notebook's own timeout (model load, checks)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _short(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def pick_sandbox(sandbox: str, monkeypatch, request) -> None:
    """Leave the grader to choose (auto) on a machine with bubblewrap, or with it hidden from PATH
    (the PATH's folder lies outside the test's own, which the kernel does not see)."""
    request.addfinalizer(bwrap_works.cache_clear)
    if sandbox == "namespaces":
        shared = request.getfixturevalue("tmp_path_factory").getbasetemp() / "path-without-bwrap"
        monkeypatch.setenv("PATH", path_without("bwrap", shared))
        bwrap_works.cache_clear()
        if namespaces_problem() is not None:
            pytest.skip(f"the grader cannot build namespaces here: {namespaces_problem()}")
    elif not bwrap_works():
        pytest.skip("needs bubblewrap (apt install bubblewrap; .ci/run installs it)")


def every_sandbox(config) -> bool:
    """Whether every executed notebook is graded in both sandboxes (CI: ``--all-sandboxes``; also
    when the report is rewritten)."""
    return bool(config.getoption("--all-sandboxes") or config.getoption("--write-reliability"))


def pytest_generate_tests(metafunc) -> None:
    if metafunc.function.__name__ == "test_adversarial_submission":
        gradings = runs(every_sandbox(metafunc.config))
        metafunc.parametrize(
            ("case", "sandbox"), gradings, ids=[f"{c.name} [{s}]" if s else c.name for c, s in gradings]
        )


@pytest.mark.notebook
def test_adversarial_submission(case: Case, sandbox: str, tmp_path: Path, monkeypatch, request) -> None:
    if case.needs == "cgroup" and not can_limit_processes():
        pytest.skip("running as root without a writable pids control group: a fork bomb is not containable")
    if sandbox:
        pick_sandbox(sandbox, monkeypatch, request)
    canary = tmp_path / CANARY_NAME
    canary.write_text("untouched")
    outside = tmp_canary(tmp_path)
    outside.write_text("untouched")
    request.addfinalizer(lambda: [p.unlink(missing_ok=True) for p in (outside, Path(f"{outside}.dropped"))])
    grader_digest = _digest(GRADER_FILE)
    record = {"verdict": "", "reason": "", "false_pass": False, "crash": False, "as_expected": False}
    record["escaped"] = False
    RESULTS[(case.name, sandbox)] = record

    if case.kind == "file":
        path = case.build(tmp_path)
        result = subprocess.run(
            [sys.executable, "-m", "grader", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=300
        )
        lines = result.stderr.strip().splitlines()
        record.update(
            verdict=f"rejected (exit {result.returncode})",
            reason=_cell(_short(lines[-1].replace(str(path), "submission.ipynb"))) if lines else "",
            crash=result.returncode not in (1, 2) or "Traceback" in result.stderr,
            false_pass=result.returncode == 0,
        )
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert case.reasons["stderr"] in lines[0]
        record["as_expected"] = True
        return

    grading = config(**case.config)
    results = tmp_path / "results"
    before = descendants(os.getpid())  # another test's orphans may be re-parented to this process
    try:
        if case.kind == "artefacts":
            report, _ = grade_artefacts(case.build(tmp_path, request.getfixturevalue("pipe")), grading)
        else:
            report = grade_notebook(case.build(tmp_path), config=grading, output=results)
    except Exception:
        record["crash"] = True
        raise
    failure = report.execution.get("failure")
    failed = [c for c in report.checks if not c.passed]
    parts = [failure] if failure else []
    parts += [note for note in report.notes if "output" in note]
    parts += [f"{c.name}: {_short(c.cause)}" for c in failed if c.cause and c.cause != failure]
    record.update(
        verdict=f"{report.score:g}/{report.max_score:g}",
        reason=_cell("; ".join(parts)),
        false_pass=report.passed or report.score > case.score,
    )
    # the verdict
    assert not report.passed and report.score == case.score, (
        report.score,
        failure,
        [c.cause for c in failed],
    )
    by_name = {c.name: c for c in report.checks}
    for where, words in case.reasons.items():
        if where == "failure":
            assert failure and words in failure, failure
        elif where == "notes":
            assert any(words in note for note in report.notes), report.notes
        else:
            assert not by_name[where].passed and words in (by_name[where].cause or ""), by_name[where].cause
    for name, text in case.measured.items():
        assert by_name[name].measured == text, (name, by_name[name].measured)
    if case.kind == "notebook":
        # the grader stayed in control: results written by it, nothing left running, on time
        written = json.loads((results / "results.json").read_text())
        assert written["score"] == report.score
        assert descendants(os.getpid()) - before == set()
        assert report.seconds < grading.timeouts.total + MARGIN
        # nothing outside the sandbox changed: beside the submission, in /tmp, in the grader
        record["escaped"] = (
            canary.read_text() != "untouched"
            or outside.read_text() != "untouched"
            or _digest(GRADER_FILE) != grader_digest
            or (tmp_path / "dropped.txt").exists()
            or Path(f"{outside}.dropped").exists()
        )
        assert not record["escaped"], "the notebook changed a file outside its sandbox"
        assert report.execution["sandbox"] == sandbox  # what auto picks: bubblewrap, else namespaces
    record["as_expected"] = True


@pytest.mark.notebook
@pytest.mark.parametrize("sandbox", ["bwrap", "namespaces"])
def test_a_warm_worker_grades_the_next_submission_untouched_by_an_attacker(
    sandbox: str, tmp_path: Path, monkeypatch, request
) -> None:
    """A batch's warm worker (one slot: both submissions go through the same process) grades an
    attacker that looks for the grader in /proc (its cell fails if it sees one) and SIGKILLs
    everything it sees, then a correct lab: the attacker ran whole and was graded — the worker was
    out of its sight and survived it — and the lab after it gets full marks."""
    if not every_sandbox(request.config):
        pytest.skip("a batch in both sandboxes: .ci/run's --all-sandboxes step")
    pick_sandbox(sandbox, monkeypatch, request)
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    for name, build in (("a_attacker", cells(FIND_GRADER)), ("b_lab", solution_with(quick=True))):
        (tmp_path / name).mkdir()
        (submissions / f"{name}.ipynb").write_bytes(build(tmp_path / name).read_bytes())
    command = [sys.executable, "-m", "grader", "batch", str(submissions), "-o", str(tmp_path / "out")]
    done = subprocess.run([*command, "--workers", "1"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    book = {r["submission"]: r for r in csv.DictReader((tmp_path / "out" / "gradebook.csv").open())}
    assert book["a_attacker"]["status"] == "failed" and float(book["a_attacker"]["total"]) == 0, book
    assert book["a_attacker"]["failure"] == "", book  # it ran whole: it saw no grader process to kill
    assert book["b_lab"]["status"] == "passed" and float(book["b_lab"]["total"]) == 3, book


def test_catalogue_covers_the_required_attacks() -> None:
    names = {c.name for c in CASES}
    assert len(names) == len(CASES) >= 20
    for required in (
        "infinite loop",
        "fork bomb",
        "memory exhaustion",
        "segfault",
        "network access",
        "wrong alpha",
    ):
        assert required in names


# --- property-based fuzzing ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
cell_like = st.fixed_dictionaries(
    {"cell_type": st.sampled_from(["code", "markdown", "raw", "other"]), "source": st.text(max_size=40)},
    optional={
        "metadata": st.dictionaries(st.sampled_from(["lab", "tags", "x"]), json_values, max_size=2),
        "outputs": st.lists(json_values, max_size=2),
        "execution_count": st.none() | st.integers(),
        "id": st.text(max_size=10),
    },
)
notebook_like = st.fixed_dictionaries(
    {"cells": st.lists(cell_like, max_size=4)},
    optional={
        "nbformat": st.sampled_from([3, 4, 5, "4"]),
        "nbformat_minor": st.integers(-1, 6),
        "metadata": st.dictionaries(st.text(max_size=8), json_values, max_size=2),
    },
)
FUZZ_SETTINGS = settings(
    max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _count(target: str) -> None:
    FUZZ[target] = FUZZ.get(target, 0) + 1


@FUZZ_SETTINGS
@given(
    content=st.binary(max_size=300)
    | st.text(max_size=300).map(str.encode)
    | notebook_like.map(lambda nb: json.dumps(nb).encode())
)
def test_fuzz_notebook_reader(content: bytes) -> None:
    _count("notebook reader (bytes, text, notebook-shaped JSON)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.ipynb"
        path.write_bytes(content)
        try:
            nb = read_notebook(path)
        except LabError as error:
            assert str(error) and "\n" not in str(error).strip()
            return
        assert isinstance(nb, nbformat.NotebookNode)
        cell_steps(nb)  # what the grader does next with a notebook it accepted
        reflections(nb)


record_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
records = st.dictionaries(
    st.sampled_from(["prompt", "seed", "steps", "guidance", "size", "lora_scale", "extra"]), record_values
)
manifests = json_values | st.fixed_dictionaries(
    {},
    optional={
        "images": st.dictionaries(
            st.sampled_from(["baseline_image", "adapted_image", "other"]),
            st.fixed_dictionaries({}, optional={"record": records | json_values}) | json_values,
        ),
        "adapter": json_values,
        "errors": json_values,
    },
)


@FUZZ_SETTINGS
@given(manifest=manifests, pngs=st.booleans(), adapter_config=json_values, pickle=st.booleans())
def test_fuzz_artefact_reader(manifest, pngs: bool, adapter_config, pickle: bool) -> None:
    """The artefact folder is writable by the kernel: whatever is in it, reading it never raises,
    never accepts a pickle, and a record is either rejected or within range."""
    from PIL import Image

    from grader.artefacts import read_artefacts
    from grader.checks.context import MAX_STEPS, Context

    _count("artefact reader (forged manifests, records, adapter configs)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        if pngs:
            for name in ("baseline_image", "adapted_image"):
                Image.new("RGB", (64, 64)).save(folder / f"{name}.png")
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_config.json").write_text(json.dumps(adapter_config))
        (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"")
        if pickle:
            (folder / "adapter" / "adapter_model.bin").write_bytes(b"")
        found = read_artefacts(folder)
        assert not (pickle and found.adapter_dir is not None)
        context = Context(found, None, GradingConfig(), None, None, None, None, set(), 0)  # type: ignore[arg-type]
        for name in found.images:
            record, problem = context.record(name)
            assert record is None or (
                problem is None and 1 <= record.steps <= MAX_STEPS and record.size == (64, 64)
            )


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


scalar = (
    st.booleans()
    | st.integers(-10, 10**6)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        ["attn", "cross", "self", "full", "visible", "hidden", "auto", "bwrap", "namespaces", "none"]
    )
)
value = scalar | st.lists(scalar, max_size=3)
KEYS = {
    "lora": ["rank", "alpha", "targets", "use_rslora", "oops"],
    "timeouts": ["cell", "total", "startup"],
    "limits": ["sandbox", "memory_gb", "processes", "file_size_mb", "output_mb", "gpu_memory_fraction"],
    "checks.parameter_count": ["points", "visibility", "step"],
    "checks.pixel_difference": ["points", "min_mean_abs_diff", "image_tolerance", "visibility"],
    "checks.export_reloads": ["points", "image_tolerance", "step"],
    "checks.nope": ["points"],
    "extra": ["x"],
}


@st.composite
def checks_files(draw) -> str:
    if draw(st.booleans()):
        return draw(st.text(max_size=200))  # arbitrary text: mostly not TOML at all
    lines = []
    for table in draw(st.lists(st.sampled_from(sorted(KEYS)), max_size=4, unique=True)):
        lines.append(f"[{table}]")
        for key in draw(st.lists(st.sampled_from(KEYS[table]), max_size=4, unique=True)):
            lines.append(f"{key} = {_toml_value(draw(value))}")
    return "\n".join(lines) + "\n"


@FUZZ_SETTINGS
@given(text=checks_files())
def test_fuzz_checks_file_loader(text: str) -> None:
    _count("checks-file loader (text and TOML with random keys and values)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checks.toml"
        path.write_text(text, errors="surrogatepass")
        try:
            config = load_config(path)
        except LabError as error:
            assert str(error) and "\n" not in str(error).strip() and str(path) in str(error)
            return
        assert isinstance(config, GradingConfig)
        timeouts = config.timeouts
        assert config.max_score >= 0 and timeouts.cell > 0 and math.isfinite(timeouts.total)
        assert (
            config.limits.sandbox in ("auto", "bwrap", "namespaces", "none") and config.limits.memory_gb > 0
        )


ADAPTER_KEYS = st.sampled_from(
    [
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight",
        "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora_A.weight",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
        "something.else",
    ]
) | st.text(max_size=30)
shapes = st.lists(st.integers(0, 6), max_size=3)


@st.composite
def adapter_files(draw) -> bytes:
    """Safetensors-shaped bytes: a header of adapter-like keys, shapes, dtypes and offsets (often
    inconsistent), metadata, a body of random length — or arbitrary bytes."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=200))
    header: dict = {}
    offset = 0
    for key in draw(st.lists(ADAPTER_KEYS, max_size=5, unique=True)):
        shape = draw(shapes)
        dtype = draw(st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "X9"]))
        size = (4 if dtype == "F32" else 2) * math.prod(shape)
        size = draw(st.sampled_from([size, size, max(0, size - 2), size + 4]))
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(
            st.dictionaries(
                st.sampled_from(["ss_network_alpha", "ss_network_dim", "lora_adapter_metadata", "x"]),
                st.text(max_size=20) | st.just('{"unet.r": 4}'),
                max_size=3,
            )
        )
    body = json.dumps(header).encode()
    length = draw(st.sampled_from([len(body), len(body), len(body) + 7, 10**12]))
    return length.to_bytes(8, "little") + body + bytes(draw(st.integers(0, max(0, offset + 8))))


@FUZZ_SETTINGS
@given(content=adapter_files(), as_folder=st.sampled_from([None, "peft", "diffusers"]), config=json_values)
def test_fuzz_adapter_reader(content: bytes, as_folder, config) -> None:
    """Any adapter file a learner or a client could hand in: read, or one line naming it."""
    from lab_utils.adapters.load import AdapterFile, read_adapter_file

    _count("adapter reader (safetensors-shaped bytes: kohya, diffusers and PEFT keys, metadata)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if as_folder == "peft":
            (folder / "adapter_config.json").write_text(json.dumps(config))
            path = folder / "adapter_model.safetensors"
        elif as_folder == "diffusers":
            path = folder / "pytorch_lora_weights.safetensors"
        else:
            path = folder / "lora.safetensors"
        path.write_bytes(content)
        try:
            found = read_adapter_file(folder if as_folder else path)
        except LabError as error:
            assert str(error) and "\n" not in str(error).strip()
            return
        assert isinstance(found, AdapterFile)


ENTRY_NAMES = st.sampled_from(
    [
        b"alice.ipynb",
        b"bob.ipynb",
        b".ipynb_checkpoints",
        b"sub",
        b"\xff.ipynb",
        b"caf\xc3\xa9.ipynb",
        b"x.txt",
        b"dir.ipynb",
        b"a b.ipynb",
    ]
)
entries = st.lists(
    st.tuples(
        st.lists(st.sampled_from([b"sub", b"deep", b".ipynb_checkpoints", b"\xfe"]), max_size=2),
        ENTRY_NAMES,
        st.sampled_from(["file", "empty", "folder", "loop", "up", "broken"]),
    ),
    max_size=8,
)


@FUZZ_SETTINGS
@given(tree=entries)
def test_fuzz_submissions_walk(tree) -> None:
    """Any class folder — odd names, folders named .ipynb, links that loop or point up, broken
    links: the walk ends, lists each notebook-named entry once with a distinct id, or says in one
    line that there is none."""
    from grader.batch import find_submissions

    _count("submissions folder walk (odd names, loops, links up, broken links, folders named .ipynb)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "subs"
        root.mkdir()
        for parents, name, kind in tree:
            folder = Path(os.fsdecode(b"/".join([os.fsencode(root), *parents])))
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError:  # an earlier entry made a file of that name
                continue
            path = folder / os.fsdecode(name)
            if os.path.lexists(path):
                continue
            if kind == "file":
                path.write_text("{}")
            elif kind == "empty":
                path.write_bytes(b"")
            elif kind == "folder":
                path.mkdir()
            elif kind == "loop":
                path.symlink_to(path.name)
            elif kind == "up":
                path.symlink_to(root)
            else:
                path.symlink_to(root / "nowhere")
        try:
            found = find_submissions(root)
        except LabError as error:
            assert "has no .ipynb files" in str(error) and "\n" not in str(error)
            return
        ids = [s.id for s in found]
        assert len(ids) == len(set(ids)) and all(s.path.name.endswith(".ipynb") for s in found)
        assert not any(".ipynb_checkpoints" in s.path.parts for s in found)
        shown(str(found[0].path)).encode("utf-8")  # every path prints


# --- what each sandbox mode enforces (rendered into docs/RELIABILITY.md) -----------------------------

MODES: dict[str, dict[str, str]] = {}  # mode → attempt → "blocked" | "possible"
MODE_PROBE = """
import json, os, socket
a = json.loads(os.environ["SD_LORA_LAB_PROBE"])
def attempt(action):
    try:
        return "possible" if action() is not False else "blocked"
    except OSError:
        return "blocked"
def signal_grader():
    os.kill(a["pid"], 0)
    return open(f"/proc/{a['pid']}/cmdline", "rb").read() == a["cmdline"].encode()
found = {
    "write a file in /tmp": attempt(lambda: open(a["tmp"], "a").write("x")),
    "write beside the submission": attempt(lambda: open(a["beside"], "a").write("x")),
    "write into the grader's package": attempt(lambda: open(a["package"], "x").close()),
    "list the other submissions": attempt(lambda: bool(os.listdir(a["folder"]))),
    "see or signal the grader": attempt(signal_grader),
    "reach a network interface": attempt(lambda: any(n != "lo" for _, n in socket.if_nameindex())),
    "keep a capability": attempt(lambda: any(
        l.split()[1].strip("0") for l in open("/proc/self/status") if l.startswith("CapEff"))),
}
print(json.dumps(found))
"""


def _probe_mode(
    spec_path: Path,
    env: dict[str, str],
    args: dict,
    as_user: list[str] | None = None,
    python: str = sys.executable,
) -> dict:
    env = {**env, "SD_LORA_LAB_PROBE": json.dumps(args)}
    launcher = [python, "-m", "grader.execute.launcher", str(spec_path), "--"]  # standard library only
    result = subprocess.run(
        [*(as_user or []), *launcher, python, "-c", MODE_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _reachable_by_anyone(program: str) -> bool:
    """Whether a user without privileges may run ``program``: every folder above it searchable by all."""
    path = Path(os.path.realpath(program))
    return path.is_file() and all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def test_each_sandbox_mode_blocks_what_it_claims(tmp_path: Path, monkeypatch, request) -> None:
    """The launcher as the grader starts it, with a probe instead of a kernel: bubblewrap and the
    grader's own namespaces (as root; as an unprivileged user with user namespaces) block every
    attempt; --sandbox none blocks none of them — which is why it must be asked for."""
    import shutil
    import uuid

    from grader.config import Limits
    from grader.execute.sandbox import PRIVATE, launcher_spec, prepare

    submissions = tmp_path / "submissions"
    submissions.mkdir()
    (submissions / "other-student.ipynb").write_text("{}")
    outside = tmp_canary(tmp_path)
    package = GRADER_FILE.parent / f".sandbox-probe-{uuid.uuid4().hex[:8]}"
    request.addfinalizer(lambda: [p.unlink(missing_ok=True) for p in (outside, package)])
    args = {
        "tmp": str(outside),
        "beside": str(submissions / "canary.txt"),
        "package": str(package),
        "folder": str(submissions),
        "pid": os.getpid(),
        "cmdline": Path("/proc/self/cmdline").read_text(),
    }
    modes = ["bwrap", "namespaces", "none"]
    for mode in modes:
        if mode == "bwrap" and not bwrap_works():
            continue
        if mode == "namespaces" and namespaces_problem() is not None:
            continue
        run_dir = tmp_path / mode
        sandbox = prepare(run_dir, Limits(sandbox=mode), hidden=(submissions,))
        try:
            found = _probe_mode(run_dir / "sandbox-spec.json", sandbox.environment({}), args)
        finally:
            sandbox.kill_all()
        label = {"namespaces": "namespaces (root)"}.get(mode, mode)
        MODES[label] = found
        for p in (outside, package, submissions / "canary.txt"):
            p.unlink(missing_ok=True)
    setpriv = shutil.which("setpriv")
    python = next((p for p in (sys.executable, "/usr/bin/python3") if _reachable_by_anyone(p)), None)
    if os.geteuid() == 0 and setpriv and python and namespaces_problem() is None:
        # an unprivileged instructor: the namespaces start from a user namespace
        base = Path(tempfile.mkdtemp(prefix="sd-lora-lab-unprivileged-"))
        request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
        os.chmod(base, 0o755)  # the probe must reach the folders it is to be denied
        run_dir, theirs = base / "run", base / "submissions"
        theirs.mkdir(mode=0o777)
        (theirs / "other-student.ipynb").write_text("{}")
        for folder in (run_dir, *(run_dir / sub for sub in PRIVATE)):
            folder.mkdir()
            os.chown(folder, 65534, 65534)
        limits = Limits(memory_gb=1, processes=256, file_size_mb=1)
        spec = launcher_spec(run_dir, "namespaces", limits, hidden=[str(theirs)])
        (run_dir / "spec.json").write_text(json.dumps(spec))
        outside.touch()
        os.chmod(outside, 0o666)
        user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        env = {"PATH": os.environ["PATH"], "HOME": str(run_dir / "home"), "PYTHONPATH": str(ROOT)}
        mine = {**args, "beside": str(theirs / "canary.txt"), "folder": str(theirs)}
        try:
            MODES["namespaces (unprivileged user)"] = _probe_mode(
                run_dir / "spec.json", env, mine, user, python
            )
        finally:
            outside.unlink(missing_ok=True)
    for mode, found in MODES.items():
        if mode == "none":
            assert found["write a file in /tmp"] == "possible", found  # the probe can see an escape
        else:
            assert set(found.values()) == {"blocked"}, (mode, found)


# --- docs/RELIABILITY.md ----------------------------------------------------------------------------


def test_reliability_report_lists_every_catalogue_case() -> None:
    """Without grading anything: a case added to the catalogue must appear in the committed report."""
    text = RELIABILITY.read_text()
    assert (
        f"{len(CASES)} cases, {len(runs())} gradings · false passes 0 · escapes 0 · grader crashes 0" in text
    )
    for case in CASES:
        assert f"| {case.name} | " in text and "**NO**" not in text


def test_reliability_report_matches_this_run(request) -> None:
    """Runs last in this module (same worker as every case): the committed report must list this
    run's verdicts; ``--write-reliability`` rewrites it."""
    everything = every_sandbox(request.config)
    expected = {(c.name, s) for c, s in runs(everything)}
    if set(RESULTS) != expected or len(MODES) < 3:
        pytest.skip(
            f"{len(expected - set(RESULTS))} catalogue gradings did not run here (skipped or deselected)"
        )
    text = render_reliability(RESULTS, FUZZ, MODES)
    if request.config.getoption("--write-reliability"):
        RELIABILITY.write_text(text)
    committed = RELIABILITY.read_text() if RELIABILITY.is_file() else ""
    stale = (
        "docs/RELIABILITY.md is stale: run "
        "`HF_HUB_OFFLINE=1 python -m pytest tests/test_adversarial.py --write-reliability`"
    )
    mine, theirs = verdict_rows(text), verdict_rows(committed)
    if not everything:  # a verdict this run did not grade is compared by the run that does (CI)
        theirs = [
            tuple(
                "not graded in this run" if m == "not graded in this run" else t
                for m, t in zip(row, other, strict=False)
            )
            for row, other in zip(mine, theirs, strict=False)
        ] + theirs[len(mine) :]
    assert theirs == mine, stale
    totals = next(line for line in text.splitlines() if line.startswith("**Totals:"))
    assert "false passes 0 · escapes 0 · grader crashes 0" in totals, totals
    assert not everything or totals in committed, stale
    assert all(f"{target}: {n} generated inputs" in committed for target, n in FUZZ.items()), stale
