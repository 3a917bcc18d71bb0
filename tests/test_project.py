"""The README's commands run as written; .ci/run is the README's test command; environment.yml and
pyproject.toml declare the same dependencies, without torchvision; the code's shape (no import
cycles, light commands without torch, a short README linking its docs)."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import tomllib

import yaml
from helpers import ROOT, SOURCE

PACKAGES = ("grader", "lab_utils")


def readme_command(marker: str) -> str:
    """The bash block after ``<!-- command: MARKER -->`` in the README."""
    match = re.search(
        rf"<!-- command: {re.escape(marker)} -->\s*```bash\n(.*?)```",
        (ROOT / "README.md").read_text(),
        re.DOTALL,
    )
    assert match, f"README.md has no command marked {marker!r}"
    return match.group(1).strip()


def readme_commands() -> list[str]:
    return [readme_command("install-and-grade"), readme_command("test")]


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


def test_readme_is_the_entry_and_links_each_users_document():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 8 * 1024, len(readme.encode())
    for doc in ("learners", "instructors", "ci", "tiny-model", "RELIABILITY", "architecture"):
        assert f"(docs/{doc}.md)" in readme and (ROOT / "docs" / f"{doc}.md").is_file(), doc
    for section in ("## Learners", "## Instructors", "## CI operators"):
        assert section in readme


def _modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = ast.parse(path.read_text(), str(path))
    return found


def _imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """Project modules a module imports anywhere — function-level imports too — except under
    ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in modules:
                    found.add(target)
                elif node.module in modules:
                    found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_find_cycle_finds_a_hidden_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_of_the_packages_is_over_450_lines():
    """Modules stay small enough to read in one sitting: a job that outgrows one gets its own."""
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for package in ("grader", "lab_utils")
        for path in (ROOT / package).rglob("*.py")
    }
    assert sizes and {name: n for name, n in sizes.items() if n > 450} == {}


def test_no_import_cycle_anywhere_in_grader_and_lab_utils():
    modules = _modules()
    graph = {name: _imports(tree, set(modules)) - {name} for name, tree in modules.items()}
    assert sum(len(edges) for edges in graph.values()) > 50  # the walk sees the imports at all
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph) or [])


def test_the_shared_types_import_only_the_standard_library():
    tree = _modules()["grader.types"]
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_gradebook_and_release_import_no_torch(tmp_path):
    (tmp_path / "results" / "alice").mkdir(parents=True)
    report = {"submission": "alice", "status": "graded", "passed": True, "score": 3.0, "max_score": 3.0}
    (tmp_path / "results" / "alice" / "report.json").write_text(json.dumps({**report, "checks": []}))
    script = f"""
import sys
from grader.__main__ import main
assert main(["gradebook", {str(tmp_path / "results")!r}]) == 0
assert main(["release", {str(SOURCE)!r}, "-o", {str(tmp_path / "released")!r}]) == 0
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "peft") if m in sys.modules)
assert not heavy, heavy
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "released" / "sd_lora_lab.ipynb").is_file()
