"""Cells in parallel: `--jobs N` local processes and `--backend ray` tasks give the adapters of the sequential
run, bit for bit; a cell killed mid-way is retried with no torn or duplicated results line; bad input is one line.

The multi-process tests are marked slow (CI runs them); each trains 4 tiny cells (a few seconds per cell).
"""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import sys
import threading
import time

import pytest

import rmlora.harness.executors as executors_mod
from helpers import (
    assert_same_adapters,
    assert_sigterm_stops_the_running_cells,
    cell_adapters,
    results_cells,
    start_killer,
    tiny_rte_flags,
)
from rmlora.cli.main import main as rmlora_main
from rmlora.errors import ConfigError
from rmlora.harness.executors import CellJob, LocalExecutor, RayExecutor
from rmlora.io.run_files import read_results

CELLS = ["lora_r4_s0", "lora_r4_s1", "rm-lora_r4_s0", "rm-lora_r4_s1"]


def tiny_argv(model, out, *extra):
    return [
        "compare",
        "--output_dir",
        out,
        "--methods",
        "lora,rm-lora",
        "--ranks",
        "4",
        "--seeds",
        "0,1",
        "--no_progress",
        "--no_report",
        *tiny_rte_flags(model),
        *extra,
    ]


def metrics(out):
    drop = ("runtime", "per_second", "wall_time")
    return {
        r["cell"]: {k: v for k, v in r["metrics"].items() if not any(d in k for d in drop)}
        for r in read_results(out).records
    }


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The 2 methods × 2 seeds grid run with --jobs 1 (in this process, one thread), and its tiny model."""
    import datasets

    from helpers import save_text_model

    base = tmp_path_factory.mktemp("parallel")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(base / "hf_datasets"))
        mp.setenv("XDG_CACHE_HOME", str(base / "cache"))
        model = save_text_model(str(base / "tiny-bert"))
        out = str(base / "jobs1")
        start = time.time()
        assert rmlora_main(tiny_argv(model, out)) == 0
        return {"model": model, "out": out, "base": base, "wall": time.time() - start}


@pytest.mark.slow
def test_jobs_2_gives_the_adapters_of_jobs_1(sequential, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = str(tmp_path / "jobs2")
    assert rmlora_main(tiny_argv(sequential["model"], out, "--jobs", "2", "--threads_per_cell", "1")) == 0
    assert sorted(results_cells(out)) == CELLS
    assert metrics(out) == metrics(sequential["out"])
    assert_same_adapters(cell_adapters(out, CELLS), cell_adapters(sequential["out"], CELLS))
    for cell in CELLS:  # each cell ran as its own process, with its log in its folder
        assert os.path.getsize(os.path.join(out, "runs", cell, "train.log")) > 0


@pytest.mark.slow
def test_ray_backend_with_a_local_ray_gives_the_same_adapters(sequential, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = str(tmp_path / "ray")
    argv = tiny_argv(sequential["model"], out, "--backend", "ray", "--jobs", "2", "--threads_per_cell", "1")
    assert rmlora_main(argv) == 0
    assert sorted(results_cells(out)) == CELLS
    assert metrics(out) == metrics(sequential["out"])
    assert_same_adapters(cell_adapters(out, CELLS), cell_adapters(sequential["out"], CELLS))


# a stand-in for `rmlora train` (no torch import): counts its attempts per cell; the first attempt of rm-lora's
# cell writes its pid and sleeps until the test kills it
FAKE_TRAIN = """
import json, os, sys, time
marker, argv = sys.argv[1], sys.argv[2:]
flags = {argv[i][2:]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
name = flags["method"] + "_s" + flags["seed"]
counter = os.path.join(marker, name + ".attempts")
n = int(open(counter).read()) if os.path.exists(counter) else 0
open(counter, "w").write(str(n + 1))
print("attempt", n + 1, "of", name, "threads", os.environ.get("OMP_NUM_THREADS"), flush=True)
if flags["method"] == "rm-lora" and n < int(os.environ.get("FAKE_KILLS", "1")):
    open(os.path.join(marker, "victim.pid.tmp"), "w").write(str(os.getpid()))
    os.replace(os.path.join(marker, "victim.pid.tmp"), os.path.join(marker, "victim.pid"))
    time.sleep(120)
metrics = {"method": flags["method"], "lora_r": int(flags["lora_r"]), "seed": int(flags["seed"]), "task": "rte",
           "model": "tiny", "metrics": {"eval_accuracy": 0.5}, "param_counts": {"trainable": 1, "inference": 1}}
with open(os.path.join(flags["output_dir"], "metrics.json"), "w") as f:
    json.dump(metrics, f)
"""


FAKE_ARGV = ["--methods", "lora", "rm-lora", "--ranks", "4", "--seeds", "0", "--no_progress", "--no_report"]
FAKE_COMMON = ["--model_name_or_path", "tiny", "--task_name", "rte", "--jobs", "2", "--threads_per_cell", "1"]
FAKE_COMMON += ["--worker_mode", "process"]  # a `rmlora train` process per cell, replaced by FAKE_TRAIN


def attempts(marker):
    return {os.path.basename(p)[: -len(".attempts")]: int(open(p).read()) for p in glob.glob(f"{marker}/*.attempts")}


@pytest.mark.slow
def test_a_killed_cell_is_retried_without_torn_or_duplicated_lines(tmp_path, monkeypatch, capsys):
    marker = str(tmp_path / "marker")
    os.makedirs(marker)
    monkeypatch.setattr(executors_mod, "train_command", lambda argv: [sys.executable, "-c", FAKE_TRAIN, marker, *argv])
    monkeypatch.setattr("rmlora.harness.sweep.Sweep.validate", lambda self: None)  # "tiny" is no model folder
    out = str(tmp_path / "cmp")
    stop = threading.Event()
    start_killer(marker, stop)
    try:
        argv = ["compare", "--output_dir", out, *FAKE_ARGV, *FAKE_COMMON]
        assert rmlora_main(argv) == 0
        assert attempts(marker) == {"lora_s0": 1, "rm-lora_s0": 2}  # killed once, retried once
        assert sorted(results_cells(out)) == ["lora_r4_s0", "rm-lora_r4_s0"]
        assert "1 retries" in capsys.readouterr().err
        with open(os.path.join(out, "runs", "rm-lora_r4_s0", "train.log")) as f:
            assert f.read().split() == "attempt 2 of rm-lora_s0 threads 1".split()  # the retry's own folder
        # a re-run trains nothing
        assert rmlora_main(argv) == 0
        assert attempts(marker) == {"lora_s0": 1, "rm-lora_s0": 2}
        assert sorted(results_cells(out)) == ["lora_r4_s0", "rm-lora_r4_s0"]

        # killed more often than --max_retries allows: failed, with its log's last lines, the other cell done
        monkeypatch.setenv("FAKE_KILLS", "9")
        for p in glob.glob(f"{marker}/*.attempts"):
            os.remove(p)
        out2 = str(tmp_path / "cmp2")
        assert rmlora_main(["compare", "--output_dir", out2, *FAKE_ARGV, *FAKE_COMMON, "--max_retries", "0"]) == 1
        err = capsys.readouterr().err
        assert "failed rm-lora_r4_s0: rmlora train killed by signal 9" in err
        assert "| attempt 1 of rm-lora_s0 threads 1" in err
        assert results_cells(out2) == ["lora_r4_s0"]
    finally:
        stop.set()


def test_local_executor_gives_each_cell_its_own_devices(tmp_path, monkeypatch):
    script = "import os, sys; print(os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ['OMP_NUM_THREADS'])"
    executor = LocalExecutor(2, devices_per_cell=2, threads_per_cell=3, devices=["0", "1", "2", "3"])
    executor.command = lambda argv: [sys.executable, "-c", script]
    jobs = [CellJob(f"c{i}", str(tmp_path / f"c{i}"), {"cell": f"c{i}"}, []) for i in range(4)]
    outcomes = [f.result() for f in [executor.submit(job) for job in jobs]]
    executor.shutdown()
    seen = [o.log_tail[-1] for o in outcomes]
    assert all(o.rc == 0 for o in outcomes) and {s.split()[1] for s in seen} == {"3"}
    assert {s.split()[0] for s in seen} <= {"0,1", "2,3"} and len({s.split()[0] for s in seen}) == 2
    with pytest.raises(ConfigError, match="needs 6 devices, 4 are visible"):
        LocalExecutor(3, devices_per_cell=2, devices=["0", "1", "2", "3"])
    cpu = LocalExecutor(2, devices_per_cell=1, threads_per_cell=1, devices=[])
    cpu.command = lambda argv: [sys.executable, "-c", script]
    assert cpu.submit(jobs[0]).result().log_tail[-1] == "None 1"
    cpu.shutdown()


def test_a_worker_that_cannot_write_the_output_folder_is_one_clear_error(tmp_path, capsys):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    outcome = executors_mod.run_cell_job(CellJob("c", str(blocked / "runs" / "c"), {}, []))
    assert outcome.rc is None and "cannot write" in outcome.error


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--jobs", "0"], "--jobs must be at least 1, got 0"),
        (["--jobs", "2", "--threads_per_cell", "0"], "--threads_per_cell must be at least 1"),
        (["--ray_address", "auto"], "--ray_address needs --backend ray"),
        (["--max_retries", "-1", "--jobs", "2"], "--max_retries must be 0 or more"),
    ],
)
def test_bad_parallel_flags_are_one_line_and_status_2(tmp_path, capsys, extra, match, monkeypatch):
    monkeypatch.setattr("rmlora.harness.sweep.Sweep.validate", lambda self: None)
    argv = ["compare", "--output_dir", str(tmp_path), "--methods", "lora", "--model_name_or_path", "x"] + extra
    assert rmlora_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def test_ray_missing_is_a_one_line_install_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setattr("rmlora.harness.sweep.Sweep.validate", lambda self: None)
    argv = ["compare", "--output_dir", str(tmp_path), "--methods", "lora", "--backend", "ray"]
    assert rmlora_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'rmlora[cluster]'" in err[0]


def test_an_unreachable_ray_address_is_one_line_within_the_timeout(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setattr("rmlora.harness.sweep.Sweep.validate", lambda self: None)
    start = time.time()
    argv = ["compare", "--output_dir", str(tmp_path), "--methods", "lora", "--backend", "ray"]
    assert rmlora_main(argv + ["--ray_address", "127.0.0.1:1"]) == 2  # nothing listens on port 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach Ray at --ray_address 127.0.0.1:1" in err[0]
    assert time.time() - start < executors_mod.RAY_CONNECT_TIMEOUT_S + 5


@pytest.mark.slow
def test_an_address_that_is_not_ray_gives_up_within_a_minute(monkeypatch):
    """A server on 127.0.0.1 that accepts connections and never answers: the TCP check passes and Ray's handshake
    gives up after one try (about 40 s; Ray's own 20 tries would take 13 minutes); where the address does not
    answer at all, the TCP check gives up after RAY_CONNECT_TIMEOUT_S."""
    ray = pytest.importorskip("ray")
    # Ray swaps 127.0.0.1 for the machine's outward address (for the other nodes' sake): keep it on loopback
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    address = f"127.0.0.1:{server.getsockname()[1]}"
    accepted, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])  # kept open, never written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    start = time.time()
    try:
        with pytest.raises(ConfigError, match=f"cannot connect to Ray at --ray_address {address}") as caught:
            RayExecutor(address)
        assert time.time() - start < 60
        assert len(str(caught.value).splitlines()) == 1
        assert len(accepted) >= 2  # the TCP check's connection, then Ray's own
        assert executors_mod.RAY_GCS_ATTEMPTS not in os.environ  # one try for this address only
    finally:
        stop.set()
        thread.join()
        for conn in [*accepted, server]:
            conn.close()


SIGTERM_DRIVER = """
import os, sys
import rmlora.harness.executors as executors_mod
from rmlora.harness.executors import LocalExecutor
from rmlora.harness.grid import build_grid
from rmlora.harness.sweep import Sweep
child = "import os, sys, time; open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close(); time.sleep(120)"
executors_mod.train_command = lambda argv: [sys.executable, "-c", child, sys.argv[2]]
sweep = Sweep(sys.argv[1], build_grid(["lora"], [4], [0, 1, 2]), ["--model_name_or_path", "tiny", "--task_name", "rte"],
              progress=False, executor=LocalExecutor(2, threads_per_cell=1, devices=[]))
sweep.run()
"""


@pytest.mark.slow
def test_sigterm_of_a_parallel_sweep_stops_its_cells(tmp_path):
    """`kill <compare pid>` with --jobs 2 leaves no cell process training on, and no results line."""
    import subprocess

    pids = tmp_path / "pids"
    pids.mkdir()
    driver = subprocess.Popen([sys.executable, "-c", SIGTERM_DRIVER, str(tmp_path / "cmp"), str(pids)])
    assert_sigterm_stops_the_running_cells(driver, pids, str(tmp_path / "cmp"))
