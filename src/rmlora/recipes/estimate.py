"""The dry run's estimate of a recipe's device-hours: optimizer steps from the data and the schedule, times a
per-step time (measured with `rmlora bench` on the user's device, or the recipe's stated default).

steps of a cell = max_steps if set, else ceil(train examples / (batch × gradient accumulation)) × epochs, the
Trainer's count for one device (rmlora.harness.arguments.num_training_steps); train examples are the task's
`train_examples` (its train split's size) or --max_train_samples when smaller. device-hours = Σ over cells of
steps × step time × (1 + eval_overhead) × devices per cell / 3600.

A `rmlora bench --json --output FILE` result gives a step time per method (its median, seconds per step at the
bench's batch size and sequence length); it is scaled to the recipe's batch × sequence length by token count
(a first-order correction, stated in the output) — run the bench at the recipe's sizes to avoid it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from rmlora.errors import ConfigError
from rmlora.recipes.format import Recipe, Value

DEFAULT_STEP_TIME_S = 1.0  # used only when neither the recipe nor the user gives one; the output says so


@dataclass
class Estimate:
    device_hours: float
    cells: int
    steps: int
    lines: list[str]  # how it was estimated, one sentence each


def _number(flags: dict[str, Value], key: str, default=None):
    value = flags.get(key)
    if value is None or value.value in (None, ""):
        return default
    try:
        return float(value.value)
    except (TypeError, ValueError):
        return default


def cell_steps(flags: dict[str, Value], train_examples: int | None) -> int | None:
    """Optimizer steps of one cell, or None when the train split's size is unknown."""
    max_steps = _number(flags, "max_steps", -1)
    if max_steps and max_steps > 0:
        return int(max_steps)
    n = train_examples
    cap = _number(flags, "max_train_samples")
    if cap is not None and (n is None or cap < n):
        n = int(cap)
    if n is None:
        return None
    batch = _number(flags, "per_device_train_batch_size", 8) * _number(flags, "gradient_accumulation_steps", 1)
    return math.ceil(_number(flags, "num_train_epochs", 3) * math.ceil(n / batch))


def bench_step_times(path: str) -> tuple[dict[str, float], int]:
    """{bench method: median seconds per step}, and the bench's tokens per step (batch × sequence length)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        settings = data["settings"]
        times = {m["method"]: float(m["median_step_s"]) for m in data["methods"] if m.get("available", True)}
        return times, int(settings["batch_size"]) * int(settings["seq_len"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--bench_json {path}: not a `rmlora bench --json` result ({e})") from None


def bench_method(method: str, flags: dict[str, Value]) -> list[str]:
    """The bench's names for a cell's method, most specific first (rm-lora/grad before peft-lora)."""
    if method in ("gm-lora", "rm-lora"):
        mode = (flags.get("mask_mode") or Value("strict")).value
        return [f"{method}/{mode}", "peft-lora"]
    return [method, "peft-lora"]


def estimate(
    recipe: Recipe,
    cells: Sequence,
    flags_of,  # cell -> its flags
    step_time_s: float | None = None,
    bench_json: str | None = None,
    devices_per_cell: int = 1,
) -> Estimate:
    given = step_time_s is not None  # --step_time_s: one time for every cell
    overhead_value = recipe.estimate.get("eval_overhead")
    overhead = float(overhead_value.value) if overhead_value else 0.0
    lines = []
    bench, bench_tokens = ({}, None)
    if bench_json:
        bench, bench_tokens = bench_step_times(bench_json)
        lines.append(f"per-step times: measured by `rmlora bench` in {bench_json} (median per method)")
    elif step_time_s is not None:
        lines.append(f"per-step time: {step_time_s:g} s (--step_time_s)")
    elif "step_time_s" in recipe.estimate:
        v = recipe.estimate["step_time_s"]
        step_time_s = float(v.value)
        lines.append(f"per-step time: {step_time_s:g} s, the recipe's default ({v.source})")
    else:
        step_time_s = DEFAULT_STEP_TIME_S
        lines.append(f"per-step time: {step_time_s:g} s, a placeholder (the recipe states none): pass --step_time_s")
    total_s, steps_total, unknown, scaled, per_task = 0.0, 0, [], False, set()
    for cell in cells:
        flags = flags_of(cell)
        task = recipe.tasks[cell.task]
        steps = cell_steps(flags, int(task.train_examples.value) if task.train_examples else None)
        if steps is None:
            unknown.append(cell.task)
            continue
        per_step = step_time_s
        if task.step_time_s is not None and not bench and not given:
            per_step = float(task.step_time_s.value)
            per_task.add(f"{task.id}: {per_step:g} s ({task.step_time_s.source})")
        if bench:
            per_step = next((bench[m] for m in bench_method(cell.method, flags) if m in bench), None)
            if per_step is None:
                raise ConfigError(f"--bench_json has no timing for {cell.method} (nor peft-lora): rerun the bench")
            tokens = _number(flags, "per_device_train_batch_size", 8) * _number(flags, "max_seq_length", 128)
            if bench_tokens and tokens != bench_tokens:
                per_step *= tokens / bench_tokens
                scaled = True
        steps_total += steps
        total_s += steps * per_step * (1 + overhead) * max(1, devices_per_cell)
    if per_task:
        lines.append("per-step time of these tasks' cells: " + "; ".join(sorted(per_task)))
    if scaled:
        lines.append(
            "bench times scaled by the recipe's tokens per step over the bench's "
            "(run the bench at the recipe's batch and --seq_len to avoid it)"
        )
    lines.append(
        f"steps: {steps_total:,} optimizer steps over {len(cells) - len(unknown)} cells, from each task's train split "
        "size (or max_train_samples / max_steps) and the recipe's batch size and epochs"
    )
    if overhead:
        lines.append(f"evaluation: + {overhead:.0%} of training time ({overhead_value.source})")
    if unknown:
        lines.append(
            f"{len(unknown)} cells of tasks without `train_examples` ({', '.join(sorted(set(unknown)))}) not counted"
        )
    return Estimate(total_s / 3600, len(cells), steps_total, lines)
