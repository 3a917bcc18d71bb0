"""The learner's self-check: the grader's own visible checks, run from inside the notebook.

``grader.check()`` saves the notebook's artefacts exactly as the grader's cell does, then runs
``python -m grader verify`` on them in a separate, clean process — the same code, thresholds and
messages as grading. Hidden checks are not run: it says "visible checks only".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from grader.artefacts import save_artefacts
from grader.config import GradingConfig, load_config
from lab_utils.models import model_from_env

CHECKS_ENV = "SD_LORA_LAB_CHECKS"


def course_config() -> GradingConfig:
    """What this course's grader requires: ``$SD_LORA_LAB_CHECKS`` if set, else the seed lab's
    (``.lora.rank``, ``.lora.alpha``, ``.lora.targets``, ``.option(check, key)``)."""
    path = os.environ.get(CHECKS_ENV)
    return load_config(path) if path else GradingConfig()


def _caller_namespace() -> dict:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            return shell.user_ns
    except ImportError:
        pass
    frame = sys._getframe(2)  # check() → _caller_namespace() → the caller
    return frame.f_globals


def check(namespace: dict | None = None, checks: str | None = None, model: str | None = None) -> list[dict]:
    """Run the visible checks on the notebook's current state; print the table; return the results.

    Args:
        namespace: the variables to check (default: the notebook's).
        checks: a checks file (default: ``$SD_LORA_LAB_CHECKS``, else the seed lab's defaults).
        model: the base model (default: ``$SD_LORA_LAB_MODEL``, else ``tiny``).
    """
    namespace = namespace if namespace is not None else _caller_namespace()
    checks = checks or os.environ.get(CHECKS_ENV) or None
    with tempfile.TemporaryDirectory(prefix="sd-lora-lab-check-") as tmp:
        artefacts, out = Path(tmp) / "artefacts", Path(tmp) / "checks.json"
        save_artefacts(artefacts, namespace)
        command = [sys.executable, "-m", "grader", "verify", str(artefacts), "--visible-only"]
        command += ["--model", model or model_from_env(), "--json", str(out)]
        if checks:
            command += ["--checks", str(checks)]
        result = subprocess.run(command, capture_output=True, text=True)
        print(result.stdout, end="")
        if result.returncode not in (0, 1) or not out.is_file():
            print(
                result.stderr.strip().splitlines()[-1]
                if result.stderr.strip()
                else "self-check failed to run"
            )
            return []
        return json.loads(out.read_text())["checks"]
