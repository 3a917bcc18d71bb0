"""Gradescope: the autograder zip the grader builds, and what runs inside Gradescope's container.

``python -m grader gradescope -o autograder.zip [--checks F] [--model M] [--timeout S] [--memory-gb G]``
writes the zip Gradescope's "zip file upload" takes — at its root ``setup.sh`` (run once when
Gradescope builds the image: a Python ≥ 3.11 venv with CPU torch and this machine's versions of the
grader's dependencies, bubblewrap) and ``run_autograder`` (run for every submission); ``source/``
the zip also holds the ``grader`` and ``lab_utils`` packages (the built-in model inside them),
``settings.json``, ``requirements.txt``, and the checks file and model folder where given — Gradescope
unpacks it all into ``/autograder/source``. Nothing downloads at
grading time.

``run_autograder`` writes a results.json before anything else ("grading did not finish"), runs
``python -m grader.platforms.gradescope run`` under the zip's time limit — it finds the one notebook
in ``submission/``, grades it with timeouts inside Gradescope's and rewrites results.json as checks
finish — then ``… finish``, which turns a results.json a crash, a kill or the time limit left
unfinished into one that says so. So ``results/results.json`` is always there, and always valid.

The ``/autograder`` root is ``$SD_LORA_LAB_AUTOGRADER_ROOT`` when set (the tests run the real
scripts in a temporary root), the Python ``$SD_LORA_LAB_PYTHON`` (default: the venv setup.sh made).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import re
import signal
import sys
import traceback
import zipfile
from dataclasses import replace
from pathlib import Path

from grader.files import write_json
from grader.outputs.gradescope import error_results, summary_output
from lab_utils.errors import LabError
from lab_utils.files import atomic_path, shown
from lab_utils.models import resolve_model

PACKAGES = ("grader", "lab_utils")
NOTEBOOK = "sd_lora_lab.ipynb"  # the name the lab hands out (only used in messages)
GRADESCOPE_MAX_S = 2400  # Gradescope's longest autograder timeout (40 min); its default is 600
FINISH_S = 30  # kept back from Gradescope's timeout for `finish` to write the last results.json
GRADER_S = 60  # kept back for the kernel start and the grader's own verification
MIN_TIMEOUT_S = 180
GRADER_GB = 0.25  # the grader process while the kernel runs (it imports torch only to verify, after)
MIN_MEMORY_GB = 0.75
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # CPU wheels: Gradescope has no GPU
VENV = "sd-lora-lab-venv"


# --- building the zip ------------------------------------------------------------------------------


def pinned_requirements() -> tuple[str, list[str]]:
    """(torch version, the other runtime dependencies pinned to the versions installed here)."""
    try:
        requires = importlib.metadata.requires("sd-lora-lab") or []
    except importlib.metadata.PackageNotFoundError:
        raise LabError(
            "the sd-lora-lab package is not installed: run `pip install -e .` in the lab's folder first"
        ) from None
    pins = []
    for requirement in requires:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]
        pins.append((name, importlib.metadata.version(name).split("+")[0]))
    torch = dict(pins).pop("torch")
    return torch, [f"{name}=={version}" for name, version in pins if name != "torch"]


def _package_files() -> list[tuple[Path, str]]:
    files = []
    for package in PACKAGES:
        root = Path(importlib.import_module(package).__path__[0])
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append((path, f"{package}/{path.relative_to(root).as_posix()}"))
    return files


def setup_script(torch: str) -> str:
    return f"""#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image (Ubuntu, network on).
# It makes a venv with a Python >= 3.11, CPU torch and the pinned requirements, and installs
# bubblewrap for the grader's sandbox. Nothing downloads later, at grading time.
set -euo pipefail
SOURCE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
ROOT="${{SD_LORA_LAB_AUTOGRADER_ROOT:-/autograder}}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq bubblewrap ca-certificates
PY=""
for candidate in python3.13 python3.12 python3.11; do  # one that runs (a shim may not) and is >= 3.11
  if "$candidate" -c 'import sys, venv; assert sys.version_info >= (3, 11)' >/dev/null 2>&1; then
    PY="$candidate"; break
  fi
done
if [ -z "$PY" ]; then  # Ubuntu 22.04 ships 3.10: take 3.11 from the archive, else deadsnakes
  apt-get install -y -qq python3.11 python3.11-venv || {{
    apt-get install -y -qq software-properties-common
    add-apt-repository -y ppa:deadsnakes/ppa && apt-get update -qq
    apt-get install -y -qq python3.11 python3.11-venv
  }}
  PY=python3.11
fi
apt-get install -y -qq "$PY-venv" >/dev/null 2>&1 || true
"$PY" -m venv "$ROOT/{VENV}"
VENV_PY="$ROOT/{VENV}/bin/python"
"$VENV_PY" -m pip install -q --upgrade pip
"$VENV_PY" -m pip install -q "torch=={torch}" --index-url "${{SD_LORA_LAB_TORCH_INDEX:-{TORCH_INDEX}}}"
"$VENV_PY" -m pip install -q -r "$SOURCE/requirements.txt"
# a smoke test that also fills the caches: the built-in model loads, the grader imports
PYTHONPATH="$SOURCE" HF_HUB_OFFLINE=1 "$VENV_PY" -m grader.platforms.gradescope check --root "$ROOT"
"""


def run_script(limit_s: float) -> str:
    return f"""#!/usr/bin/env bash
# Gradescope runs this for every submission. It always leaves results/results.json: a placeholder
# first, the grader's own as checks finish, and `finish` for a run a crash or the time limit stopped.
ROOT="${{SD_LORA_LAB_AUTOGRADER_ROOT:-/autograder}}"
PY="${{SD_LORA_LAB_PYTHON:-$ROOT/{VENV}/bin/python}}"
LIMIT="${{SD_LORA_LAB_AUTOGRADER_LIMIT:-{limit_s:g}}}"  # seconds: inside Gradescope's timeout
mkdir -p "$ROOT/results"
cat > "$ROOT/results/.results.json.tmp" <<'JSON'
{{"score": 0, "output": "**Grading did not finish.** Your instructor sees the autograder log.",
 "output_format": "md", "tests": [], "extra_data": {{"status": "starting"}}}}
JSON
mv "$ROOT/results/.results.json.tmp" "$ROOT/results/results.json"
export HF_HUB_OFFLINE=1 PYTHONPATH="$ROOT/source${{PYTHONPATH:+:$PYTHONPATH}}"
cd "$ROOT"
timeout --signal=TERM --kill-after=10 "$LIMIT" "$PY" -m grader.platforms.gradescope run --root "$ROOT"
code=$?
"$PY" -m grader.platforms.gradescope finish --root "$ROOT" --exit-code "$code" --limit "$LIMIT"
exit 0
"""


def _add(archive: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
    info.external_attr = (0o100755 if executable else 0o100644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def build_autograder(
    output: Path,
    model: str,
    checks: Path | None = None,
    timeout: float = 600,
    memory_gb: float = MIN_MEMORY_GB,
) -> Path:
    """Write Gradescope's autograder zip to ``output`` (atomically); returns its path.

    Raises:
        LabError: a bad option, checks file or model (one line naming it).
    """
    from grader.config import GradingConfig, load_config

    if not MIN_TIMEOUT_S <= timeout <= GRADESCOPE_MAX_S:
        raise LabError(
            f"--timeout must be between {MIN_TIMEOUT_S} and {GRADESCOPE_MAX_S} s, Gradescope's longest "
            f"(got {timeout:g}): set it to the autograder timeout chosen in Gradescope's settings"
        )
    if memory_gb < MIN_MEMORY_GB:
        raise LabError(
            f"--memory-gb must be at least {MIN_MEMORY_GB:g}, Gradescope's smallest (got {memory_gb:g})"
        )
    config = load_config(checks) if checks else GradingConfig()  # a bad file fails here, not on Gradescope
    if model != "tiny" and not Path(model).is_dir():
        raise LabError(
            f"--model '{shown(model)}': Gradescope grades offline on a CPU, so the autograder takes "
            "'tiny' (the built-in model) or a local model folder, which goes into the zip"
        )
    spec = resolve_model(model)
    if output.suffix != ".zip":
        raise LabError(f"-o '{output}': the autograder must be a .zip file")
    torch, requirements = pinned_requirements()
    limit_s = timeout - FINISH_S
    settings = {
        "timeout_s": timeout,
        "limit_s": limit_s,
        "notebook_timeout_s": timeout - FINISH_S - GRADER_S,
        "memory_gb": memory_gb,
        "kernel_memory_gb": round(min(config.limits.memory_gb, memory_gb - GRADER_GB), 2),
        "model": "tiny" if spec.kind == "tiny" else "model",
        "checks": "checks.toml" if checks else None,
        "notebook": NOTEBOOK,
        "max_score": config.max_score,
        "torch": torch,
    }
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        _add(archive, "setup.sh", setup_script(torch).encode(), executable=True)
        _add(archive, "run_autograder", run_script(limit_s).encode(), executable=True)
        _add(archive, "settings.json", (json.dumps(settings, indent=2) + "\n").encode())
        _add(archive, "requirements.txt", ("\n".join(requirements) + "\n").encode())
        if checks:
            _add(archive, "checks.toml", checks.read_bytes())
        for path, name in _package_files():
            _add(archive, name, path.read_bytes())
        if spec.kind != "tiny":  # the folder as given: a diffusers folder, or configs beside one checkpoint
            folder = Path(model).resolve()
            for root, _, names in os.walk(folder):  # links are not followed
                for path in sorted(Path(root, n) for n in names):
                    _add(archive, f"model/{path.relative_to(folder).as_posix()}", path.read_bytes())
    return output


# --- inside Gradescope's container -----------------------------------------------------------------


def autograder_root() -> Path:
    return Path(os.environ.get("SD_LORA_LAB_AUTOGRADER_ROOT", "/autograder"))


def _settings(root: Path) -> dict:
    return json.loads((root / "source" / "settings.json").read_text())


def find_notebook(folder: Path) -> Path:
    """The one notebook in the submission folder.

    Raises:
        LabError: nothing submitted, no notebook, or several (the message the student reads).
    """
    skipped = ("__MACOSX", ".ipynb_checkpoints")
    files = sorted(
        path
        for path in (folder.rglob("*") if folder.is_dir() else ())
        if path.is_file()
        and not any(part.startswith(".") or part in skipped for part in path.relative_to(folder).parts)
    )
    names = ", ".join(f"`{path.relative_to(folder)}`" for path in files[:5]) + (
        ", …" if len(files) > 5 else ""
    )
    if not files:
        raise LabError(f"Nothing was submitted: upload your notebook (`{NOTEBOOK}`).")
    notebooks = [path for path in files if path.suffix == ".ipynb"]
    if not notebooks:
        raise LabError(f"The submission holds no notebook (found {names}): upload your `.ipynb` file.")
    if len(notebooks) > 1:
        listed = ", ".join(f"`{path.relative_to(folder)}`" for path in notebooks)
        raise LabError(f"Several notebooks were submitted ({listed}): submit exactly one `.ipynb` file.")
    return notebooks[0]


def _submission_name(root: Path, notebook: Path) -> str:
    try:
        metadata = json.loads((root / "submission_metadata.json").read_text())
        return f"{notebook.stem} (submission {metadata['id']})"
    except (OSError, ValueError, KeyError, TypeError):
        return notebook.stem


def _config(root: Path, settings: dict):
    from grader.config import GradingConfig, load_config

    source = root / "source"
    config = load_config(source / settings["checks"]) if settings.get("checks") else GradingConfig()
    total = min(config.timeouts.total, settings["notebook_timeout_s"])
    timeouts = replace(config.timeouts, total=total, cell=min(config.timeouts.cell, total))
    limits = replace(config.limits, memory_gb=min(config.limits.memory_gb, settings["kernel_memory_gb"]))
    return replace(config, timeouts=timeouts, limits=limits)


def cpus() -> int:
    """The CPUs this process may use: its affinity, capped by its control group's CFS quota
    (Gradescope's "0.5 CPU" is a quota, which ``nproc`` does not show)."""
    from grader.execute.processes import CGROUP_ROOT, own_cgroup_paths

    count = len(os.sched_getaffinity(0))
    own = own_cgroup_paths()
    if "" in own and (CGROUP_ROOT / "cgroup.controllers").is_file():  # cgroup v2: "max 100000"
        files = [CGROUP_ROOT / own[""].lstrip("/") / "cpu.max"]
    else:
        group = CGROUP_ROOT / "cpu" / own.get("cpu", "/").lstrip("/")
        files = [group / "cpu.cfs_quota_us", group / "cpu.cfs_period_us"]
    try:
        quota, period = " ".join(path.read_text() for path in files).split()[:2]
        if quota not in ("max", "-1"):
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return count


def _stop(signum, frame) -> None:  # the time limit's SIGTERM: unwind, so the kernel is killed too
    raise KeyboardInterrupt


def run(root: Path) -> int:
    """Grade the submission; results.json is rewritten as grading goes. Returns the exit code."""
    from grader.grade import grade_notebook

    signal.signal(signal.SIGTERM, _stop)
    threads = str(cpus())  # one OpenMP thread per usable CPU: more only spin against each other
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    os.environ.setdefault("MKL_NUM_THREADS", threads)
    results = root / "results"
    settings = _settings(root)
    max_score = 0.0
    try:
        config = _config(root, settings)
        max_score = config.max_score
        model = resolve_model("tiny" if settings["model"] == "tiny" else str(root / "source" / "model"))
        notebook = find_notebook(root / "submission")
        print(
            f"grading {notebook} on {model} with the grader from {Path(__file__).parents[1]} "
            f"({os.environ['OMP_NUM_THREADS']} threads, notebook time limit {config.timeouts.total:g} s)"
        )
        report = grade_notebook(
            notebook, model, config, output=results, submission=_submission_name(root, notebook)
        )
    except LabError as error:
        print(f"error: {error}")
        write_json(results / "results.json", error_results(str(error), max_score=max_score))
        return 2
    except KeyboardInterrupt:
        print("stopped by the time limit")
        return 124
    except Exception as error:  # the instructor reads the traceback in Gradescope's log
        traceback.print_exc(file=sys.stdout)
        message = (
            f"The grader itself failed ({type(error).__name__}: {error}); your instructor sees the "
            "details in the autograder log."
        )
        write_json(results / "results.json", error_results(message, max_score=max_score))
        return 3
    print(f"score {report.score:g}/{report.max_score:g}")
    return 0


def finish(root: Path, exit_code: int, limit: float) -> None:
    """Leave a finished results.json whatever stopped the run: a partial one keeps its checks."""
    path = root / "results" / "results.json"
    try:
        data = json.loads(path.read_text())
        status = data["extra_data"]["status"]
    except (OSError, ValueError, KeyError, TypeError):
        data, status = {}, "starting"
    if status in ("graded", "error"):
        return
    timed_out = exit_code in (124, 137)
    why = (
        f"Grading was stopped by its time limit ({limit:g} s)"
        if timed_out
        else f"The grader stopped unexpectedly (exit code {exit_code})"
    )
    if status == "running":  # the checks done so far stand; the rest earn nothing
        extra = data["extra_data"]
        lines = [f"{why} before every check ran: the checks below are those it finished."]
        data["output"] = summary_output(data.get("score", 0.0), extra.get("max_score", 0.0), lines)
        extra["status"] = "timeout" if timed_out else "error"
        write_json(path, data)
        return
    settings = _settings(root) if (root / "source" / "settings.json").is_file() else {}
    message = f"{why} before it could grade anything. Your instructor sees the autograder log."
    status = "timeout" if timed_out else "error"
    write_json(path, error_results(message, status=status, max_score=float(settings.get("max_score", 0.0))))


def check(root: Path) -> int:
    """setup.sh's smoke test: the grader imports and the grading model loads."""
    import lab_utils

    settings = _settings(root)
    model = "tiny" if settings["model"] == "tiny" else str(root / "source" / "model")
    lab_utils.load_pipeline(model, device="cpu")
    print(f"autograder ready: model {settings['model']}, time limit {settings['limit_s']:g} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader.platforms.gradescope")
    parser.add_argument("step", choices=("run", "finish", "check"))
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--limit", type=float, default=0.0)
    args = parser.parse_args(argv)
    root = args.root or autograder_root()
    if args.step == "run":
        return run(root)
    if args.step == "check":
        return check(root)
    finish(root, args.exit_code, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
