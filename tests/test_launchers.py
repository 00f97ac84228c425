"""`rmlora train` itself under `torchrun` and `accelerate launch`, 2 CPU processes (gloo), on the tiny RTE fixture.

The CLI runs as users start it (`-m rmlora.cli.main train ...`, the module behind the `rmlora` console script); to see
what each rank did, tests/scripts/observe/ goes on PYTHONPATH, whose sitecustomize records every rank's trainable
weights, world size, drawn directions and the files it wrote (see that module).

accelerate 1.15 on a machine without GPUs: `--cpu --num_processes 2` (and `--num_machines 1 --num_processes 2`
without `--multi_gpu`) take accelerate's simple launcher and start ONE process, silently. `--multi_gpu
--num_machines 1 --num_processes 2` goes through torch.distributed.run and starts two; `--use_cpu` (TrainingArguments)
then puts both on the CPU with gloo. CUDA is hidden here so that the test means the same on a GPU machine.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import FIXTURES, QUICK, TESTS, save_text_model, subprocess_env

OBSERVE = os.path.join(TESTS, "scripts", "observe")
RTE = os.path.join(FIXTURES, "glue", "rte")
STEPS = 4
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes", "2"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_text_model(str(tmp_path_factory.mktemp("model") / "bert"), "bert")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: list[str], bert_dir: str, tmp_path, mask_mode: str = "strict"):
    obs, out = tmp_path / "observed", tmp_path / "out"
    obs.mkdir()
    env = subprocess_env(
        RMLORA_OBSERVE_DIR=str(obs),
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    env["PYTHONPATH"] = os.pathsep.join([OBSERVE, env["PYTHONPATH"]])
    args = [
        *QUICK,
        "--model_name_or_path",
        bert_dir,
        "--task_name",
        "rte",
        "--train_file",
        os.path.join(RTE, "train.tsv"),
        "--validation_file",
        os.path.join(RTE, "validation.tsv"),
        "--method",
        "rm-lora",
        "--mask_mode",
        mask_mode,
        "--learning_rate",
        "5e-2",
        "--max_steps",
        str(STEPS),
        "--use_cpu",
        "--output_dir",
        str(out),
    ]
    cmd = [*launcher, "-m", "rmlora.cli.main", "train", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]  # an abort at exit (gloo, -6) fails here too
    ranks = {
        int(f[4:-5]): json.loads((obs / f).read_text()) for f in os.listdir(obs) if f.endswith(".json")
    }  # rank<r>.json
    return proc, out, obs, ranks


def lora_weights(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if "lora_" in k}


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [TORCHRUN, [*ACCELERATE[:3], "--multi_gpu", *ACCELERATE[3:]]],
    ids=["torchrun", "accelerate-multi_gpu"],
)
def test_rmlora_train_on_two_ranks_ends_with_identical_replicas(bert_dir, tmp_path, launcher):
    if launcher[2] == "accelerate.commands.launch":
        launcher = [*launcher, "--main_process_port", str(free_port()), "--mixed_precision", "no"]
    proc, out, obs, ranks = launch(launcher, bert_dir, tmp_path)

    # two ranks really ran, in one gloo group of size 2
    assert sorted(ranks) == [0, 1]
    assert [(r["world_size"], r["backend"]) for r in ranks.values()] == [(2, "gloo")] * 2
    assert ranks[0]["pid"] != ranks[1]["pid"]

    # both ranks drew the same directions at every step and hold bitwise-identical replicas
    assert ranks[0]["directions"] == ranks[1]["directions"]
    assert sorted(map(int, ranks[0]["directions"])) == list(range(STEPS))
    w0, w1 = load_file(obs / "rank0.safetensors"), load_file(obs / "rank1.safetensors")
    assert w0.keys() == w1.keys() and lora_weights(w0)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"replicas differ in {k}"

    # the replicas trained (PEFT starts every B at 0), and the adapter on disk is that replica (PEFT's file drops
    # the adapter name from the keys)
    assert all(v.abs().max() > 0 for k, v in lora_weights(w0).items() if "lora_B" in k)
    saved = load_file(out / "adapter_model.safetensors")
    for k, v in lora_weights(w0).items():
        assert torch.equal(saved[k.replace(".default", "")], v), k

    # files: rank 0 writes each once (metrics.json last), rank 1 writes nothing; the record is printed once
    assert ranks[1]["writes"] == []
    assert ranks[0]["writes"].count("metrics.json") == 1 and ranks[0]["writes"][-1] == "metrics.json"
    assert ranks[0]["writes"].count("diagnostics.json") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["total_steps"] == STEPS and metrics["method"] == "rm-lora"
    assert proc.stdout.count('"output_dir"') == 1, proc.stdout
    printed = json.loads(proc.stdout[proc.stdout.index("{\n") :])
    assert printed["eval_accuracy"] == metrics["metrics"]["eval_accuracy"]


@pytest.mark.slow
def test_accelerate_cpu_flag_starts_a_single_process(bert_dir, tmp_path):
    """The pitfall docs/RELIABILITY.md warns about: `--cpu --num_processes 2` runs ONE process (accelerate 1.15)."""
    proc, out, obs, ranks = launch([*ACCELERATE[:3], "--cpu", *ACCELERATE[3:]], bert_dir, tmp_path)
    assert sorted(ranks) == [0] and ranks[0]["world_size"] == 1
