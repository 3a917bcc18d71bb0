"""What a submission must achieve: the required LoRA config, thresholds, points and timeouts."""

from __future__ import annotations

from dataclasses import dataclass, field

from lab_utils.errors import LabError


@dataclass(frozen=True)
class GradingConfig:
    """Defaults reproduce the seed lab: rank 4 (alpha 4) on to_q/to_k/to_v/to_out in attn1 + attn2,
    and a same-seed pixel difference above 0.5 on the 0–255 scale."""

    rank: int = 4
    alpha: int = 4
    targets: str | tuple[str, ...] = "attn"  # a lab_utils.TARGET_PRESETS name or module names
    min_mean_abs_diff: float = 0.5  # 0–255 scale, regenerated baseline vs regenerated adapted
    # A learner's saved image must match the grader's regeneration of it within this mean absolute
    # difference (0–255): CPU thread counts and GPU kernels move a few pixels by one level.
    image_tolerance: float = 0.5
    points: dict[str, float] = field(
        default_factory=lambda: {"parameter_count": 1.0, "adapter_gradients": 1.0, "pixel_difference": 1.0}
    )
    cell_timeout: float = 600.0  # seconds per cell
    total_timeout: float = 1800.0  # seconds for the whole notebook
    startup_timeout: float = 60.0  # seconds for the kernel to start

    def __post_init__(self) -> None:
        for option, value in (
            ("--timeout", self.total_timeout),
            ("--cell-timeout", self.cell_timeout),
            ("startup_timeout", self.startup_timeout),
        ):
            if not value > 0:
                raise LabError(f"{option} must be positive (got {value:g} s)")
