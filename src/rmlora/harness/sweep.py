"""The sweep: every cell of a grid trained once, resumable, in this process or one process per cell.

Layout of a comparison folder (file names: rmlora.io.run_files):

    OUTPUT_DIR/runs/<cell>/      the run folder of the cell (metrics.json, history.jsonl, cell.json, ...)
    OUTPUT_DIR/results.jsonl     one line per finished cell, appended when it finishes
    OUTPUT_DIR/report.md, figures/   rebuilt from the two above (rmlora.harness.report)

Resume rule, cell by cell:
- a results line exists: finished, skipped;
- runs/<cell>/metrics.json exists (written atomically, last by the run): the run finished but the sweep
  was killed before appending its line: the line is appended now, nothing is retrained;
- runs/<cell>/ exists otherwise: an interrupted run; it is deleted and trained again;
- else the cell is trained.
Each cell's `rmlora train` flags are kept (runs/<cell>/cell.json, and `train_args` in its results
line); resuming a folder with different flags for a finished cell is refused, so one results.jsonl
never mixes settings.

Cells run in-process by default (rmlora.harness.run.run_training): importing torch and transformers once
instead of once per cell saves seconds per cell (most of a tiny run's time) and lets the Trainer's own
progress bar sit under the sweep's. `isolate=True` runs each cell as a `rmlora train` subprocess instead,
for long sweeps where a crash, an out-of-memory kill or leaked accelerator memory in one cell must not
take the next cells with it; its output then goes to runs/<cell>/train.log and the bar shows the epochs
done. With an `executor` (`--jobs N`: warm worker processes that train cell after cell,
rmlora.harness.warm_pool, or a process per cell, rmlora.harness.executors; `--backend ray`: Ray tasks) up to
that many cells run at once, each writing only its own run folder; this process waits on them and appends each
cell's results line as it finishes, so results.jsonl has one writer. A cell whose process was killed (its warm
worker, or its Ray worker or node, died) is retried up to `max_retries` times; a cell that still fails, or fails
on its own, is reported with the last lines of its train.log while the others go on.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from rmlora.errors import ConfigError, DataError, RMLoraError
from rmlora.harness.arguments import parse_args
from rmlora.harness.executors import (
    CellJob,
    CellOutcome,
    fresh_run_folder,
    sigterm_unwinds,
    stop_process,
    train_command,
)
from rmlora.harness.grid import (
    INIT_RANK_FACTOR,
    Cell,
    cell_args,
    cell_ranks,
    check_train_args,
    flag_differences,
    flag_map,
)
from rmlora.harness.run import train_and_summarize
from rmlora.io.run_files import (
    CELL_NAME,
    HISTORY_NAME,
    METRICS_NAME,
    RESULTS_NAME,
    RUNS_DIR,
    TRAIN_LOG_NAME,
    append_result,
    read_json,
    read_results,
)


@dataclass
class SweepResult:
    skipped: list[str] = field(default_factory=list)  # finished before this call
    recovered: list[str] = field(default_factory=list)  # finished run whose results line was missing
    trained: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell, one-line reason), with keep_going
    retried: list[str] = field(default_factory=list)  # one entry per retry of a killed cell
    log_tails: dict[str, list[str]] = field(default_factory=dict)  # failed cell -> last lines of its train.log


TrainFn = Callable[[list[str]], int]


class Sweep:
    """`Sweep(output_dir, cells, common_args, overrides).run()`; `train` replaces `rmlora train` (tests)."""

    def __init__(
        self,
        output_dir: str,
        cells: Sequence[Cell],
        common_args: Sequence[str] = (),
        overrides: dict[str, list[tuple[str, str]]] | None = None,
        train: TrainFn | None = None,
        isolate: bool = False,
        keep_going: bool = False,
        progress: bool = True,
        init_rank_factor: int = INIT_RANK_FACTOR,
        executor=None,
        max_retries: int = 1,
    ):
        check_train_args(common_args)
        if int(max_retries) < 0:
            raise ConfigError(f"--max_retries must be 0 or more, got {max_retries}")
        self.executor = executor  # None: one cell at a time in this process (or one subprocess with isolate)
        self.max_retries = int(max_retries)
        if int(init_rank_factor) < 1:
            raise ConfigError(f"--init_rank_factor must be at least 1, got {init_rank_factor}")
        self.init_rank_factor = int(init_rank_factor)
        self.output_dir = output_dir
        self.cells = list(cells)
        self.common_args = list(common_args)
        self.overrides = overrides or {}
        self.train = train or train_and_summarize
        self.isolate = isolate
        self.keep_going = keep_going
        self.progress = progress
        self.results_path = os.path.join(output_dir, RESULTS_NAME)

    def run_dir(self, cell: Cell) -> str:
        return os.path.join(self.output_dir, RUNS_DIR, cell.name)

    def args(self, cell: Cell) -> list[str]:
        return cell_args(cell, self.common_args, self.overrides, self.init_rank_factor)

    def spec(self, cell: Cell) -> dict:
        """cell.json of a cell: what it is and its train flags."""
        return {
            "cell": cell.name,
            "method": cell.method,
            "rank": cell.rank,
            "seed": cell.seed,
            "setting": dict(cell.setting),
            "train_args": self.args(cell),
        }

    def validate(self) -> None:
        """Parse every cell's flags with `rmlora train`'s own parser, training nothing: a typo or a bad value
        (an unknown flag, AdaLoRA's init_r ≤ target_r) stops the sweep before its first cell, not hours in."""
        for cell in self.cells:
            try:
                parse_args(self.args(cell) + ["--output_dir", self.run_dir(cell)])
            except SystemExit:  # argparse has printed the usage and what it rejected
                raise ConfigError(
                    f"cell {cell.name}: rmlora train rejects these flags (see the message above)"
                ) from None
            except RMLoraError as e:
                raise type(e)(f"cell {cell.name}: {e}") from None

    # -- state ------------------------------------------------------------------------------------------
    def status(self) -> dict[str, str]:
        """cell name -> "finished" | "recoverable" (metrics.json, no line) | "interrupted" | "todo"."""
        finished = read_results(self.results_path).by_cell()
        out = {}
        for cell in self.cells:
            if cell.name in finished:
                out[cell.name] = "finished"
            elif read_json(os.path.join(self.run_dir(cell), METRICS_NAME)) is not None:
                out[cell.name] = "recoverable"
            elif os.path.exists(self.run_dir(cell)):
                out[cell.name] = "interrupted"
            else:
                out[cell.name] = "todo"
        return out

    def _check_same_settings(self, cell: Cell, recorded: Sequence[str] | None) -> None:
        if recorded is None:
            return
        if flag_map(recorded) != flag_map(self.args(cell)):
            changed = flag_differences(recorded, self.args(cell))
            raise ConfigError(
                f"cell {cell.name} in {self.output_dir} finished with other flags ({changed}): "
                f"use a new --output_dir, or delete runs/{cell.name} and its line in {RESULTS_NAME} to retrain it"
            )

    def _record(self, cell: Cell) -> dict:
        """The results line of a finished cell, from its metrics.json."""
        run_dir = self.run_dir(cell)
        metrics = read_json(os.path.join(run_dir, METRICS_NAME))
        if metrics is None:
            raise DataError(f"{os.path.join(run_dir, METRICS_NAME)} is missing or unreadable: the run did not finish")
        if metrics.get("method") not in (None, cell.method) or metrics.get("seed") not in (None, cell.seed):
            raise DataError(
                f"{run_dir} holds a run of method {metrics.get('method')} seed {metrics.get('seed')}, not of cell "
                f"{cell.name}: move that folder away and rerun"
            )
        spec = read_json(os.path.join(run_dir, CELL_NAME)) or {}
        record = dict(metrics)
        record.update(
            cell=cell.name,
            method=cell.method,
            rank=cell.rank,
            seed=cell.seed,
            setting=dict(cell.setting),
            run_dir=os.path.join(RUNS_DIR, cell.name),
            train_args=spec.get("train_args"),
            ranks=cell_ranks(cell.method, spec.get("train_args") or self.args(cell)),
        )
        return record

    # -- running ----------------------------------------------------------------------------------------
    def run(self) -> SweepResult:
        os.makedirs(os.path.join(self.output_dir, RUNS_DIR), exist_ok=True)
        result = SweepResult()
        finished = read_results(self.results_path).by_cell()
        for cell in self.cells:
            if cell.name in finished:
                self._check_same_settings(cell, finished[cell.name].get("train_args"))
        todo = []
        for cell in self.cells:
            if cell.name in finished:
                result.skipped.append(cell.name)
            elif read_json(os.path.join(self.run_dir(cell), METRICS_NAME)) is not None:
                spec = read_json(os.path.join(self.run_dir(cell), CELL_NAME)) or {}
                self._check_same_settings(cell, spec.get("train_args"))
                append_result(self.results_path, self._record(cell))
                result.recovered.append(cell.name)
            else:
                todo.append(cell)

        bar = _progress_bar(len(self.cells), len(self.cells) - len(todo), enabled=self.progress)
        try:
            if self.executor is not None:
                self._run_parallel(todo, bar, result)
                return result
            for cell in todo:
                bar.set_postfix_str(cell.name)
                try:
                    self._run_cell(cell, bar)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001 - a failed cell is reported, the sweep decides
                    reason = f"{type(e).__name__}: {e}".splitlines()[0]
                    if not self.keep_going:
                        bar.write(f"cell {cell.name} failed; finished cells are kept, rerun the same command to resume")
                        if isinstance(e, RMLoraError):
                            raise type(e)(f"cell {cell.name}: {e}") from e
                        raise
                    result.failed.append((cell.name, reason))
                    bar.write(f"cell {cell.name} failed ({reason}); going on")
                else:
                    result.trained.append(cell.name)
                bar.update(1)
        finally:
            bar.close()
        return result

    def _run_cell(self, cell: Cell, bar) -> None:
        run_dir = self.run_dir(cell)
        fresh_run_folder(run_dir, self.spec(cell))
        argv = self.args(cell) + ["--output_dir", run_dir]
        rc = self._subprocess(cell, argv, bar) if self.isolate else self._in_process(argv)
        if rc != 0:
            raise RuntimeError(f"rmlora train exited with status {rc}")
        if read_json(os.path.join(run_dir, METRICS_NAME)) is None:
            raise RuntimeError(f"rmlora train finished without writing {METRICS_NAME}")
        append_result(self.results_path, self._record(cell))

    def _run_parallel(self, todo: Sequence[Cell], bar, result: SweepResult) -> None:
        """Every cell submitted to the executor; lines appended here, in the order the cells finish."""
        attempts = dict.fromkeys((c.name for c in todo), 0)

        def submit(cell: Cell):
            attempts[cell.name] += 1
            job = CellJob(
                cell.name, self.run_dir(cell), self.spec(cell), self.args(cell) + ["--output_dir", self.run_dir(cell)]
            )
            return self.executor.submit(job)

        pending = {submit(cell): cell for cell in todo}

        def show() -> None:
            running = min(len(pending), getattr(self.executor, "jobs", len(pending)))
            bar.set_postfix_str(f"running {running}, failed {len(result.failed)}")

        try:
            with sigterm_unwinds():
                show()
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        cell = pending.pop(future)
                        outcome: CellOutcome = future.result()
                        problem = self._finish(cell, outcome)
                        if problem is None:
                            result.trained.append(cell.name)
                            bar.update(1)
                        elif outcome.killed and attempts[cell.name] <= self.max_retries:
                            result.retried.append(cell.name)
                            bar.write(f"cell {cell.name} was killed ({problem}); retrying")
                            pending[submit(cell)] = cell
                        else:
                            result.failed.append((cell.name, problem))
                            result.log_tails[cell.name] = outcome.log_tail
                            bar.write(f"cell {cell.name} failed ({problem}); going on")
                            bar.update(1)
                        show()
        finally:
            self.executor.shutdown()

    def _finish(self, cell: Cell, outcome: CellOutcome) -> str | None:
        """Append the line of a cell whose process ended well; else the one-line reason it did not."""
        if outcome.error and outcome.rc is None and not outcome.killed:
            # the worker could not make the run folder: every cell would fail alike, so stop here
            raise ConfigError(
                f"cell {cell.name}: {outcome.error}: --output_dir must be on storage every worker can write "
                "(with Ray: a folder mounted at the same path on every node)"
            )
        if outcome.rc != 0:
            how = outcome.error or (
                f"killed by signal {-outcome.rc}" if outcome.rc and outcome.rc < 0 else f"exit status {outcome.rc}"
            )
            return f"rmlora train {how}"
        if read_json(os.path.join(self.run_dir(cell), METRICS_NAME)) is None:
            where = f" on {outcome.host}" if outcome.host and outcome.host != socket.gethostname() else ""
            return (
                f"rmlora train finished{where} but {os.path.join(self.run_dir(cell), METRICS_NAME)} is not here: "
                "is --output_dir on storage shared with the workers?"
            )
        append_result(self.results_path, self._record(cell))
        return None

    def _in_process(self, argv: list[str]) -> int:
        try:
            return int(self.train(argv) or 0)
        finally:
            # the next cell builds a fresh model: free this one's tensors (and accelerator cache) first
            gc.collect()
            _empty_accelerator_cache()

    def _subprocess(self, cell: Cell, argv: list[str], bar) -> int:
        command = train_command(argv)
        history = os.path.join(self.run_dir(cell), HISTORY_NAME)
        with open(os.path.join(self.run_dir(cell), TRAIN_LOG_NAME), "w", encoding="utf-8") as log, sigterm_unwinds():
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                while True:
                    try:
                        return proc.wait(timeout=1.0)
                    except subprocess.TimeoutExpired:
                        bar.set_postfix_str(f"{cell.name}: {_count_lines(history)} epochs done")
            finally:
                stop_process(proc)


def _count_lines(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def _empty_accelerator_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _NoBar:
    def set_postfix_str(self, text):
        pass

    def update(self, n=1):
        pass

    def write(self, text):
        print(text, file=sys.stderr)

    def close(self):
        pass


def _progress_bar(total: int, done: int, enabled: bool = True):
    if not enabled:
        return _NoBar()
    # position 0: the Trainer's own bar for the current run takes the next free line below it
    return tqdm(total=total, initial=done, desc="cells", unit="cell", position=0, leave=True, dynamic_ncols=True)
