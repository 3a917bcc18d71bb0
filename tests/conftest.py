"""Fixtures: everything on CPU, offline, with the built-in tiny model (shared helpers: helpers.py)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub reads it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest-xdist runs several workers at once: split the cores between them (and the kernels and
# graders they start, which inherit this), or OpenMP threads spin against each other (2 workers
# with 2 threads each on 2 cores ran a grading ~10× slower here).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_threads)

import pytest  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--write-reliability",
        action="store_true",
        help="rewrite docs/RELIABILITY.md from this run's adversarial catalogue (tests/test_adversarial.py)",
    )
    parser.addoption(
        "--all-honest",
        action="store_true",
        help="grade every correct lab of the honest catalogue (tests/test_honest.py), not only the quick "
        "ones (.ci/run's --all-honest step)",
    )
    parser.addoption(
        "--going-further",
        action="store_true",
        help="execute notebooks/going_further.ipynb end to end (about 6 minutes alone, 8 beside another "
        "worker: .ci/run's own step) for tests/test_going_further.py",
    )
    parser.addoption(
        "--all-sandboxes",
        action="store_true",
        help="grade every executed notebook of the adversarial catalogue in both sandboxes, not only "
        "those that attack the sandbox (.ci/run passes it in a second run of tests/test_adversarial.py)",
    )


# The longest files first, so pytest-xdist (--dist loadfile --no-loadscope-reorder) starts them at
# once and fills the other worker meanwhile (the going-further notebook: with --going-further).
SLOWEST_FIRST = (
    "test_going_further.py",
    "test_adversarial.py",
    "test_honest.py",
    "test_course.py",
    "test_slurm.py",
    "test_gradescope.py",
    "test_step5.py",
    "test_nbgrader.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order


@pytest.fixture(scope="session", autouse=True)
def _default_model():
    """Every test starts from the built-in model, whatever the shell exported."""
    os.environ.pop("SD_LORA_LAB_MODEL", None)
    yield


@pytest.fixture
def pipe():
    """A fresh tiny pipeline on CPU, fp32, progress bars off (0.2 s once cached)."""
    import lab_utils

    p = lab_utils.load_pipeline("tiny", device="cpu")
    p.set_progress_bar_config(disable=True)
    return p
