"""Where a sweep's cells run when more than one runs at a time: local processes or Ray tasks.

Both executors take a `CellJob` (the cell's run folder, its cell.json and its `rmlora train` argv) and return a
`concurrent.futures.Future` of a `CellOutcome`; the sweep (rmlora.harness.sweep) waits on those futures and is
the only one to append to results.jsonl. A job runs `run_cell_job` wherever it lands: it makes the run folder,
writes cell.json, then runs `rmlora train` as a child process with its output in runs/<cell>/train.log. So a
cell's folder is written only by its worker, and a cell killed mid-way (its process killed, its node lost)
comes back as an outcome with `killed=True` (local: a negative exit status; Ray: a worker or node error),
which the sweep retries.

- `LocalExecutor`: a `concurrent.futures.ThreadPoolExecutor` of `jobs` threads, each waiting on one child
  process; with accelerators every child gets its own `devices_per_cell` devices (CUDA_VISIBLE_DEVICES), and
  every child `threads_per_cell` CPU threads (OMP_NUM_THREADS / MKL_NUM_THREADS, which torch reads at start).
  `--worker_mode process`; the default, warm workers that train cell after cell, is its subclass
  rmlora.harness.warm_pool.WarmExecutor.
- `RayExecutor`: every job a Ray task asking for `num_cpus=threads_per_cell`, `num_gpus=devices_per_cell`
  (Ray sets CUDA_VISIBLE_DEVICES for the task itself); a local Ray is started for the run when no address is
  given. Ray is an optional dependency (`pip install 'rmlora[cluster]'`), imported only here.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from rmlora.errors import ConfigError
from rmlora.io.atomic import write_json
from rmlora.io.run_files import CELL_NAME, TRAIN_LOG_NAME

LOG_TAIL_LINES = 5
RAY_CONNECT_TIMEOUT_S = 10.0  # an unreachable --ray_address fails after this long, not after Ray's own minutes
RAY_GCS_ATTEMPTS = "RAY_gcs_server_port_wait_time_s"  # read by ray.init: how many times it tries to reach the GCS
RAY_INSTALL_HINT = "--backend ray needs Ray: pip install 'rmlora[cluster]' (or pip install ray)"


@dataclass
class CellJob:
    name: str
    run_dir: str
    spec: dict  # cell.json
    argv: list[str]  # `rmlora train` flags, --output_dir included


@dataclass
class CellOutcome:
    rc: int | None  # exit status of `rmlora train`; negative: killed by that signal; None: never started
    killed: bool = False  # the process or its node died under it: worth a retry
    log_tail: list[str] = field(default_factory=list)
    error: str | None = None  # why it did not start (e.g. the worker cannot write the folder)
    host: str = ""


def train_command(argv: list[str]) -> list[str]:
    """The command line of one cell's process."""
    return [sys.executable, "-m", "rmlora.cli.main", "train", *argv]


def log_tail(run_dir: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(os.path.join(run_dir, TRAIN_LOG_NAME), encoding="utf-8", errors="replace") as f:
            return [line.rstrip() for line in f.read().splitlines() if line.strip()][-lines:]
    except OSError:
        return []


def fresh_run_folder(run_dir: str, spec: dict) -> None:
    """An empty `run_dir` holding the cell's cell.json (OSError if the folder cannot be written)."""
    if os.path.exists(run_dir):
        # an interrupted run (or a killed attempt): its checkpoints and half-written files are not worth trusting
        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    write_json(os.path.join(run_dir, CELL_NAME), spec)


def open_run_folder(job: CellJob):
    """A fresh run folder holding the cell's cell.json; returns its train.log, open for writing (OSError if the
    folder cannot be written)."""
    fresh_run_folder(job.run_dir, job.spec)
    return open(os.path.join(job.run_dir, TRAIN_LOG_NAME), "w", encoding="utf-8")


def run_cell_job(
    job: CellJob, env: dict[str, str] | None = None, command: list[str] | None = None, running: set | None = None
) -> CellOutcome:
    """On the worker: a fresh run folder, cell.json, then `rmlora train` with its output in train.log."""
    host = socket.gethostname()
    try:
        log = open_run_folder(job)
    except OSError as e:
        return CellOutcome(None, error=f"{host} cannot write {job.run_dir} ({e.strerror or e})", host=host)
    with log:
        proc = subprocess.Popen(
            command or train_command(job.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        if running is not None:
            running.add(proc)  # so that a stopping sweep can terminate it
        try:
            rc = proc.wait()
        finally:
            stop_process(proc)
            if running is not None:
                running.discard(proc)
    return CellOutcome(rc, killed=rc < 0, log_tail=log_tail(job.run_dir), host=host)


def die_with_parent() -> None:
    """In the child, before exec, or in a warm worker as it starts (Linux): SIGTERM when the thread that started it
    dies, so that a killed worker (a Ray worker, a driver killed with SIGKILL) leaves no training process writing
    into a folder that the retry is about to reuse."""
    import ctypes  # Linux only: prctl(PR_SET_PDEATHSIG); Python has no wrapper for it

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s: a cell's process never outlives the sweep that started it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def visible_devices() -> list[str]:
    """The accelerators this process may use, as CUDA_VISIBLE_DEVICES names them; [] on a CPU machine."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def default_threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


class LocalExecutor:
    """Up to `jobs` cells at once, each a child process of this one."""

    def __init__(self, jobs: int, devices_per_cell: int = 1, threads_per_cell: int | None = None, devices=None):
        if jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {jobs}")
        if devices_per_cell < 0:
            raise ConfigError(f"--devices_per_cell must be 0 (share the devices) or more, got {devices_per_cell}")
        self.jobs = jobs
        self.threads = threads_per_cell or default_threads(jobs)
        if self.threads < 1:
            raise ConfigError(f"--threads_per_cell must be at least 1, got {threads_per_cell}")
        devices = visible_devices() if devices is None else list(devices)
        self.groups: queue.Queue[list[str] | None] = queue.Queue()
        if devices and devices_per_cell:
            n = len(devices) // devices_per_cell
            if n < jobs:
                raise ConfigError(
                    f"--jobs {jobs} × --devices_per_cell {devices_per_cell} needs {jobs * devices_per_cell} devices, "
                    f"{len(devices)} are visible: lower --jobs, or --devices_per_cell 0 to share them"
                )
            for i in range(jobs):
                self.groups.put(devices[i * devices_per_cell : (i + 1) * devices_per_cell])
        else:
            for _ in range(jobs):
                self.groups.put(None)  # CPU, or devices shared: nothing to pin
        self.pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cell")
        self.command = train_command
        self._stopping = threading.Event()
        self._running: set[subprocess.Popen] = set()

    def describe(self) -> str:
        return f"{self.jobs} local processes, {self.threads} CPU thread(s) each"

    def submit(self, job: CellJob) -> Future:
        return self.pool.submit(self._run, job)

    def _run(self, job: CellJob) -> CellOutcome:
        if self._stopping.is_set():
            return CellOutcome(None, error="the sweep is stopping")
        group = self.groups.get()
        try:
            env = thread_env(self.threads)
            if group is not None:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(group)
            return run_cell_job(job, env, self.command(job.argv), self._running)
        finally:
            self.groups.put(group)

    def shutdown(self) -> None:
        """Stop: queued cells never start, running children are terminated (their cells retrain on resume)."""
        self._stopping.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(self._running):  # the threads blocked in proc.wait() then see their child exit
            if proc.poll() is None:
                proc.terminate()
        self.pool.shutdown(wait=True)


@contextlib.contextmanager
def sigterm_unwinds():
    """SIGTERM's default action ends Python at once, without running `finally`, which would leave a
    cell's child training on; while a child runs, SIGTERM raises SystemExit(143) instead, so the `finally`
    above stops the child first. Only the main thread may set handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class RayExecutor:
    """Every cell a Ray task; `address` None starts a local Ray for the run (and stops it after)."""

    def __init__(
        self,
        address: str | None = None,
        devices_per_cell: int = 1,
        threads_per_cell: int = 1,
        num_cpus: int | None = None,
        timeout_s: float = RAY_CONNECT_TIMEOUT_S,
    ):
        try:
            import ray  # optional dependency: the `cluster` extra
        except ImportError:
            raise ConfigError(RAY_INSTALL_HINT) from None
        if threads_per_cell < 1:
            raise ConfigError(f"--threads_per_cell must be at least 1, got {threads_per_cell}")
        self.ray = ray
        self.threads = threads_per_cell
        if address not in (None, "", "auto", "local") and not address.startswith("ray://"):
            _check_reachable(address, timeout_s)
        self.started = not ray.is_initialized()
        if self.started:
            try:
                if address:
                    with _one_gcs_attempt():
                        ray.init(address=address, log_to_driver=False, include_dashboard=False)
                else:
                    ray.init(num_cpus=num_cpus, log_to_driver=False, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(
                    f"cannot connect to Ray at --ray_address {address}: {first}: is it a Ray head's address "
                    "(`ray start --head --port PORT` on that node)?"
                ) from None
        resources = ray.cluster_resources()
        gpus = devices_per_cell if resources.get("GPU", 0) else 0
        # how many cells can run at once (for the progress bar): the cluster's CPUs (and GPUs) over a cell's share
        self.jobs = max(1, int(resources.get("CPU", 1) // threads_per_cell))
        if gpus:
            self.jobs = max(1, min(self.jobs, int(resources["GPU"] // gpus)))
        self._refs: set = set()
        # retries are the sweep's (--max_retries), so that a local and a Ray run count them alike
        self.remote = ray.remote(run_in_folder).options(num_cpus=threads_per_cell, num_gpus=gpus, max_retries=0)
        self.gpus = gpus
        self.folder = os.getcwd()

    def describe(self) -> str:
        resources = self.ray.cluster_resources()
        return (
            f"Ray ({int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} GPUs); "
            f"each cell asks for {self.threads} CPU(s), {self.gpus} GPU(s)"
        )

    def submit(self, job: CellJob) -> Future:
        ref = self.remote.remote(self.folder, job, thread_env(self.threads))
        self._refs.add(ref)
        out: Future = Future()

        def done(inner: Future) -> None:
            self._refs.discard(ref)
            try:
                out.set_result(inner.result())
            except Exception as e:  # noqa: BLE001 - a worker or node that died under the task
                text = str(e).strip()  # its first sentence: Ray's go on about where to look next
                reason = f"{type(e).__name__}: {text.split('. ')[0].splitlines()[0] if text else ''}"
                out.set_result(CellOutcome(None, killed=True, log_tail=log_tail(job.run_dir), error=reason))

        ref.future().add_done_callback(done)
        return out

    def shutdown(self) -> None:
        """Cancel the cells still queued or running (a stopped driver), then stop the Ray started for the run."""
        for ref in list(self._refs):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001, S110 - a task that finished meanwhile cannot be cancelled
                pass
        if self.started:
            self.ray.shutdown()


def run_in_folder(folder: str, job: CellJob, env: dict[str, str]) -> CellOutcome:
    """On a Ray worker: `run_cell_job` in the driver's folder, so that a relative --output_dir or model path means
    what it means to the driver (a Ray worker starts in the folder its node's `ray start` ran in)."""
    try:
        os.chdir(folder)
    except OSError as e:
        if not os.path.isabs(job.run_dir):
            host = socket.gethostname()
            return CellOutcome(None, error=f"{host} has no folder {folder} for {job.run_dir} ({e})", host=host)
    return run_cell_job(job, env)


@contextlib.contextmanager
def _one_gcs_attempt():
    """Ray tries to reach a cluster's GCS 20 times, and on an address that accepts connections but is not Ray each try
    waits about 40 s (13 minutes in all); one try tells a live cluster from that. A value the user set is kept."""
    if RAY_GCS_ATTEMPTS in os.environ:
        yield
        return
    os.environ[RAY_GCS_ATTEMPTS] = "1"
    try:
        yield
    finally:
        os.environ.pop(RAY_GCS_ATTEMPTS, None)


def _check_reachable(address: str, timeout_s: float) -> None:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or address, int(port or 6379)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot reach Ray at --ray_address {address} within {timeout_s:.0f} s ({e}): start the cluster "
            "(`ray start --head` on its head node) or fix the address"
        ) from None
