"""What a submission must achieve, typed once: the required LoRA config, the timeouts, the kernel's
limits and each check's points, visibility, step and options. Defaults reproduce the seed lab; a
TOML checks file (``notebooks/source/sd_lora_lab.checks.toml`` spells every default out) overrides
them. Every value — from a file, the command line or code — goes through one validator, and any
problem is one ``LabError`` naming the file and key.

```toml
[lora]                      # the adapter the notebook must train (all of it is enforced)
rank = 4
alpha = 4
targets = "attn"            # a lab_utils TARGET_PRESETS name or a list of module names
# use_rslora = false        # only checked when set

[timeouts]                  # seconds
cell = 600
total = 1800

[limits]                    # for the learner's kernel (grader/execute/sandbox.py)
sandbox = "auto"            # auto | bwrap | namespaces | none

[checks.pixel_difference]   # one table per check: points, visibility, step, and its own options
points = 2
visibility = "hidden"
min_mean_abs_diff = 0.5
```

Standard library only (the check declarations it reads import nothing heavy).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from grader.checks import CHECKS
from grader.types import Option, at_least, one_of, positive, show
from lab_utils.errors import LabError
from lab_utils.files import readable_file, shown
from lab_utils.targets import TARGET_PRESETS

SANDBOX_MODES = ("auto", "bwrap", "namespaces", "none")
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")  # Gradescope's


def _fraction(value: Any) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1] (got {show(value)})"


def _targets(value: Any) -> str | None:
    if isinstance(value, str):
        return None if value in TARGET_PRESETS else f"'{value}' is not one of {sorted(TARGET_PRESETS)}"
    if value and all(isinstance(t, str) and t for t in value):
        return None
    return "must be a preset name or a list of module names"


def setting(default: Any, doc: str, types: type | tuple[type, ...], rule=None) -> Any:
    """A config field: its default, its documentation, the TOML types it takes and its rule."""
    return field(default=default, metadata={"option": Option(types, default, doc, rule)})


def options_of(section: type) -> dict[str, Option]:
    return {f.name: f.metadata["option"] for f in fields(section)}


def check_value(where: str, key: str, option: Option, value: Any) -> Any:
    """The one validator: type, finiteness, the option's rule. Returns the value as stored."""
    types = option.types if isinstance(option.types, tuple) else (option.types,)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise LabError(f"{where}{'.' + key if key else ''} must be {names} (got {value!r})")
    if isinstance(value, float) and not math.isfinite(value):
        raise LabError(f"{where}{'.' + key if key else ''} must be a finite number (got {value!r})")
    problem = option.rule(value) if option.rule is not None else None
    if problem:
        raise LabError(f"{where}{' ' + key if key else ''} {problem}")
    if isinstance(value, list):
        return tuple(value)
    if float in types and not isinstance(value, bool) and isinstance(value, int):
        return float(value)
    return value


def check_table(where: str, table: object, options: Mapping[str, Option]) -> dict[str, Any]:
    """A TOML table checked key by key against ``options``: unknown keys, types and rules."""
    if not isinstance(table, dict):
        raise LabError(f"{where} must be a table")
    unknown = sorted(set(table) - set(options))
    if unknown:
        raise LabError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(options))})")
    return {key: check_value(where, key, options[key], value) for key, value in table.items()}


def _validated(section) -> None:
    """Values set in code pass the same validator as values read from a file."""
    where = f"[{type(section).__name__}]"
    for key, option in options_of(type(section)).items():
        value = getattr(section, key)
        if value is not None or option.default is not None:
            object.__setattr__(section, key, check_value(where, key, option, value))


@dataclass(frozen=True)
class LoraSpec:
    """The adapter a submission must train: the parameter check compares every field."""

    rank: int = setting(4, "LoRA rank r", int, at_least(1))
    alpha: float = setting(4.0, "lora_alpha: the update is scaled by alpha / rank", (int, float), positive)
    targets: str | tuple[str, ...] = setting(
        "attn", "a TARGET_PRESETS name or module names", (str, list, tuple), _targets
    )
    use_rslora: bool | None = setting(None, "rsLoRA (alpha / √rank); checked only when set", bool)

    def __post_init__(self) -> None:
        _validated(self)

    @property
    def target_modules(self) -> str | list[str]:
        """``targets`` as ``LoraConfig(target_modules=...)`` takes it (a preset resolved)."""
        if isinstance(self.targets, str):
            value = TARGET_PRESETS[self.targets]
            return list(value) if isinstance(value, list) else value
        return list(self.targets)


@dataclass(frozen=True)
class Timeouts:
    cell: float = setting(600.0, "seconds per cell", (int, float), positive)
    total: float = setting(1800.0, "seconds for the whole notebook", (int, float), positive)
    startup: float = setting(60.0, "seconds for the kernel to start", (int, float), positive)

    def __post_init__(self) -> None:
        _validated(self)


@dataclass(frozen=True)
class Limits:
    """The learner's kernel: how it is isolated and what it may use (grader/execute/sandbox.py)."""

    sandbox: str = setting("auto", "auto | bwrap | namespaces | none", str, one_of(SANDBOX_MODES))
    memory_gb: float = setting(16.0, "CPU memory of all its processes", (int, float), positive)
    processes: int = setting(512, "processes and threads", int, positive)
    file_size_mb: float = setting(4096.0, "the largest file it may write", (int, float), positive)
    output_mb: float = setting(20.0, "notebook output kept; the rest is dropped", (int, float), positive)
    gpu_memory_fraction: float | None = setting(
        None, "of each visible GPU (None: no cap)", (int, float), _fraction
    )

    def __post_init__(self) -> None:
        _validated(self)


CHECK_KEYS = {
    "points": Option((int, float), None, "points the check is worth", at_least(0)),
    "visibility": Option(
        str,
        None,
        "visible | hidden (pass/fail only) | after_due_date | after_published (Gradescope shows it then)",
        one_of(VISIBILITIES, True),
    ),
    "step": Option(int, None, "the notebook step that earns it", at_least(1)),
}


@dataclass(frozen=True)
class CheckSettings:
    """One check as this course scores it; ``options`` are the check's own declared keys."""

    points: float
    step: int
    visibility: str = "visible"
    options: Mapping[str, Any] = field(default_factory=dict)


def default_settings(name: str) -> CheckSettings:
    check = CHECKS[name]
    return CheckSettings(
        float(check.points), check.step, check.visibility, {k: o.default for k, o in check.options.items()}
    )


def _default_checks() -> dict[str, CheckSettings]:
    return {name: default_settings(name) for name, check in CHECKS.items() if not check.optional}


@dataclass(frozen=True)
class GradingConfig:
    """Defaults reproduce the seed lab: rank 4 (alpha 4) on to_q/to_k/to_v/to_out in attn1 + attn2,
    and a same-seed pixel difference above 0.5 on the 0–255 scale."""

    lora: LoraSpec = field(default_factory=LoraSpec)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    checks: dict[str, CheckSettings] = field(default_factory=_default_checks)

    @property
    def max_score(self) -> float:
        return sum(settings.points for settings in self.checks.values())

    def option(self, check: str, key: str) -> Any:
        """A check's option as this course set it (its declared default when the check is off)."""
        settings = self.checks.get(check) or default_settings(check)
        return settings.options[key]

    @classmethod
    def from_tables(cls, data: Mapping[str, Any], where: str = "checks") -> GradingConfig:
        """The config a checks file's tables describe (also what tests and code build it from)."""
        sections = {"lora": LoraSpec, "timeouts": Timeouts, "limits": Limits}
        check_table(
            where, data, {**{k: Option(dict, None, k) for k in sections}, "checks": Option(dict, None, "")}
        )
        built = {
            key: section(**check_table(f"{where}: [{key}]", data.get(key, {}), options_of(section)))
            for key, section in sections.items()
        }
        named = check_table(
            f"{where}: [checks]", data.get("checks", {}), {n: Option(dict, None, n) for n in CHECKS}
        )
        checks = _default_checks()
        for name, table in named.items():  # a check named in the file is on (step 5's too)
            declared = CHECKS[name]
            values = check_table(f"{where}: [checks.{name}]", table, {**CHECK_KEYS, **declared.options})
            base = checks.get(name) or default_settings(name)
            checks[name] = CheckSettings(
                points=float(values.get("points", base.points)),
                step=values.get("step", base.step),
                visibility=values.get("visibility", base.visibility),
                options={k: values.get(k, v) for k, v in base.options.items()},
            )
        return cls(checks=checks, **built)

    def run_settings(self) -> dict:
        """The settings that shaped the notebook's run (not its verification): a regrade that
        changes any of them must run the notebook again."""
        return {"timeouts": asdict(self.timeouts), "limits": asdict(self.limits)}

    def with_command_line(self, timeout: float | None, cell_timeout: float | None, sandbox: str | None):
        """``--timeout``, ``--cell-timeout`` and ``--sandbox`` over this config, validated the same way."""
        timeouts, limits = self.timeouts, self.limits
        for flag, key, value in (("--timeout", "total", timeout), ("--cell-timeout", "cell", cell_timeout)):
            if value is not None:
                timeouts = replace(timeouts, **{key: check_value(flag, "", options_of(Timeouts)[key], value)})
        if sandbox is not None:
            limits = replace(
                limits, sandbox=check_value("--sandbox", "", options_of(Limits)["sandbox"], sandbox)
            )
        return replace(self, timeouts=timeouts, limits=limits)


def load_config(path: str | Path) -> GradingConfig:
    """Read and validate a checks file; any problem is one LabError naming the file and key."""
    path = readable_file(path, "checks file")
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise LabError(f"checks file '{shown(path)}' cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise LabError(f"checks file '{shown(path)}' is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise LabError(f"checks file '{shown(path)}' is not valid TOML: {error}") from None
    return GradingConfig.from_tables(data, shown(path))
