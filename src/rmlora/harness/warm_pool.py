"""Parallel cells in warm worker processes: `--jobs N` with `--worker_mode warm` (the default).

A cell run as its own `rmlora train` process (rmlora.harness.executors.LocalExecutor) imports torch, transformers
and PEFT again, 5–15 s on a CPU machine: longer than a short cell trains. `WarmExecutor` keeps N worker processes
instead, each training cell after cell in-process as `--jobs 1` does in the driver, so the imports are paid once
per worker:

- a worker is a `concurrent.futures.ProcessPoolExecutor` of one process (start method "spawn": a fork of the
  driver would inherit torch's thread pools in an unusable state), one pool per slot. One pool of N processes would
  not do: a worker that dies (SIGKILL, an out-of-memory kill) breaks its whole pool (`BrokenProcessPool`), failing
  the cells of the other workers too, and the pool does not say which cell's worker died. With one process per
  pool the broken pool names the one cell that was running there: that cell alone is retried (the sweep's
  --max_retries), the other workers train on.
- a slot's environment is fixed for the life of its workers and set before the worker's interpreter starts:
  CUDA_VISIBLE_DEVICES (its --devices_per_cell devices) and OMP_NUM_THREADS / MKL_NUM_THREADS (--threads_per_cell).
  A spawned worker imports the driver's `__main__` (hence rmlora, torch and transformers) before any initializer
  runs, and the CUDA runtime reads CUDA_VISIBLE_DEVICES once, the first time anything asks for a device; so the
  environment is given to the spawned interpreter itself, by setting it in the driver's os.environ for the instant
  of the spawn (under a lock; the driver's other threads only wait on futures meanwhile).
- after --max_cells_per_worker cells (default 8), or after a cell that failed, the worker exits and the slot starts
  a fresh one, so memory that runs do not give back stays bounded. This is done here rather than with
  ProcessPoolExecutor's `max_tasks_per_child`, which Python 3.10 lacks and which in 3.11–3.14 can hang once a
  worker is replaced with tasks queued (CPython issue gh-115634).
- before each cell the worker puts back the global state that a previous cell may have changed (`WorkerState`):
  environment, working directory, torch's thread count, deterministic and TF32 flags, grad mode, default dtype, the
  random generators' states, logging verbosity, progress bars, warning filters and transformers' warn-once caches.
  With each run seeding itself (--seed), a cell's adapter is bitwise the one it gets alone
  (tests/test_warm_workers.py).
- a cell's folder and log are as with per-cell processes: the worker deletes a leftover folder, writes cell.json,
  and points its file descriptors 1 and 2 at runs/<cell>/train.log while the cell trains (one first line names the
  worker and how many cells it has run).
- the driver's shutdown (Ctrl-C, SIGTERM, the end of the sweep) terminates the busy workers (SIGTERM to all, then
  SIGKILL to those still running 30 s later) and closes the idle ones; workers ignore SIGINT (Ctrl-C reaches the
  whole process group: the driver decides) and, on Linux, get SIGTERM when the driver thread that started them dies
  (a driver killed with SIGKILL).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import queue
import random
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import IO, Any

import datasets
import numpy as np
import torch
import transformers

from rmlora.errors import ConfigError, RMLoraError
from rmlora.harness.executors import (
    CellJob,
    CellOutcome,
    LocalExecutor,
    die_with_parent,
    log_tail,
    open_run_folder,
    thread_env,
)
from rmlora.harness.run import freeze_long_lived_objects, train_and_summarize

MAX_CELLS_PER_WORKER = 8
STOP_TIMEOUT_S = 30.0  # a busy worker gets SIGTERM, then SIGKILL after this long

START_FAILED = (
    "the warm worker could not start (see its error above; a Python script that runs a Sweep needs "
    "`if __name__ == '__main__':`); or use --worker_mode process"
)

TrainFn = Callable[[list[str]], int]


# -- in the worker ---------------------------------------------------------------------------------------------


@dataclass
class WorkerState:
    """The global state of a worker that a cell may change and the next cell would inherit."""

    environ: dict[str, str]
    cwd: str
    stdout: Any
    stderr: Any
    threads: int
    deterministic: tuple[bool, bool]  # torch.use_deterministic_algorithms(mode, warn_only)
    backend_flags: tuple[bool, bool, bool, bool]  # cudnn deterministic, benchmark, allow_tf32; cuBLAS allow_tf32
    matmul_precision: str
    grad_enabled: bool
    default_dtype: torch.dtype
    random_states: tuple  # random, numpy, torch (CPU); every run re-seeds them, this is a fresh process's
    verbosity: tuple[int, int, int]  # transformers, datasets, logging.disable
    progress_bars: tuple[bool, bool]  # transformers, datasets

    @classmethod
    def capture(cls) -> WorkerState:
        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        return cls(
            environ=dict(os.environ),
            cwd=os.getcwd(),
            stdout=sys.stdout,
            stderr=sys.stderr,
            threads=torch.get_num_threads(),
            deterministic=(
                torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
            ),
            backend_flags=(cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32),
            matmul_precision=torch.get_float32_matmul_precision(),
            grad_enabled=torch.is_grad_enabled(),
            default_dtype=torch.get_default_dtype(),
            random_states=(random.getstate(), np.random.get_state(), torch.get_rng_state()),
            verbosity=(
                transformers.logging.get_verbosity(),
                datasets.logging.get_verbosity(),
                logging.root.manager.disable,
            ),
            progress_bars=(transformers.utils.logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()),
        )

    def restore(self) -> None:
        os.environ.clear()
        os.environ.update(self.environ)
        os.chdir(self.cwd)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(self.deterministic[0], warn_only=self.deterministic[1])
        torch.set_float32_matmul_precision(self.matmul_precision)
        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = self.backend_flags
        torch.set_grad_enabled(self.grad_enabled)
        torch.set_default_dtype(self.default_dtype)
        random.setstate(self.random_states[0])
        np.random.set_state(self.random_states[1])
        torch.set_rng_state(self.random_states[2])
        transformers.logging.set_verbosity(self.verbosity[0])
        datasets.logging.set_verbosity(self.verbosity[1])
        logging.disable(self.verbosity[2])
        hf_logging = transformers.utils.logging
        for enabled, enable, disable in (
            (self.progress_bars[0], hf_logging.enable_progress_bar, hf_logging.disable_progress_bar),
            (self.progress_bars[1], datasets.enable_progress_bars, datasets.disable_progress_bars),
        ):
            (enable if enabled else disable)()
        # logger.warning_once / info_once remember what they said for the life of the process
        transformers.utils.logging.warning_once.cache_clear()
        transformers.utils.logging.info_once.cache_clear()


_baseline: WorkerState | None = None  # taken by worker_ready, before the worker's first cell


def orphaned(driver_pid: int) -> bool:
    """Whether this worker's driver (its parent) has died: the worker was handed to another parent. Not "the
    parent is PID 1": in a container whose entrypoint is `rmlora compare` the live driver is PID 1."""
    return os.getppid() != driver_pid


def worker_ready(driver_pid: int) -> int:
    """The first call in a new worker: ties it to the driver thread that started it, takes the state every cell
    starts from, and leaves the imported modules out of later garbage collections; returns the worker's pid."""
    global _baseline
    if sys.platform.startswith("linux"):
        die_with_parent()
        if orphaned(driver_pid):  # the driver died before the line above took effect
            os._exit(1)
    freeze_long_lived_objects()
    _baseline = WorkerState.capture()
    return os.getpid()


@contextlib.contextmanager
def output_to(log: IO) -> Iterator[None]:
    """File descriptors 1 and 2 into `log`: Python's prints, logging and tqdm, and what native code writes."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def exit_status(train: TrainFn, argv: list[str]) -> int:
    """`train(argv)` as its own process would end: 0, argparse's 2, 2 for a bad input (one line), 1 for a crash
    (its traceback in the log)."""
    try:
        return int(train(argv) or 0)
    except SystemExit as e:  # argparse (it has printed why), or sys.exit in the run
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(e.code, file=sys.stderr)
        return 1
    except RMLoraError as e:
        print(f"rmlora train: error: {e}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - the cell failed; the worker reports it and goes on
        traceback.print_exc()
        return 1


def run_warm_cell(job: CellJob, train: TrainFn, nth: int, max_cells: int) -> CellOutcome:
    """In a warm worker: a fresh run folder, cell.json, then `train(argv)` with the output in train.log."""
    host = socket.gethostname()
    # before the run folder is made and after the cell, before its log is read: a relative run folder is relative
    # to the worker's first working directory, whatever directory a cell moved to
    _baseline.restore()
    try:
        log = open_run_folder(job)
    except OSError as e:
        return CellOutcome(None, error=f"{host} cannot write {job.run_dir} ({e.strerror or e})", host=host)
    try:
        with log, output_to(log), warnings.catch_warnings():  # catch_warnings: fresh filters, once-warnings again
            print(f"[rmlora] warm worker {os.getpid()}: cell {nth} of at most {max_cells} in this process", flush=True)
            rc = exit_status(train, job.argv)
    finally:
        _baseline.restore()
    # the next cell builds a fresh model: free this one's tensors (and accelerator cache) first
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return CellOutcome(rc, log_tail=log_tail(job.run_dir), host=host)


# -- in the driver ---------------------------------------------------------------------------------------------

_spawn_lock = threading.Lock()


@contextlib.contextmanager
def spawn_environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ with `env` on top while a worker is spawned: a spawned interpreter starts with the driver's
    environment of that instant (the module docstring says why nothing later would do)."""
    with _spawn_lock:
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class _Stopping(Exception):
    pass


class WarmSlot:
    """One warm worker at a time, with the slot's fixed environment; replaced after `max_cells` cells."""

    def __init__(self, env: dict[str, str], max_cells: int):
        self.env = env
        self.max_cells = max_cells
        self.pool: ProcessPoolExecutor | None = None
        self.process = None  # the worker's multiprocessing.Process: its exit status, terminate / kill
        self.pid: int | None = None
        self.cells = 0  # cells the current worker has run
        self.exiting: list = []  # workers let go without waiting for their exit
        self.busy = False
        self.stopped = False
        self._lock = threading.Lock()

    def run(self, job: CellJob, train: TrainFn) -> CellOutcome:
        """Called by one driver thread at a time (the executor hands a slot to one thread)."""
        starting = self.pool is None
        try:
            if starting:
                self._start()
                starting = False
            with self._lock:
                if self.stopped:
                    raise _Stopping
                future = self.pool.submit(run_warm_cell, job, train, self.cells + 1, self.max_cells)
                self.busy = True
            outcome = future.result()
        except _Stopping:
            return CellOutcome(None, error="the sweep is stopping")
        except BrokenProcessPool:
            return self._worker_died(job, starting)
        except ConfigError:  # no worker can start here (see _start): not one cell's failure
            raise
        except Exception as e:  # noqa: BLE001 - e.g. the worker could not import the training stack
            self.close()
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            return CellOutcome(1, log_tail=log_tail(job.run_dir), error=f"failed in its warm worker ({reason})")
        finally:
            self.busy = False
        self.cells += 1
        if outcome.rc != 0 or self.cells >= self.max_cells:
            # a fresh worker for the next cell: bounded memory, nothing left over from a failed run; the old one
            # exits (a second or so with torch loaded) while the new one starts
            self.close(wait=False)
        return outcome

    def _start(self) -> None:
        with self._lock:
            if self.stopped:
                raise _Stopping
            # workers ignore SIGINT: Ctrl-C reaches the whole process group, and the driver stops them itself
            self.pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=signal.signal,
                initargs=(signal.SIGINT, signal.SIG_IGN),
            )
            with spawn_environment(self.env):
                try:
                    ready = self.pool.submit(worker_ready, os.getpid())  # the spawn happens in submit
                except RuntimeError as e:
                    # this process is a spawned worker still importing the driver's script, which runs a Sweep
                    # outside the main guard (the flag multiprocessing itself checks before refusing the spawn): fail
                    # the worker's start, which the driver reports (START_FAILED), rather than fail one cell here
                    # and go on into the driver's cells
                    if getattr(multiprocessing.current_process(), "_inheriting", False):
                        raise ConfigError(START_FAILED) from e
                    raise
            # the pool's one process (a private attribute: without it, no exit status and no SIGKILL, see stop)
            self.process = next(iter((getattr(self.pool, "_processes", None) or {}).values()), None)
            self.busy = True
        try:
            self.pid = ready.result()
        finally:
            self.busy = False

    def _worker_died(self, job: CellJob, starting: bool) -> CellOutcome:
        process = self.process
        self.close()  # joins the pool's manager thread, which has reaped the worker
        status = process.exitcode if process is not None else None
        if status is not None and status > 0 and starting:  # e.g. importing the driver's __main__ failed
            return CellOutcome(status, error=START_FAILED)  # the cell's folder is not made yet: no log of its own
        if status is not None and status > 0:  # it exited on its own (os._exit in the run): a failure, no retry
            return CellOutcome(status, log_tail=log_tail(job.run_dir), error=f"warm worker exited with {status}")
        reason = None if status is not None else "its warm worker died"
        return CellOutcome(status, killed=True, log_tail=log_tail(job.run_dir), error=reason)

    def stop(self):
        """From the driver's shutdown: no new worker or cell here. An idle worker is asked to exit (`close` waits for
        it); a busy one gets SIGTERM and is returned, for the caller to wait on (`wait_or_kill`); its cell's thread
        then sees a broken pool."""
        with self._lock:
            self.stopped = True
            if self.pool is None:
                return None
            if not self.busy:
                self.pool.shutdown(wait=False, cancel_futures=True)
                return None
            if self.process is None:
                if self.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGTERM)
                return None
            self.process.terminate()
            return self.process

    def close(self, wait: bool = True) -> None:
        """Let the worker exit (an idle one exits at once) and forget it; the next cell starts a new one. With
        `wait`, also wait for the workers that earlier calls let go without waiting; without, release those that
        have exited since (each holds file descriptors: a long sweep recycles thousands of workers)."""
        pool, process = self.pool, self.process
        self.pool, self.process, self.pid, self.cells = None, None, None, 0
        if pool is not None:
            # the pool's thread that joins its worker: a Process may be closed only once that thread is done with it
            manager = getattr(pool, "_executor_manager_thread", None)
            pool.shutdown(wait=wait, cancel_futures=True)
            if process is not None:
                self.exiting.append((process, manager))
        if wait:
            # a pool shut down once without waiting (stop, recycling) forgets its worker: join it here (not closed:
            # _worker_died, on another thread, may still read its exit status)
            for process, _ in self.exiting:
                process.join()
            self.exiting.clear()
            return
        exiting, self.exiting = self.exiting, []
        for process, manager in exiting:
            if process.exitcode is None or (manager is not None and manager.is_alive()):
                self.exiting.append((process, manager))
            else:
                process.close()


def wait_or_kill(processes: list, timeout: float) -> None:
    """Wait for terminated processes all at once, at most `timeout` s in all; SIGKILL those still running."""
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.exitcode is None:
            process.kill()
            process.join()


class WarmExecutor(LocalExecutor):
    """Up to `jobs` cells at once, each in one of `jobs` warm worker processes (see the module docstring)."""

    def __init__(
        self,
        jobs: int,
        devices_per_cell: int = 1,
        threads_per_cell: int | None = None,
        devices=None,
        max_cells_per_worker: int = MAX_CELLS_PER_WORKER,
        train: TrainFn = train_and_summarize,
    ):
        if max_cells_per_worker < 1:
            raise ConfigError(f"--max_cells_per_worker must be at least 1, got {max_cells_per_worker}")
        super().__init__(jobs, devices_per_cell, threads_per_cell, devices)
        self.max_cells = max_cells_per_worker
        self.train = train  # run in the worker: a module-level function (it is pickled by name)
        self.all_slots: list[WarmSlot] = []
        self.slots: queue.Queue[WarmSlot] = queue.Queue()
        while not self.groups.empty():  # the device groups of LocalExecutor, one per slot for the slot's life
            group = self.groups.get()
            env = thread_env(self.threads)
            if group is not None:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(group)
            self.all_slots.append(WarmSlot(env, self.max_cells))
            self.slots.put(self.all_slots[-1])

    def describe(self) -> str:
        return (
            f"{self.jobs} warm worker processes (a fresh one after {self.max_cells} cells), "
            f"{self.threads} CPU thread(s) each"
        )

    def _run(self, job: CellJob) -> CellOutcome:
        if self._stopping.is_set():
            return CellOutcome(None, error="the sweep is stopping")
        slot = self.slots.get()
        try:
            return slot.run(job, self.train)
        finally:
            self.slots.put(slot)

    def shutdown(self) -> None:
        """Stop: queued cells never start, busy workers are terminated (their cells retrain on resume), idle
        workers exit."""
        self._stopping.set()  # queued cells return at once
        terminated = [process for process in (slot.stop() for slot in self.all_slots) if process is not None]
        wait_or_kill(terminated, STOP_TIMEOUT_S)  # together: 30 s in all, not 30 s per worker
        for slot in self.all_slots:
            slot.close()
        # the driver's threads end last: on Linux a worker gets SIGTERM when the thread that started it ends
        # (die_with_parent), which would cut short an idle worker's clean exit
        self.pool.shutdown(wait=True, cancel_futures=True)
