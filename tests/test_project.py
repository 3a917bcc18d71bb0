"""The README's commands run as written; .ci/run is the README's test command; environment.yml and
pyproject.toml declare the same dependencies, without torchvision."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    return [block.strip() for block in blocks[:2]]


def test_ci_runs_exactly_the_readme_test_command():
    _, test_command = readme_commands()
    assert "pytest" in test_command
    ci_lines = [
        line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert test_command in ci_lines


def test_readme_main_command_installs_and_grades_the_solution():
    main_command, _ = readme_commands()
    result = subprocess.run(
        ["bash", "-c", main_command], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all checks passed" in result.stdout


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ]", spec.strip(), maxsplit=1)[0].lower()


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "pytorch-gpu" in {_name(d) for d in conda}  # a CUDA build of torch on the pod
    conda_names = {"torch" if _name(d) == "pytorch-gpu" else _name(d) for d in conda} - {"python", "pip"}
    assert {_name(d) for d in project["dependencies"]} <= conda_names
    assert conda_names - {_name(d) for d in project["dependencies"]} == {"jupyterlab"}
    assert pip == ["-e ."]
    # the same version ranges in both
    ranges = {_name(d): d.split(_name(d), 1)[1] for d in project["dependencies"]}
    for dep in conda:
        name = "torch" if _name(dep) == "pytorch-gpu" else _name(dep)
        if name in ranges:
            assert dep.lower().endswith(ranges[name]), (dep, ranges[name])


def test_no_torchvision_anywhere_in_the_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [
        d for extra in project["optional-dependencies"].values() for d in extra
    ]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    declared += [d for d in env if isinstance(d, str)] + [
        p for d in env if isinstance(d, dict) for p in d["pip"]
    ]
    assert not [d for d in declared if "torchvision" in d.lower()]
    assert importlib.util.find_spec("torchvision") is None, (
        "torchvision is installed: it breaks diffusers here"
    )


def test_code_is_linted_formatted_and_typed():
    for command in (
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy", "lab_utils", "grader"],
    ):
        result = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}{result.stderr}"


def test_reliability_report_is_committed_and_lists_every_catalogue_case():
    """docs/RELIABILITY.md is rewritten by any run that grades the whole catalogue; the committed one
    must list every case with the totals (a case added without rerunning the catalogue fails here)."""
    from adversarial import CASES

    text = (ROOT / "docs" / "RELIABILITY.md").read_text()
    assert f"{len(CASES)} cases tried · false passes 0 · grader crashes 0" in text
    for case in CASES:
        assert f"| {case.name} | " in text and "**NO**" not in text
