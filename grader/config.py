"""What a submission must achieve: the required LoRA config, each check's points, visibility and
thresholds, and the timeouts — defaults reproduce the seed lab; a TOML checks file overrides them.

```toml
[lora]                      # the adapter the notebook must train
rank = 4
alpha = 4
targets = "attn"            # a lab_utils.TARGET_PRESETS name or a list of module names

[timeouts]                  # seconds
cell = 600
total = 1800

[limits]                    # for the learner's kernel (see grader/sandbox.py)
sandbox = "auto"            # auto | bwrap | basic | none
memory_gb = 16              # CPU memory of all its processes
processes = 512             # processes and threads
file_size_mb = 4096         # largest file it may write
output_mb = 20              # notebook output kept; the rest is dropped
gpu_memory_fraction = 0.9   # of each visible GPU (omit for no cap)

[checks.parameter_count]    # one table per check: points, visibility ("visible" | "hidden"), step
points = 1
[checks.adapter_gradients]
points = 1
[checks.pixel_difference]
points = 2
visibility = "hidden"
min_mean_abs_diff = 0.5     # 0–255 scale; must also beat the measured noise floor
image_tolerance = 0.5       # how far a saved image may be from its regeneration

# optional step 5 (going further): off unless named here
[checks.export_reloads]     # an exported adapter file reproduces the adapted image
points = 1
[checks.held_out_evaluation]  # lab_utils.evaluate ran on held-out prompts with this adapter
points = 1
```
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from grader.sandbox import MODES as SANDBOX_MODES
from grader.sandbox import Limits
from lab_utils.errors import LabError
from lab_utils.lora import TARGET_PRESETS

VISIBILITIES = ("visible", "hidden")


@dataclass(frozen=True)
class CheckSpec:
    """How one check is scored: its points, who sees its details, and the step that earns it."""

    points: float
    step: int
    visibility: str = "visible"


DEFAULT_CHECKS: dict[str, CheckSpec] = {
    "parameter_count": CheckSpec(points=1.0, step=2),
    "adapter_gradients": CheckSpec(points=1.0, step=3),
    "pixel_difference": CheckSpec(points=1.0, step=4),
}
OPTIONAL_CHECKS: dict[str, CheckSpec] = {
    "export_reloads": CheckSpec(points=1.0, step=5),
    "held_out_evaluation": CheckSpec(points=1.0, step=5),
}
"""Step 5 (going further) checks: off unless a checks file names them (``[checks.export_reloads]``)."""


@dataclass(frozen=True)
class GradingConfig:
    """Defaults reproduce the seed lab: rank 4 (alpha 4) on to_q/to_k/to_v/to_out in attn1 + attn2,
    and a same-seed pixel difference above 0.5 on the 0–255 scale."""

    rank: int = 4
    alpha: int = 4
    targets: str | tuple[str, ...] = "attn"  # a lab_utils.TARGET_PRESETS name or module names
    min_mean_abs_diff: float = 0.5  # 0–255 scale, regenerated baseline vs regenerated adapted
    # A learner's saved image must match the grader's regeneration of it within this mean absolute
    # difference (0–255) plus the measured noise floor: CPU thread counts and GPU kernels move a few
    # pixels by one level.
    image_tolerance: float = 0.5
    checks: dict[str, CheckSpec] = field(default_factory=lambda: dict(DEFAULT_CHECKS))
    cell_timeout: float = 600.0  # seconds per cell
    total_timeout: float = 1800.0  # seconds for the whole notebook
    startup_timeout: float = 60.0  # seconds for the kernel to start
    sandbox: str = "auto"  # grader.sandbox.MODES
    memory_gb: float = 16.0
    processes: int = 512
    file_size_mb: float = 4096.0
    output_mb: float = 20.0
    gpu_memory_fraction: float | None = None

    def __post_init__(self) -> None:
        for option, value in (
            ("--timeout", self.total_timeout),
            ("--cell-timeout", self.cell_timeout),
            ("startup_timeout", self.startup_timeout),
        ):
            if not value > 0:
                raise LabError(f"{option} must be positive (got {value:g} s)")
        if self.sandbox not in SANDBOX_MODES:
            raise LabError(f"--sandbox must be one of {', '.join(SANDBOX_MODES)} (got {self.sandbox!r})")
        if self.gpu_memory_fraction is not None and not 0 < self.gpu_memory_fraction <= 1:
            raise LabError(f"gpu_memory_fraction must be in (0, 1] (got {self.gpu_memory_fraction:g})")

    @property
    def limits(self) -> Limits:
        return Limits(self.memory_gb, self.processes, self.file_size_mb, self.gpu_memory_fraction)

    @property
    def max_score(self) -> float:
        return sum(spec.points for spec in self.checks.values())


_TOP = {"lora", "timeouts", "limits", "checks"}
_LORA = {"rank": int, "alpha": int, "targets": (str, list)}
_TIMEOUTS = {"cell": (int, float), "total": (int, float), "startup": (int, float)}
_LIMITS = {
    "sandbox": str,
    "memory_gb": (int, float),
    "processes": int,
    "file_size_mb": (int, float),
    "output_mb": (int, float),
    "gpu_memory_fraction": (int, float),
}
_CHECK = {"points": (int, float), "visibility": str, "step": int}
_CHECK_EXTRA = {"pixel_difference": {"min_mean_abs_diff": (int, float), "image_tolerance": (int, float)}}


def _keys(where: str, table: object, allowed: dict | set) -> dict:
    if not isinstance(table, dict):
        raise LabError(f"{where} must be a table")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise LabError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")
    if isinstance(allowed, dict):
        for key, value in table.items():
            types = allowed[key]
            if isinstance(value, bool) or not isinstance(value, types):
                names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
                raise LabError(f"{where}.{key} must be {names} (got {value!r})")
            if isinstance(value, float) and not math.isfinite(value):
                raise LabError(f"{where}.{key} must be a finite number (got {value!r})")
    return table


def load_config(path: str | Path) -> GradingConfig:
    """Read and validate a checks file; any problem is one LabError naming the file and key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise LabError(f"checks file '{path}' cannot be read: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise LabError(f"checks file '{path}' is not valid TOML: {error}") from None
    where = str(path)
    _keys(where, data, _TOP)
    lora = _keys(f"{where}: [lora]", data.get("lora", {}), _LORA)
    timeouts = _keys(f"{where}: [timeouts]", data.get("timeouts", {}), _TIMEOUTS)
    limits = _keys(f"{where}: [limits]", data.get("limits", {}), _LIMITS)
    config = GradingConfig()
    changes: dict = {}
    if "rank" in lora:
        if lora["rank"] < 1:
            raise LabError(f"{where}: [lora] rank must be ≥ 1 (got {lora['rank']})")
        changes["rank"] = lora["rank"]
    if "alpha" in lora:
        changes["alpha"] = lora["alpha"]
    if "targets" in lora:
        targets = lora["targets"]
        if isinstance(targets, str) and targets not in TARGET_PRESETS:
            raise LabError(f"{where}: [lora] targets '{targets}' is not one of {sorted(TARGET_PRESETS)}")
        if isinstance(targets, list) and not (targets and all(isinstance(t, str) and t for t in targets)):
            raise LabError(f"{where}: [lora] targets must be a preset name or a list of module names")
        changes["targets"] = targets if isinstance(targets, str) else tuple(targets)
    for key, attr in (("cell", "cell_timeout"), ("total", "total_timeout"), ("startup", "startup_timeout")):
        if key in timeouts:
            if not timeouts[key] > 0:
                raise LabError(f"{where}: [timeouts] {key} must be positive (got {timeouts[key]})")
            changes[attr] = float(timeouts[key])
    for key, value in limits.items():
        if key == "sandbox":
            if value not in SANDBOX_MODES:
                modes = ", ".join(SANDBOX_MODES)
                raise LabError(f"{where}: [limits] sandbox must be one of {modes} (got {value!r})")
        elif key == "gpu_memory_fraction" and not 0 < value <= 1:
            raise LabError(f"{where}: [limits] gpu_memory_fraction must be in (0, 1] (got {value})")
        elif not value > 0:
            raise LabError(f"{where}: [limits] {key} must be positive (got {value})")
        changes[key] = value if key in ("sandbox", "processes") else float(value)
    checks_table = data.get("checks", {})
    _keys(f"{where}: [checks]", checks_table, set(DEFAULT_CHECKS) | set(OPTIONAL_CHECKS))
    checks = dict(DEFAULT_CHECKS)
    for name, table in checks_table.items():
        spec_where = f"{where}: [checks.{name}]"
        _keys(spec_where, table, {**_CHECK, **_CHECK_EXTRA.get(name, {})})
        if name in OPTIONAL_CHECKS:
            checks[name] = OPTIONAL_CHECKS[name]  # named in the file: turned on
        visibility = table.get("visibility", checks[name].visibility)
        if visibility not in VISIBILITIES:
            raise LabError(f"{spec_where} visibility must be 'visible' or 'hidden' (got {visibility!r})")
        points = float(table.get("points", checks[name].points))
        if points < 0:
            raise LabError(f"{spec_where} points must be ≥ 0 (got {points:g})")
        checks[name] = CheckSpec(
            points=points, step=table.get("step", checks[name].step), visibility=visibility
        )
        for key in _CHECK_EXTRA.get(name, {}):
            if key in table:
                if table[key] < 0:
                    raise LabError(f"{spec_where} {key} must be ≥ 0 (got {table[key]})")
                changes[key] = float(table[key])
    return replace(config, checks=checks, **changes)
