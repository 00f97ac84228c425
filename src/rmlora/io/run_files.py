"""The files of a run folder and of a comparison folder: their names, and the one reader of their JSON lines.

Every writer and reader of metrics.json, history.jsonl, diagnostics.json, results.jsonl, cell.json,
report.md and figures/ takes the name from here.

results.jsonl holds one line per finished run of a comparison. A line is appended only when its run
finished, by rewriting the file to a temp file and renaming it (rmlora.io.atomic), so a kill at any
moment leaves either the old file or the new one: never half a line. The reader (`read_jsonl`, also
history.jsonl's) still tolerates a damaged *last* line (a file copied while being written, a disk that
filled up, a hand edit): it reports and skips it, and the next append drops it. A damaged line anywhere
else cannot come from this writer, so it is an error that names the line to fix.

A record is metrics.json of the run (method, lora_r, seed, task, model, primary_metric, metrics,
param_counts, diagnostics, wall_time_s, versions) plus what the comparison adds: `cell` (the run's
name, e.g. "rm-lora_r8_s0"), `rank` (R; None for full fine-tuning), `run_dir` (relative to the
comparison's folder) and `train_args` (the `rmlora train` flags of the run, without --output_dir).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

from rmlora.errors import DataError
from rmlora.io.atomic import jsonable, write_text

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
class JsonlFile:
    records: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one message per line that was not read


@dataclass
class ResultsFile(JsonlFile):
    def by_cell(self) -> dict[str, dict]:
        """The record of every cell; a cell recorded twice keeps its last line."""
        return {r["cell"]: r for r in self.records}


def read_jsonl(path: str, required: Sequence[str] = (), warn: bool = True) -> JsonlFile:
    """The records of a JSON-lines file written by this project (none if it does not exist).

    A damaged *last* line (a run killed mid-write by an older writer, a copy taken mid-write, a full disk,
    a hand edit) is skipped, with a warning when `warn`; a damaged line anywhere else cannot come from an
    atomic writer, so it is a DataError naming the line. A line is damaged if it is not a JSON object or
    lacks one of the `required` keys.
    """
    out = JsonlFile()
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8", errors="replace") as f:
        # a last line without its newline is kept if it parses: the cut fell right after the closing brace
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            missing = [k for k in required if k not in record]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
        except ValueError as e:
            if number == len(lines):
                out.skipped.append(f"{path}:{number}: damaged last line skipped ({e})")
                continue
            raise DataError(
                f"{path}:{number} is not a complete record ({e}): fix or delete that line, then rerun"
            ) from None
        out.records.append(record)
    if warn:
        for message in out.skipped:
            warnings.warn(message, stacklevel=3)
    return out


def read_results(path: str, warn: bool = True) -> ResultsFile:
    """Every complete record of results.jsonl (`path`: the file or its comparison folder); read_jsonl's tolerance."""
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS_NAME)
    read = read_jsonl(path, REQUIRED_KEYS, warn=warn)
    return ResultsFile(read.records, read.skipped)


def append_result(path: str, record: dict) -> None:
    """Append `record` as one line; a damaged last line already there is dropped, not buried mid-file."""
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise DataError(f"result record lacks {', '.join(missing)}: it must come from a finished run's metrics.json")
    existing = read_results(path, warn=False).records
    # rewriting the parsed records (not the raw text) is what drops a damaged last line; the whole
    # file is then replaced in one rename, as rmlora.io.atomic.append_jsonl does
    lines = [json.dumps(r, sort_keys=True, default=jsonable) for r in existing + [record]]
    write_text(path, "\n".join(lines) + "\n")


# -- a run's own files --------------------------------------------------------------------------------


def read_json(path: str) -> dict | None:
    """A JSON file written atomically by the run, or None if it is absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_history(path: str, warn: bool = True) -> list[dict]:
    """The per-epoch records of a run (`path`: its history.jsonl or its folder); [] if absent.

    read_jsonl's tolerance: a damaged last line (a run killed while writing it) is skipped with a warning.
    """
    if os.path.isdir(path):
        path = os.path.join(path, HISTORY_NAME)
    return read_jsonl(path, warn=warn).records


def read_diagnostics(run_dir: str) -> dict | None:
    """{"modules": [...], "summary": {...}} of a run, or None (full fine-tuning has no ΔW diagnostics)."""
    return read_json(os.path.join(run_dir, DIAGNOSTICS_NAME))
