"""`rmlora compare --backend ray` on a Ray cluster of two nodes on this machine, with faults: a node killed while
its cell trains (the cell reruns on the head; the adapters are those of a run without the kill, bit for bit; every
results line whole and once) and the driver killed mid-sweep (the same command again retrains no finished cell).

Each node is `ray start --block` in its own session, with its own raylet and one CPU; killing a node is what a lost
machine does: SIGKILL to every process it started (the `ray start`, its raylet, its Ray workers, which Ray puts in
process groups of their own, and the cells' `rmlora train`). The nodes talk over 127.0.0.1 only (see LAUNCH).
Not covered here: real networking between machines, shared storage (both nodes see this machine's disk).
`pytest tests/test_ray_cluster.py -m slow -q -s` prints the measured times (docs/RELIABILITY.md).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from helpers import assert_same_adapters, cell_adapters, results_cells, save_text_model, tiny_rte_flags
from rmlora.cli.main import main as rmlora_main
from rmlora.harness.executors import CellJob, run_in_folder
from rmlora.io.run_files import read_results

CELLS = ["lora_r4_s0", "lora_r4_s1", "rm-lora_r4_s0", "rm-lora_r4_s1"]
DEADLINE_S = 300  # the whole test; every wait below is bounded by what is left of it

# Ray replaces 127.0.0.1 by the machine's outward address (so that other machines can reach a node);
# here no traffic may leave loopback, so `ray start` keeps the address it is given and every Ray process
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, in ENV) takes 127.0.0.1 as its node's address. The flag is set back to
# "clusters allowed" in the launcher only, which otherwise refuses to join a second node.
LAUNCH = """
import sys
import ray._private.ray_constants as constants
import ray._private.services as services
constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = "ray"
main()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (Linux /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        table[int(entry)] = (ppid, cmdline)
    return table


def descendants(pid: int, table) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, (ppid, _) in table.items() if ppid == parent]
        found += children
        todo += children
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def trainings(table, out: str, under: int | None = None) -> list[int]:
    """The `rmlora train` processes of the sweep in `out` (of one node: under its `ray start`); their --output_dir is
    relative where the sweep's is."""
    pids = table if under is None else descendants(under, table)
    runs = os.path.join(os.path.basename(out), "runs", "")
    return [p for p in pids if "rmlora.cli.main train" in table[p][1] and runs in table[p][1]]


class Cluster:
    """A head and a second node on this machine; `stop()` SIGKILLs every process they started."""

    def __init__(self, base):
        # Ray's sockets live under the temp dir and a Unix socket path has at most 107 bytes: a pytest tmp_path is
        # too deep, so the temp dir is a short one (removed by stop())
        self.temp = tempfile.mkdtemp(prefix="rmray", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.base = base
        self.env = {
            **os.environ,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            # a token of its own: Ray would otherwise share ~/.ray/auth_token with any other Ray on the machine
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "XDG_CACHE_HOME": str(base / "cache"),
            "HF_DATASETS_CACHE": str(base / "hf_datasets"),
        }
        self.nodes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, str] = {}
        self.drivers: list[subprocess.Popen] = []
        # a Ray worker starts in the folder its node's `ray start` ran in: not the driver's, as on a real cluster
        self.folder = base / "nodes"
        self.folder.mkdir()

    def start(self, name: str, head: bool = False) -> None:
        if head:
            where = ["--head", f"--port={self.port}", f"--temp-dir={self.temp}", "--include-dashboard=false"]
            where.append(f"--ray-client-server-port={free_port()}")
        else:
            where = [f"--address={self.address}"]
        ports = ["--min-worker-port=0", "--max-worker-port=0"]  # random: the two nodes' workers never collide
        for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port"):
            ports.append(f"--{flag}={free_port()}")
        ports.append(f"--runtime-env-agent-port={free_port()}")
        self.logs[name] = str(self.base / f"{name}.log")
        with open(self.logs[name], "w") as log:
            self.nodes[name] = subprocess.Popen(
                [sys.executable, "-c", LAUNCH, "start", *where, *ports, "--node-ip-address=127.0.0.1", "--num-cpus=1"]
                + ["--disable-usage-stats", "--block"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.folder,
                start_new_session=True,
            )

    def wait_started(self, name: str, deadline: float) -> None:
        while time.time() < deadline:
            with open(self.logs[name]) as f:
                if "Ray runtime started" in f.read():
                    return
            assert self.nodes[name].poll() is None, f"ray start of {name} ended: {open(self.logs[name]).read()[-2000:]}"
            time.sleep(0.5)
        raise AssertionError(f"{name} did not start in time: {open(self.logs[name]).read()[-2000:]}")

    def kill(self, name: str) -> None:
        """SIGKILL the node and everything it started, at once, as a lost machine."""
        node = self.nodes.pop(name)
        for pid in [node.pid, *descendants(node.pid, processes())]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.wait(timeout=30)

    def stop(self) -> None:
        for proc in self.drivers:
            proc.kill()
            proc.wait(timeout=30)
        for name in list(self.nodes):
            self.kill(name)
        # anything left (a worker whose raylet died before it): its command line names this cluster's temp dir;
        # `ray stop --force` would also end every other Ray on the machine
        for pid, (_, cmdline) in processes().items():
            if self.temp in cmdline and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path):
    started = Cluster(tmp_path)
    yield started
    started.stop()


def tiny_argv(model: str, out: str, *extra: str) -> list[str]:
    """`rmlora compare` of 2 methods × 2 seeds on the tiny BERT (test_compare_parallel's grid)."""
    argv = ["compare", "--output_dir", out, "--methods", "lora,rm-lora", "--ranks", "4", "--seeds", "0,1"]
    return argv + ["--no_progress", "--no_report", *tiny_rte_flags(model), *extra]


def on_ray(cluster: Cluster) -> list[str]:
    return ["--backend", "ray", "--ray_address", cluster.address, "--threads_per_cell", "1"]


def driver(cluster: Cluster, argv: list[str], log: str, cwd=None) -> subprocess.Popen:
    """`rmlora ARGV` as its own process (the driver), its output in `log`."""
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rmlora.cli.main", *argv],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=cluster.env,
            cwd=cwd,
        )
    cluster.drivers.append(proc)
    return proc


def finish(proc: subprocess.Popen, deadline: float, log: str) -> str:
    try:
        rc = proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the sweep did not end in time: {open(log).read()[-3000:]}") from None
    text = open(log).read()
    assert rc == 0, text[-3000:]
    return text


def file_times(out: str, cell: str) -> dict[str, int]:
    run = os.path.join(out, "runs", cell)
    return {os.path.relpath(p, run): os.stat(p).st_mtime_ns for p in glob.glob(f"{run}/**", recursive=True)}


def test_a_worker_without_the_drivers_folder_refuses_a_relative_output_dir(tmp_path):
    job = CellJob("c", os.path.join("cmp", "runs", "c"), {}, [])
    outcome = run_in_folder(str(tmp_path / "not-on-this-node"), job, {})
    assert outcome.rc is None and not outcome.killed  # the sweep stops on it: every cell would fail alike
    assert f"has no folder {tmp_path / 'not-on-this-node'} for cmp/runs/c" in outcome.error


@pytest.mark.slow
def test_a_lost_node_and_a_killed_driver(cluster, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    start = time.time()
    deadline = start + DEADLINE_S

    def say(what):
        print(f"[{time.time() - start:5.0f} s] {what}", flush=True)

    cluster.start("head", head=True)
    cluster.wait_started("head", deadline)
    cluster.start("node2")

    # meanwhile, the reference: the same grid in this process, one cell after the other, nothing killed
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    model = save_text_model(str(tmp_path / "tiny-bert"))
    reference = str(tmp_path / "reference")
    assert rmlora_main(tiny_argv(model, reference)) == 0
    cluster.wait_started("node2", deadline)
    ready = time.time()
    say("cluster up, reference done")

    # 1. the second node is killed while one of its cells trains
    out = str(tmp_path / "lost-node")
    log = str(tmp_path / "lost-node.log")
    proc = driver(cluster, tiny_argv(model, out, *on_ray(cluster)), log)
    victims: list[int] = []
    while not victims and time.time() < deadline and proc.poll() is None:
        table = processes()
        victims = trainings(table, out, under=cluster.nodes["node2"].pid)
        time.sleep(0.2)
    assert victims, f"no cell ran on the second node: {open(log).read()[-3000:]}"
    time.sleep(3)  # well into the cell: torch is being imported or the model trains
    killed_at = time.time()
    cluster.kill("node2")
    say("node2 killed")
    while "retrying" not in open(log).read() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    noticed = time.time() - killed_at
    text = finish(proc, deadline, log)
    recovery = time.time() - killed_at
    assert "4 cells: 0 already finished, 0 recovered, 4 trained (1 retries), 0 failed" in text
    lost = "NodeDiedError: Task failed because the node it was running on is dead or unavailable"
    assert f"was killed (rmlora train {lost}); retrying" in text  # Ray's first sentence, not its paragraph
    assert sorted(results_cells(out)) == CELLS  # each once, each whole
    assert_same_adapters(cell_adapters(out, CELLS), cell_adapters(reference, CELLS))

    # 2. the driver is killed once a cell has finished, then the same command runs again
    say("lost-node sweep done")
    cluster.start("node2")
    cluster.wait_started("node2", deadline)
    say("node2 back")
    # run from another folder than the nodes', with a relative --output_dir
    (tmp_path / "driver").mkdir()
    out = str(tmp_path / "driver" / "killed-driver")
    argv = tiny_argv(model, "killed-driver", *on_ray(cluster))
    log = str(tmp_path / "killed-driver.log")
    first = driver(cluster, argv, log, cwd=tmp_path / "driver")
    results = os.path.join(out, "results.jsonl")
    running: list[int] = []
    while time.time() < deadline and first.poll() is None and not (os.path.exists(results) and running):
        running = trainings(processes(), out)
        time.sleep(0.1)
    assert first.poll() is None, f"the sweep ended before it was killed: {open(log).read()[-3000:]}"
    assert running, "no cell trained when the driver was to be killed"
    first.kill()
    say("driver killed")
    first.wait(timeout=30)
    finished = results_cells(out)
    assert 1 <= len(finished) < len(CELLS)
    with open(results) as f:
        kept = f.read()
    times = {cell: file_times(out, cell) for cell in finished}
    # Ray ends the dead driver's tasks, and with them their `rmlora train` (they must not write on under a retry)
    killed_at = time.time()
    while any(alive(pid) for pid in running) and time.time() < deadline:
        time.sleep(0.2)
    assert not trainings(processes(), out), "the killed driver's cells train on"
    assert not [pid for pid in running if alive(pid)]
    cleanup = time.time() - killed_at

    say("its cells stopped")
    rerun_start = time.time()
    text = finish(driver(cluster, argv, log, cwd=tmp_path / "driver"), deadline, log)
    rerun = time.time() - rerun_start
    assert f"4 cells: {len(finished)} already finished, 0 recovered, {4 - len(finished)} trained" in text
    with open(results) as f:
        assert f.read().startswith(kept)  # the earlier lines untouched
    assert sorted(results_cells(out)) == CELLS
    for cell in finished:  # not retrained: not one file of its run folder rewritten
        assert file_times(out, cell) == times[cell], cell
    assert_same_adapters(cell_adapters(out, CELLS), cell_adapters(reference, CELLS))
    assert read_results(out).by_cell().keys() == set(CELLS)

    print(
        f"\nmeasured: cluster up {ready - start:.0f} s (with the reference run); node lost: retried {noticed:.1f} s "
        f"after the kill, {recovery:.0f} s from the kill to the sweep's end, 1 cell rerun; driver killed after "
        f"{len(finished)} finished cell(s): its cells "
        f"stopped {cleanup:.1f} s after, the rerun took {rerun:.0f} s and retrained {4 - len(finished)} cell(s); "
        f"whole test {time.time() - start:.0f} s; load average {os.getloadavg()[0]:.1f}"
    )
