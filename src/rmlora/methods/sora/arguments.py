"""SoRA's knobs, its proximal step and its ξ schedule (rmlora.methods.sora)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from rmlora.errors import ConfigError

XI_SCHEDULES = ("linear", "log_linear", "exp_linear")


@dataclass
class SoraArguments:
    """SoRA's knobs (reference repo TsinghuaC3I/SoRA names in parentheses)."""

    sora_lambda: float = field(
        default=1e-3, metadata={"help": "Weight λ of the L1 term Σ|g| / #gates in the loss (sparse_lambda)."}
    )
    sora_xi: float = field(
        default=1e-4, metadata={"help": "Soft-threshold ξ applied to the gates after each gate step (sparse_lambda_2)."}
    )
    sora_gate_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the gates' own AdamW; default: the main learning rate."}
    )
    sora_xi_schedule: str | None = field(
        default=None,
        metadata={"help": "Raise ξ during training: linear, log_linear or exp_linear (default: constant ξ)."},
    )
    sora_xi_max: float | None = field(default=None, metadata={"help": "Final ξ of the schedule."})
    sora_xi_steps: int = field(default=1, metadata={"help": "Number of ξ values the schedule steps through (k)."})

    def __post_init__(self):
        for name in ("sora_lambda", "sora_xi"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
                raise ConfigError(f"{name} must be a number ≥ 0, got {value!r}")
        if self.sora_gate_lr is not None and not self.sora_gate_lr > 0:
            raise ConfigError(
                f"sora_gate_lr must be > 0, got {self.sora_gate_lr!r}: leave it unset to use the main learning rate"
            )
        if self.sora_xi_schedule in ("", "none", "None"):
            self.sora_xi_schedule = None
        if self.sora_xi_schedule is None:
            return
        if self.sora_xi_schedule not in XI_SCHEDULES:
            raise ConfigError(
                f"unknown sora_xi_schedule {self.sora_xi_schedule!r}: choose one of {', '.join(XI_SCHEDULES)}"
            )
        if self.sora_xi_max is None or self.sora_xi_max < 0:
            raise ConfigError(
                f"sora_xi_schedule={self.sora_xi_schedule} needs sora_xi_max ≥ 0 (the final ξ), "
                f"got {self.sora_xi_max!r}"
            )
        if self.sora_xi_steps < 1:
            raise ConfigError(f"sora_xi_steps must be at least 1, got {self.sora_xi_steps}")
        if self.sora_xi_schedule == "exp_linear" and not (self.sora_xi > 0 and self.sora_xi_max > 0):
            raise ConfigError("sora_xi_schedule=exp_linear interpolates log ξ: sora_xi and sora_xi_max must be > 0")

    def xi_values(self) -> list[float]:
        """The ξ values the run steps through, as the reference's SparseAdamW builds them."""
        xi, k = float(self.sora_xi), int(self.sora_xi_steps)
        if self.sora_xi_schedule is None:
            return [xi]
        top = float(self.sora_xi_max)
        if self.sora_xi_schedule == "linear":
            values = np.linspace(xi, top, k)
        elif self.sora_xi_schedule == "log_linear":
            values = np.log(np.linspace(np.exp(xi), np.exp(top), k))
        else:
            values = np.exp(np.linspace(np.log(xi), np.log(top), k))
        return [float(v) for v in values]


def soft_threshold(g: torch.Tensor, xi: float) -> torch.Tensor:
    """sign(g)·max(|g| − ξ, 0): the proximal step of ξ‖g‖₁ (torch's softshrink is exactly this)."""
    return torch.nn.functional.softshrink(g, float(xi))


def xi_at(step: int, total_steps: int | None, values: list[float]) -> float:
    """ξ at optimizer step `step` (0-based): value i of k during the i-th of k equal stages of the run."""
    k = len(values)
    if k == 1 or not total_steps:
        return values[0]
    return values[min(k - 1, max(0, step) * k // int(total_steps))]
