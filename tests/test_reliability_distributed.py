"""Replicas stay identical under DDP (2 processes, gloo), a killed run resumes to the same adapter, and the process
group is torn down before interpreter exit."""

import gc
import json
import os
import subprocess
import sys
import weakref

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel

from helpers import subprocess_env
from rmlora.harness.run import end_distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "train_tiny.py")
ENV = subprocess_env(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")


def run(args, torchrun=False, check=True):
    cmd = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        if torchrun
        else [sys.executable]
    )
    proc = subprocess.run(cmd + [SCRIPT] + args, env=ENV, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("mask_mode", ["grad", "strict"])
def test_ddp_replicas_bitwise_identical(tmp_path, mask_mode):
    run(["--out", str(tmp_path), "--mask_mode", mask_mode, "--max_steps", "5", "--save_steps", "100"], torchrun=True)
    w0, w1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert w0.keys() == w1.keys() and any("lora_A" in k for k in w0)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"replicas differ in {k}"
    d0 = json.loads((tmp_path / "rank0_directions.json").read_text())
    d1 = json.loads((tmp_path / "rank1_directions.json").read_text())
    assert d0 == d1 and sorted(map(int, d0)) == [0, 1, 2, 3, 4]
    # the run really trained: LoRA weights differ from their initialization
    from helpers import peft_bert

    start = {n: p for n, p in peft_bert(r=8, seed=0).named_parameters() if "lora_A" in n}
    assert any(not torch.equal(w0[n], start[n].detach()) for n in start)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, mask_mode", [("rm-lora", "strict"), ("rm-lora", "grad"), ("sora", "grad"), ("adalora", "grad")]
)
def test_killed_run_resumes_to_the_same_adapter_bitwise(tmp_path, method, mask_mode):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run(["--out", str(full), "--method", method, "--mask_mode", mask_mode])
    proc = run(["--out", str(killed), "--method", method, "--mask_mode", mask_mode, "--kill_at", "3"], check=False)
    assert proc.returncode == -9  # SIGKILL right after step 3: checkpoint-2 is the last one on disk
    assert (killed / "checkpoint-2").is_dir() and not (killed / "checkpoint-4").exists()
    run(["--out", str(killed), "--method", method, "--mask_mode", mask_mode, "--resume", str(killed / "checkpoint-2")])
    a, b = load_file(full / "rank0.safetensors"), load_file(killed / "rank0.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"resumed run differs in {k}"


def test_end_distributed_tears_the_group_down_even_while_a_finished_ddp_wrapper_is_cyclic_garbage():
    # The CI abort ("terminate called without an active exception", rank exit -6): destroy_process_group() dropped
    # torch.distributed's references, but a finished Trainer's DDP wrapper, kept by a reference cycle, still held
    # the gloo group, so it was torn down during interpreter exit. One process, world size 1: the same objects.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    gc.disable()  # from before the cycle exists: the collector must not happen to free it before end_distributed
    try:
        group = dist.distributed_c10d._get_default_group()
        holder = {"ddp": DistributedDataParallel(torch.nn.Linear(2, 2))}
        holder["self"] = holder  # as the Trainer, its accelerator and callbacks reference each other
        ddp = weakref.ref(holder["ddp"])
        del holder
        end_distributed()
        assert not dist.is_initialized()
        assert ddp() is None, "the DDP wrapper (and through it the process group) outlived end_distributed()"
        assert sys.getrefcount(group) == 2  # `group` and getrefcount's argument: the group goes with `group`
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()
