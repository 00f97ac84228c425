"""Hyperparameters chosen on validation: of the settings of a (method, rank) (`rmlora compare --grid`), the one
with the best mean validation metric over its seeds; the report then shows that setting's runs only, with the
setting named, so a table never shows a setting picked on the test split.

The criterion is `validation` (the task's primary metric on the validation split, e.g. eval_accuracy) or
`validation:METRIC` (another validation metric, e.g. `validation:loss`, lower being better as in the report).
`rmlora compare --select_on` keeps it in OUTPUT_DIR/selection.json so that `rmlora report` selects alike.
Ties (equal means) go to the setting whose values sort first as numbers (the smaller reg_weight, say), so the
choice never depends on the order the cells finished in. Only `eval_*` metrics are read: test labels can never
change the choice.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

from rmlora.errors import ConfigError, DataError
from rmlora.harness.aggregate import group_by, higher_is_better, mean_std, metric_names
from rmlora.harness.grid import setting_label
from rmlora.io.atomic import write_json
from rmlora.io.run_files import read_json
from rmlora.methods.lora import VARIANT_FLAGS

# in a comparison's folder: {"select_on": "validation[:METRIC]", "chosen": [{"method", "rank", "setting", ...}]}
SELECTION_NAME = "selection.json"
DEFAULT_CRITERION = "validation"


def check_criterion(select_on: str) -> str:
    split, _, metric = select_on.partition(":")
    if split != "validation" or (_ and not re.fullmatch(r"[A-Za-z0-9_]+", metric)):
        raise ConfigError(
            f"--select_on {select_on!r}: choose validation (the primary metric) or validation:METRIC "
            "(e.g. validation:loss); selection never reads the test split"
        )
    return select_on


def write_criterion(output_dir: str, select_on: str, records: Sequence[dict] = ()) -> None:
    """selection.json: the criterion and, from `records` (results.jsonl), what it chose (for scripts)."""
    chosen = [
        {
            "task": c["key"][0],
            "model": c["key"][1],
            "method": c["key"][2],
            "rank": c["key"][3],
            "variant": c["key"][4],
            "setting": dict(c["chosen"]),
            "metric": c["metric"],
            "scores": [{"setting": dict(s), "mean": mean, "seeds": n} for s, mean, n in c["scores"]],
        }
        for c in select(records, select_on)
    ]
    write_json(os.path.join(output_dir, SELECTION_NAME), {"select_on": check_criterion(select_on), "chosen": chosen})


def read_criterion(output_dir: str) -> str:
    return check_criterion((read_json(os.path.join(output_dir, SELECTION_NAME)) or {}).get("select_on", "validation"))


def _setting(record: dict) -> tuple:
    return tuple((record.get("setting") or {}).items())


def _sort_key(setting: tuple) -> tuple:
    def number(value: str) -> tuple:
        try:
            return (0, float(value), value)
        except ValueError:
            return (1, math.inf, value)

    return tuple((flag, number(str(value))) for flag, value in setting)


def validation_metric(records: Sequence[dict], select_on: str = DEFAULT_CRITERION) -> str:
    """The metric key the criterion reads, e.g. "eval_accuracy"."""
    _, _, metric = check_criterion(select_on).partition(":")
    if not metric:
        primary = next((r.get("primary_metric") for r in records if r.get("primary_metric")), None)
        metric = re.sub(r"^(eval|test)_", "", primary) if primary else next(iter(metric_names(records, "eval")), "")
    if not metric:
        raise DataError("no validation metric to select on: the runs recorded no eval_* metric")
    return f"eval_{metric}"


SELECTION_KEYS = ("task", "model", "method", "rank", "variant_name")  # each PEFT variant is a row of its own


def select(
    records: Sequence[dict], select_on: str = DEFAULT_CRITERION, keys: Sequence[str] = SELECTION_KEYS, min_settings=2
) -> list[dict]:
    """One entry per group of `keys` (default: task, model, method, rank) with at least `min_settings` settings:
    {"key", "metric", "chosen", "scores": [(setting, mean, n_seeds), ...] in sort order}. A recipe groups by its
    rows instead (rmlora.recipes.runner), so that two rows of one method and rank are chosen apart."""
    out = []
    for key, runs in group_by(records, keys).items():
        by_setting = _by_setting(runs)
        if len(by_setting) < min_settings:
            continue
        metric = validation_metric(runs, select_on)
        larger = higher_is_better(metric)
        scores = []
        for setting in sorted(by_setting, key=_sort_key):
            stat = mean_std(r.get("metrics", {}).get(metric) for r in by_setting[setting])
            scores.append((setting, stat.mean, stat.n))
        finite = [s for s in scores if s[2] and math.isfinite(s[1])]
        if not finite:
            raise DataError(f"cannot select a setting of {' '.join(map(str, key))}: no run recorded {metric}")
        best = (max if larger else min)(finite, key=lambda s: s[1])[1]
        chosen = next(s[0] for s in finite if s[1] == best)  # ties: the first in sort order
        out.append({"key": key, "metric": metric, "chosen": chosen, "scores": scores})
    return out


def _by_setting(runs: Sequence[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(_setting(r), []).append(r)
    return groups


def selected_records(records: Sequence[dict], select_on: str = DEFAULT_CRITERION) -> tuple[list[dict], list[str]]:
    """The records the report's tables show: per (method, rank) with several settings, only the selected
    setting's runs, each with `selected_setting` (its label, for the row); and one line per choice."""
    choices = {c["key"]: c for c in select(records, select_on)}
    kept, lines = [], []
    for r in records:
        choice = choices.get(tuple(r.get(k) for k in SELECTION_KEYS))
        if choice is None:
            kept.append(r)
        elif _setting(r) == choice["chosen"]:
            # a variant flag is in the row's name already (rmlora.harness.report.row_label)
            chosen = {k: v for k, v in choice["chosen"] if k not in VARIANT_FLAGS}
            kept.append({**r, "selected_setting": setting_label(chosen)})
    for choice in choices.values():
        _, _, method, rank, variant = choice["key"]
        method = f"{method} + {variant}" if variant else method
        others = "; ".join(
            f"{setting_label(s)}: {mean:.4f} ({n} seed{'s' * (n != 1)})" for s, mean, n in choice["scores"]
        )
        lines.append(
            f"{method}{'' if rank is None else f' R={rank}'}: {setting_label(choice['chosen'])} selected on the "
            f"mean validation {choice['metric'][len('eval_') :]} over seeds ({others})"
        )
    return kept, lines


def report_records(output_dir: str, records: Sequence[dict]) -> tuple[list[dict], list[str]]:
    """The hook of rmlora.harness.report: the records of a comparison folder after its selection."""
    return selected_records(records, read_criterion(output_dir))
