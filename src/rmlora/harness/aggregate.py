"""Over seeds: mean, sample standard deviation and best per column, for the report's tables.

The paper reports "mean ± std" over three seeds (Tables 2, 3, 5); with so few samples the unbiased
sample standard deviation (ddof = 1) is the one to report, and one seed has no standard deviation at
all (None, shown without "±"), rather than a misleading 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# what a metric's name ends with when smaller is better; everything else (accuracy, F1, MCC, Pearson,
# exact match, rank of ΔW) is better when larger
LOWER_IS_BETTER = ("loss", "error", "runtime", "wall_time_s", "perplexity", "orthogonality_loss", "penalty")

# keys of an evaluation that are bookkeeping, not task metrics; the generalization error has its own panel
# in the curves and no column in the paper's tables
HOUSEKEEPING = (
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "epoch",
    "model_preparation_time",
    "generalization_error",
)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # sample std (ddof = 1); None when n < 2
    n: int


def mean_std(values: Iterable) -> Stat:
    """Mean and sample standard deviation (ddof = 1) of the values that are not None."""
    vals = [float(v) for v in values if v is not None]
    n = len(vals)
    if n == 0:
        return Stat(math.nan, None, 0)
    mean = math.fsum(vals) / n
    if n < 2:
        return Stat(mean, None, n)
    return Stat(mean, math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)), n)


def higher_is_better(name: str) -> bool:
    return not any(name.endswith(suffix) for suffix in LOWER_IS_BETTER)


def best_rows(means: Sequence[float | None], higher_is_better: bool = True, ndigits: int | None = None) -> set[int]:
    """Indices of the best value of a column; ties are all best.

    With `ndigits`, values are compared as the table shows them (rounded), so two cells that read the
    same are both marked. None and NaN (a missing or diverged run) are never best.
    """
    shown = {}
    for i, m in enumerate(means):
        if m is None or not math.isfinite(m):
            continue
        shown[i] = round(m, ndigits) if ndigits is not None else m
    if not shown:
        return set()
    best = max(shown.values()) if higher_is_better else min(shown.values())
    return {i for i, v in shown.items() if v == best}


def group_by(records: Iterable[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    """Records grouped by the values of `keys`, groups in order of first appearance."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return groups


# -- which metrics a set of runs reports --------------------------------------------------------------


def split_of(records: Sequence[dict]) -> str:
    """ "test" if every run has test metrics, else "eval" (runs without a test split)."""
    has_test = all(any(k.startswith("test_") for k in r.get("metrics", {})) for r in records)
    return "test" if records and has_test else "eval"


def metric_names(records: Sequence[dict], split: str, include_loss: bool = False) -> list[str]:
    """Task metrics of `split` (without the "<split>_" prefix), in first-seen order."""
    names: list[str] = []
    prefix = split + "_"
    for r in records:
        for key, value in r.get("metrics", {}).items():
            if not key.startswith(prefix) or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name = key[len(prefix) :]
            if name in HOUSEKEEPING or (name == "loss" and not include_loss) or name in names:
                continue
            names.append(name)
    return names


def metric_stat(records: Sequence[dict], split: str, name: str) -> Stat:
    return mean_std(r.get("metrics", {}).get(f"{split}_{name}") for r in records)


def summary_stat(records: Sequence[dict], key: str) -> Stat:
    """Over seeds, a key of the runs' ΔW diagnostics summary (mean_rank, mean_orthogonality_loss, ...)."""
    return mean_std((r.get("diagnostics") or {}).get(key) for r in records)
