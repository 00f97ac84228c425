"""Each method's ratios to plain PEFT LoRA, from the per-repetition times stored in its row.

The ratio is paired: each repetition's (method step / PEFT LoRA step in the same repetition), then the median,
which is robust to load that drifts between repetitions; its bootstrap 95% interval says how precisely this
run pins the ratio down. The same functions recompute the ratios of a saved result (`rmlora bench --report`).
"""

from __future__ import annotations

import random
import statistics

from rmlora.bench.arguments import ANCHOR


def quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]] if values else []
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def median_ci95(values: list[float], resamples: int = 2000, seed: int = 0) -> list[float]:
    """Bootstrap 95% interval of the median: how far the median itself could move under this noise."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]


def add_ratios(row: dict, anchor_row: dict, anchor_step_s: float) -> None:
    """Ratios to PEFT LoRA from the per-repetition times stored in the rows (also for a saved result)."""
    for key, times in (("ratio", "step_s"), ("cpu_ratio", "cpu_s")):
        ratios = [m / a for m, a in zip(row[times], anchor_row[times])]
        row[f"{key}_to_peft_lora"] = statistics.median(ratios)
        row[f"{key}_iqr"] = quartiles(ratios)
        row[f"{key}_ci95"] = median_ci95(ratios)
    row["mem_ratio_to_peft_lora"] = row["peak_mem_bytes"] / anchor_row["peak_mem_bytes"]
    # the hooks were timed alone with timing.clock: compare them with PEFT LoRA's step on the same clock
    row["hooks_share_of_peft_lora_step"] = row["hooks_us"]["total"] * 1e-6 / anchor_step_s


def anchor_step(rows: list[dict], device: str) -> tuple[dict, float]:
    """PEFT LoRA's row and its median step on the hooks' clock (wall on CUDA, CPU time on CPU)."""
    anchor_row = next(r for r in rows if r["method"] == ANCHOR)
    return anchor_row, anchor_row["median_step_s"] if device.startswith("cuda") else anchor_row["median_cpu_s"]


def add_all_ratios(rows: list[dict], device: str) -> float:
    """add_ratios on every available row; returns PEFT LoRA's median step on the hooks' clock."""
    anchor_row, anchor_step_s = anchor_step([r for r in rows if r["available"]], device)
    for row in rows:
        if row["available"]:
            add_ratios(row, anchor_row, anchor_step_s)
    return anchor_step_s
