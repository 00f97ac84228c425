"""results.jsonl: one line per finished run of a comparison, and the runs' own files.

A line is appended only when its run finished, by rewriting the file to a temp file and renaming it
(rmlora.io.atomic), so a kill at any moment leaves either the old file or the new one: never half a line.
The reader still tolerates a damaged *last* line (a file copied while being written, a disk that filled
up, a hand edit): it reports and skips it, and the next append drops it. A damaged line anywhere else
cannot come from this writer, so it is an error that names the line to fix.

A record is metrics.json of the run (method, lora_r, seed, task, model, primary_metric, metrics,
param_counts, diagnostics, wall_time_s, versions) plus what the comparison adds: `cell` (the run's
name, e.g. "rm-lora_r8_s0"), `rank` (R; None for full fine-tuning), `run_dir` (relative to the
comparison's folder) and `train_args` (the `rmlora train` flags of the run, without --output_dir).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field

from rmlora.errors import DataError
from rmlora.io.atomic import write_text

# a run's folder (`rmlora train --output_dir`)
METRICS_NAME = "metrics.json"  # written last and atomically: exists only for a run that finished
HISTORY_NAME = "history.jsonl"  # one record per epoch (rmlora.training.history)
DIAGNOSTICS_NAME = "diagnostics.json"  # ΔW rank, orthogonality loss and singular values per module
# a comparison's folder (`rmlora compare --output_dir`)
RESULTS_NAME = "results.jsonl"  # one line per finished cell
RUNS_DIR = "runs"  # runs/<cell>/ is the run folder of a cell
CELL_NAME = "cell.json"  # in runs/<cell>/: the cell and its train flags, written before it trains
TRAIN_LOG_NAME = "train.log"  # in runs/<cell>/: the output of an isolated cell's process
REPORT_NAME = "report.md"
FIGURES_DIR = "figures"

REQUIRED_KEYS = ("cell", "method", "seed", "metrics")


@dataclass
class ResultsFile:
    records: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one message per line that was not read

    def by_cell(self) -> dict[str, dict]:
        """The record of every cell; a cell recorded twice keeps its last line."""
        return {r["cell"]: r for r in self.records}


def _parse(text: str, path: str) -> ResultsFile:
    # a last line without its newline is kept if it parses: the cut fell right after the closing brace
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = ResultsFile()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = number == len(lines)
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            missing = [k for k in REQUIRED_KEYS if k not in record]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
        except ValueError as e:
            if last:
                out.skipped.append(f"{path}:{number}: damaged last line skipped ({e})")
                continue
            raise DataError(
                f"{path}:{number} is not a complete result line ({e}): fix or delete that line, then rerun"
            ) from None
        out.records.append(record)
    return out


def read_results(path: str, warn: bool = True) -> ResultsFile:
    """Every complete record of `path` (none if it does not exist); a damaged last line is skipped."""
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS_NAME)
    if not os.path.exists(path):
        return ResultsFile()
    with open(path, encoding="utf-8", errors="replace") as f:
        results = _parse(f.read(), path)
    if warn:
        for message in results.skipped:
            warnings.warn(message, stacklevel=2)
    return results


def append_result(path: str, record: dict) -> None:
    """Append `record` as one line; a damaged last line already there is dropped, not buried mid-file."""
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise DataError(f"result record lacks {', '.join(missing)}: it must come from a finished run's metrics.json")
    existing = read_results(path, warn=False).records if os.path.exists(path) else []
    # rewriting the parsed records (not the raw text) is what drops a damaged last line; the whole
    # file is then replaced in one rename, as rmlora.io.atomic.append_jsonl does
    lines = [json.dumps(r, sort_keys=True, default=_jsonable) for r in existing + [record]]
    write_text(path, "\n".join(lines) + "\n")


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


# -- a run's own files --------------------------------------------------------------------------------


def read_json(path: str) -> dict | None:
    """A JSON file written atomically by the run, or None if it is absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_history(run_dir: str) -> list[dict]:
    """The per-epoch records of a run (history.jsonl); [] if absent. A damaged last line is skipped."""
    path = os.path.join(run_dir, HISTORY_NAME)
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                warnings.warn(f"{path}:{number}: damaged last line skipped", stacklevel=2)
                continue
            raise DataError(f"{path}:{number} is not valid JSON: fix or delete that line") from None
        if isinstance(record, dict):
            records.append(record)
    return records


def read_diagnostics(run_dir: str) -> dict | None:
    """{"modules": [...], "summary": {...}} of a run, or None (full fine-tuning has no ΔW diagnostics)."""
    return read_json(os.path.join(run_dir, DIAGNOSTICS_NAME))
