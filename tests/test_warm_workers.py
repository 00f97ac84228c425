"""Warm workers (`--jobs N`, `--worker_mode warm`): a cell's adapter is bitwise the one it gets alone, a worker starts
every cell from a fresh process's global state and is replaced after --max_cells_per_worker cells, a killed worker
takes only its cell (retried, no torn or duplicated results line), each worker keeps its devices, and SIGTERM of the
driver stops the workers.

The stand-ins for `rmlora train` below run inside the workers, which import them from this module by name. Each
worker imports torch and transformers once (5–15 s on 2 cores), which is most of these tests' time.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest
import torch
import transformers

from helpers import (
    assert_sigterm_stops_the_running_cells,
    save_text_model,
    start_killer,
    subprocess_env,
    tiny_rte_flags,
)
from rmlora.cli.main import main as rmlora_main
from rmlora.errors import ConfigError
from rmlora.harness import warm_pool
from rmlora.harness.executors import CellJob, run_cell_job, thread_env
from rmlora.harness.grid import build_grid
from rmlora.harness.sweep import Sweep
from rmlora.harness.warm_pool import START_FAILED, WarmExecutor, WarmSlot


def flags_of(argv: list[str]) -> dict[str, str]:
    return {argv[i][2:]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}


def write_metrics(flags: dict[str, str]) -> None:
    metrics = {"method": flags["method"], "seed": int(flags["seed"]), "task": "rte", "metrics": {"eval_accuracy": 0.5}}
    with open(os.path.join(flags["output_dir"], "metrics.json"), "w") as f:
        json.dump(metrics, f)


def report_state(argv: list[str]) -> int:
    """Writes the global state this cell starts from (state.json); `--dirty 1` then changes all of it."""
    flags = flags_of(argv)
    warnings.warn("a warning shown once per location", UserWarning, stacklevel=1)
    transformers.logging.get_logger("rmlora.test").warning_once("a transformers warning shown once per process")
    state = {
        "pid": os.getpid(),
        "marker_env": os.environ.get("RMLORA_TEST_LEFT_BEHIND"),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "cwd": os.getcwd(),
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "tf32": [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32],
        "matmul_precision": torch.get_float32_matmul_precision(),
        "grad": torch.is_grad_enabled(),
        "dtype": str(torch.get_default_dtype()),
        "draws": [random.random(), float(np.random.rand()), float(torch.rand(1))],
        "verbosity": transformers.logging.get_verbosity(),
        "warning_filters": len(warnings.filters),
    }
    with open(os.path.join(flags["output_dir"], "state.json"), "w") as f:
        json.dump(state, f)
    if flags.get("dirty") == "1":  # what a run may leave behind in its process
        os.environ["RMLORA_TEST_LEFT_BEHIND"] = "1"
        os.chdir(flags["output_dir"])
        torch.set_num_threads(2)
        torch.use_deterministic_algorithms(True)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("medium")
        torch.set_grad_enabled(False)
        torch.set_default_dtype(torch.float64)
        torch.rand(3), random.random(), np.random.rand()
        transformers.logging.set_verbosity_debug()
        warnings.simplefilter("ignore")
    return 0


def test_a_warm_worker_starts_every_cell_from_a_fresh_process_state(tmp_path, monkeypatch):
    """Cells 1 and 2 share a worker (cell 1 changes its state, its working directory included); cell 3 is the first
    of a fresh worker (--max_cells_per_worker 2): cells 2 and 3 see the same state, and the same warnings are shown in
    their logs. The run folders are relative: each is where the sweep's working directory says, and so is the log
    tail read after cell 1."""
    monkeypatch.chdir(tmp_path)  # the workers start in it
    executor = WarmExecutor(1, threads_per_cell=1, devices=[], max_cells_per_worker=2, train=report_state)
    try:
        states, logs = [], []
        for i, dirty in enumerate(["1", "0", "0"]):
            run_dir = f"c{i}"
            job = CellJob(f"c{i}", run_dir, {"cell": f"c{i}"}, ["--dirty", dirty, "--output_dir", run_dir])
            outcome = executor.submit(job).result()
            assert outcome.rc == 0
            with open(tmp_path / run_dir / "state.json") as f:
                states.append(json.load(f))
            with open(tmp_path / run_dir / "train.log") as f:
                logs.append(f.read())
            assert outcome.log_tail == [line for line in logs[-1].splitlines() if line.strip()][-5:]
    finally:
        executor.shutdown()
    pids = [s.pop("pid") for s in states]
    assert pids[0] == pids[1] != pids[2]  # recycled after 2 cells
    # the random generators start where the worker's started (a fresh process seeds them from the OS: each run
    # seeds them itself), so cell 2 draws what cell 1 drew before it drew more
    draws = [s.pop("draws") for s in states]
    assert draws[0] == draws[1] != draws[2]
    assert states[0] == states[1] == states[2]  # what cell 1 left behind is gone
    assert states[1]["marker_env"] is None and states[1]["omp"] == "1" and states[1]["threads"] == 1
    assert states[1]["cwd"] == str(tmp_path)
    for i, log in enumerate(logs):
        assert log.startswith(f"[rmlora] warm worker {pids[i]}: cell {[1, 2, 1][i]} of at most 2")
        assert "a warning shown once per location" in log
        assert "a transformers warning shown once per process" in log


def test_warm_cells_give_the_adapters_of_cells_run_alone(tmp_path, monkeypatch):
    """rm-lora (with --full_determinism, which changes global flags) then lora in one warm worker; lora alone as its
    own `rmlora train` process: the same adapter file, byte for byte."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the workers' datasets cache
    model = save_text_model(str(tmp_path / "tiny-bert"))
    common = tiny_rte_flags(model) + ["--lora_r", "4", "--save_strategy", "no"]

    def job(name, *extra):
        run_dir = str(tmp_path / name)
        return CellJob(name, run_dir, {"cell": name}, [*common, *extra, "--output_dir", run_dir])

    a = job("a", "--method", "rm-lora", "--seed", "1", "--full_determinism", "true")
    b = job("b", "--method", "lora", "--seed", "0")
    executor = WarmExecutor(1, threads_per_cell=1, devices=[])
    try:
        assert [executor.submit(j).result().rc for j in (a, b)] == [0, 0]
    finally:
        executor.shutdown()
    alone = job("alone", "--method", "lora", "--seed", "0")
    assert run_cell_job(alone, thread_env(1)).rc == 0
    first_lines = [open(os.path.join(j.run_dir, "train.log")).readline().split()[:4] for j in (a, b)]
    assert first_lines[0] == first_lines[1]  # one worker
    with open(os.path.join(b.run_dir, "adapter_model.safetensors"), "rb") as f:
        warm = f.read()
    with open(os.path.join(alone.run_dir, "adapter_model.safetensors"), "rb") as f:
        assert f.read() == warm
    with open(os.path.join(a.run_dir, "adapter_model.safetensors"), "rb") as f:
        assert f.read() != warm  # another cell: the comparison can tell adapters apart


def killed_sometimes(argv: list[str]) -> int:
    """rm-lora cells write their worker's pid for the killer and wait to be killed (seed 0: the first attempt
    only, seed 1: every attempt); the lora cell waits until the first kill, so it is running when it happens."""
    flags = flags_of(argv)
    marker = os.environ["RMLORA_TEST_MARKER"]
    name = f"{flags['method']}_s{flags['seed']}"
    counter = os.path.join(marker, name + ".attempts")
    n = int(open(counter).read()) if os.path.exists(counter) else 0
    with open(counter, "w") as f:
        f.write(str(n + 1))
    print("attempt", n + 1, "of", name, "devices", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
    with open(os.path.join(marker, name + f".{n + 1}.devices"), "w") as f:
        f.write(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    if flags["method"] == "rm-lora" and (n == 0 or flags["seed"] == "1"):
        with open(os.path.join(marker, "victim.tmp"), "w") as f:
            f.write(str(os.getpid()))
        os.replace(os.path.join(marker, "victim.tmp"), os.path.join(marker, "victim.pid"))
        time.sleep(120)
    if flags["method"] == "lora":
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(marker, "killed")) and time.time() < deadline:
            time.sleep(0.05)
    write_metrics(flags)
    return 0


def test_a_killed_worker_takes_only_its_cell_which_is_retried(tmp_path, monkeypatch):
    marker = str(tmp_path / "marker")
    os.makedirs(marker)
    monkeypatch.setenv("RMLORA_TEST_MARKER", marker)
    out = str(tmp_path / "cmp")
    executor = WarmExecutor(
        2, devices_per_cell=2, threads_per_cell=1, devices=["0", "1", "2", "3"], train=killed_sometimes
    )
    cells = build_grid(["lora", "rm-lora"], [4], [0]) + build_grid(["rm-lora"], [4], [1])
    sweep = Sweep(out, cells, ["--model_name_or_path", "tiny", "--task_name", "rte"], progress=False, executor=executor)
    stop = threading.Event()
    killed = start_killer(marker, stop)
    try:
        result = sweep.run()
    finally:
        stop.set()
    attempts = {p[: -len(".attempts")]: int(open(os.path.join(marker, p)).read()) for p in os.listdir(marker)
                if p.endswith(".attempts")}  # fmt: skip
    assert attempts == {"lora_s0": 1, "rm-lora_s0": 2, "rm-lora_s1": 2}  # the lora cell ran on, undisturbed
    assert len(killed) == 3
    assert sorted(result.retried) == ["rm-lora_r4_s0", "rm-lora_r4_s1"]
    assert result.failed == [("rm-lora_r4_s1", "rmlora train killed by signal 9")]
    with open(os.path.join(out, "results.jsonl")) as f:
        lines = [json.loads(line)["cell"] for line in f]  # every line whole JSON, each cell once
    assert sorted(lines) == ["lora_r4_s0", "rm-lora_r4_s0"]
    with open(os.path.join(out, "runs", "rm-lora_r4_s0", "train.log")) as f:
        log = f.read().splitlines()
    assert log[0].startswith("[rmlora] warm worker ") and f" {killed[0]}:" not in log[0]  # not the dead worker
    assert log[1].startswith("attempt 2 of rm-lora_s0")  # the retry's own folder and log
    # each worker has its slot's devices: the two cells that ran at the same time had two different ones
    devices = {p: open(os.path.join(marker, p)).read() for p in os.listdir(marker) if p.endswith(".devices")}
    assert {devices["lora_s0.1.devices"], devices["rm-lora_s0.1.devices"]} == {"0,1", "2,3"}
    assert set(devices.values()) == {"0,1", "2,3"} and len(devices) == 5


def sleeper(argv: list[str]) -> int:
    """Writes its worker's pid into the folder RMLORA_TEST_PIDS, then sleeps."""
    open(os.path.join(os.environ["RMLORA_TEST_PIDS"], str(os.getpid())), "w").close()
    time.sleep(120)
    return 0


SIGTERM_DRIVER = """
import sys
from rmlora.harness.grid import build_grid
from rmlora.harness.sweep import Sweep
from rmlora.harness.warm_pool import WarmExecutor
from test_warm_workers import sleeper

executor = WarmExecutor(2, threads_per_cell=1, devices=[], train=sleeper)
sweep = Sweep(sys.argv[1], build_grid(["lora"], [4], [0, 1, 2]), ["--model_name_or_path", "tiny", "--task_name", "rte"],
              progress=False, executor=executor)
sweep.run()
"""


@pytest.mark.slow
def test_sigterm_of_a_warm_sweep_stops_its_workers(tmp_path):
    """`kill <compare pid>` with warm workers leaves no worker training on, and no results line."""
    pids = tmp_path / "pids"
    pids.mkdir()
    env = subprocess_env(RMLORA_TEST_PIDS=str(pids))
    driver = subprocess.Popen([sys.executable, "-c", SIGTERM_DRIVER, str(tmp_path / "cmp")], env=env)
    assert_sigterm_stops_the_running_cells(driver, pids, str(tmp_path / "cmp"))


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--max_cells_per_worker", "0"], "--max_cells_per_worker must be at least 1, got 0"),
        (["--worker_mode", "process", "--max_cells_per_worker", "-1"], "--max_cells_per_worker must be at least 1"),
    ],
)
def test_bad_worker_flags_are_one_line_and_status_2(tmp_path, capsys, extra, match, monkeypatch):
    monkeypatch.setattr("rmlora.harness.sweep.Sweep.validate", lambda self: None)
    argv = ["compare", "--output_dir", str(tmp_path), "--methods", "lora", "--model_name_or_path", "x", "--jobs", "2"]
    assert rmlora_main(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


# -- the worker's life in the driver, with stand-ins for processes (no worker is started) -------------------------


class FakeProcess:
    """A multiprocessing.Process that records what the driver does to it; `stubborn`: SIGTERM does not end it."""

    def __init__(self, name="w", exitcode=None, stubborn=False, events=None):
        self.name, self.exitcode, self.stubborn = name, exitcode, stubborn
        self.events = [] if events is None else events
        self.closed = False

    def terminate(self):
        self.events.append(("terminate", self.name))
        if not self.stubborn:
            self.exitcode = -signal.SIGTERM

    def kill(self):
        self.events.append(("kill", self.name))
        self.exitcode = -signal.SIGKILL

    def join(self, timeout=None):
        self.events.append(("join", self.name, timeout))
        if self.exitcode is None and timeout:
            time.sleep(min(timeout, 1.0))

    def close(self):
        assert self.exitcode is not None, "closed a running process"
        self.closed = True


class FakeThread:
    def __init__(self, alive=True):
        self.alive = alive

    def is_alive(self):
        return self.alive


class FakePool:
    def __init__(self, manager=None):
        self._executor_manager_thread = manager

    def shutdown(self, wait=True, cancel_futures=False):
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent check is Linux-only")
def test_a_worker_refuses_to_start_only_when_its_driver_died(monkeypatch):
    """The driver may be PID 1 (a container's entrypoint): a worker whose parent is PID 1 starts if PID 1 started it."""
    monkeypatch.setattr(warm_pool, "die_with_parent", lambda: None)
    monkeypatch.setattr(warm_pool, "freeze_long_lived_objects", lambda: None)
    monkeypatch.setattr(warm_pool, "_baseline", None)
    monkeypatch.setattr(os, "getppid", lambda: 1)

    def exit_(status):
        raise SystemExit(f"os._exit({status})")

    monkeypatch.setattr(os, "_exit", exit_)
    assert warm_pool.worker_ready(1) == os.getpid()  # the driver is PID 1 and alive
    assert warm_pool._baseline is not None
    with pytest.raises(SystemExit, match=r"os._exit\(1\)"):
        warm_pool.worker_ready(4242)  # the driver was 4242: the worker was handed to PID 1
    assert not warm_pool.orphaned(1) and warm_pool.orphaned(2)


def test_recycling_a_worker_releases_the_workers_that_have_exited():
    """Each recycled worker's Process holds file descriptors: one whose pool thread is done is closed and dropped at
    the next recycling, so a sweep of thousands of cells does not run out of them."""
    slot = WarmSlot({}, 1)
    workers = []
    for i in range(3):
        manager = FakeThread()
        slot.pool, slot.process = FakePool(manager), FakeProcess(f"w{i}")
        workers.append((slot.process, manager))
        slot.close(wait=False)  # recycled after its cell
        if i == 0:
            workers[0][0].exitcode = 0  # w0 has exited, but its pool's thread still holds it
        if i == 1:
            workers[0][1].alive = False
            workers[1][0].exitcode, workers[1][1].alive = 0, False
    assert [w.closed for w, _ in workers] == [True, True, False]
    assert [entry[0].name for entry in slot.exiting] == ["w2"]  # still exiting: kept, joined by the final close
    slot.close()
    assert slot.exiting == []


def test_a_worker_that_dies_before_it_is_ready_says_why(tmp_path, monkeypatch):
    """A worker that cannot start (a script without the main guard, an import error) is one line of its own, without
    the stale log of an earlier attempt; one that dies in a cell is the cell's failure, with the cell's log."""
    run_dir = tmp_path / "c"
    run_dir.mkdir()
    (run_dir / "train.log").write_text("an earlier attempt's log\n")
    job = CellJob("c", str(run_dir), {"cell": "c"}, ["--output_dir", str(run_dir)])
    slot = WarmSlot({}, 8)

    def dies_starting():
        slot.pool, slot.process = FakePool(), FakeProcess(exitcode=1)
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(slot, "_start", dies_starting)
    outcome = slot.run(job, report_state)
    assert (outcome.rc, outcome.killed, outcome.error, outcome.log_tail) == (1, False, START_FAILED, [])

    slot.pool, slot.process, slot.pid = FakePool(), FakeProcess(exitcode=1), 1234  # a ready worker
    outcome = slot._worker_died(job, starting=False)
    assert (outcome.error, outcome.log_tail) == ("warm worker exited with 1", ["an earlier attempt's log"])


def test_shutdown_terminates_every_busy_worker_then_waits_for_all_at_once(monkeypatch):
    """Two busy workers that ignore SIGTERM: both are terminated before either is waited for, the waits share one
    STOP_TIMEOUT_S, then both are killed."""
    monkeypatch.setattr(warm_pool, "STOP_TIMEOUT_S", 0.5)
    events = []
    executor = WarmExecutor(2, threads_per_cell=1, devices=[])
    for i, slot in enumerate(executor.all_slots):
        slot.pool, slot.process, slot.busy = FakePool(), FakeProcess(f"w{i}", stubborn=True, events=events), True
    executor.shutdown()
    assert events[:2] == [("terminate", "w0"), ("terminate", "w1")]
    waits = [e[2] for e in events if e[0] == "join" and e[2] is not None]
    assert len(waits) == 2 and sum(waits) <= 0.5 + 0.1  # one deadline for both, not 0.5 s each
    assert ("kill", "w0") in events and ("kill", "w1") in events


def test_a_script_without_the_main_guard_fails_its_workers_start(tmp_path, monkeypatch):
    """In a worker importing a script that runs a warm Sweep at top level, the script's own sweep cannot spawn: it
    raises (so the worker dies while starting and the driver reports START_FAILED) instead of failing one cell and
    going on into the driver's cells. No process is started: multiprocessing refuses the spawn."""
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    slot = WarmSlot({}, 8)
    job = CellJob("c", str(tmp_path / "c"), {"cell": "c"}, ["--output_dir", str(tmp_path / "c")])
    try:
        with pytest.raises(ConfigError, match="needs `if __name__ == '__main__':`"):
            slot.run(job, report_state)
    finally:
        slot.close()
