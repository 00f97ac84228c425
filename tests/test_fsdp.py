"""RM-LoRA under FSDP2 (`fully_shard`, 2 CPU ranks, gloo): the sharded run equals a single-process run.

tests/scripts/fsdp_tiny.py trains a tiny BERT for 5 steps in a plain PyTorch loop, sharded on 2 ranks or in one
process, on the same 8 examples per step (4 per rank). Every LoRA matrix is a DTensor holding half of its rows on
each rank, so the penalty must gather the matrices and the masks must cut direction i of the full A / B to the rows
the rank holds (rmlora.core.sharding).

Tolerance: the two runs differ only in float32 summation order (the mean gradient over 8 examples computed as the
average of two means over 4, reduce-scattered). Measured after 5 AdamW steps: at most 7.5e-9 on any weight (a
few ulps of weights of size ~0.1-1). The test allows 1e-6 (over 100x that), while one step moves LoRA weights by
~lr = 1e-2 and a mask applied to a rank's local row numbers instead of the global ones moved them by 1e-2-2.6e-2.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import TESTS, subprocess_env

SCRIPT = os.path.join(TESTS, "scripts", "fsdp_tiny.py")
STEPS = 5
TOL = 1e-6
ENV = subprocess_env(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def run(out, args, torchrun):
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else []
    cmd = (prefix or [sys.executable]) + [SCRIPT, "--out", str(out), "--steps", str(STEPS), *args]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def load(out, name):
    return load_file(out / f"{name}.safetensors"), json.loads((out / f"{name}.json").read_text())


def at_step(weights, step):
    return {k.split("/", 1)[1]: v for k, v in weights.items() if k.startswith(f"{step}/")}


@pytest.mark.slow
@pytest.mark.parametrize("penalty, mask_mode", [("loss", "strict"), ("closed", "grad")])
def test_fsdp_two_ranks_equal_one_process(tmp_path, penalty, mask_mode):
    args = ["--penalty", penalty, "--mask_mode", mask_mode]
    run(tmp_path, args, torchrun=False)
    run(tmp_path, args, torchrun=True)
    single, js = load(tmp_path, "single")
    (r0, j0), (r1, j1) = load(tmp_path, "rank0"), load(tmp_path, "rank1")

    # really sharded: 2 ranks, each holding half of the rows of every LoRA matrix
    assert (js["world_size"], j0["world_size"], j1["world_size"]) == (1, 2, 2)
    for key, info in j0["shards"].items():
        rows = info["shape"][0]
        assert info["rows"] == [0, rows // 2] and j1["shards"][key]["rows"] == [rows // 2, rows], key

    # replicas agree: the matrices gathered on each rank are bitwise equal at every step, and so are the draws
    assert r0.keys() == r1.keys() == single.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"replicas differ in {k}"
    assert j0["directions"] == j1["directions"] == js["directions"]
    assert j0["penalties"] == pytest.approx(js["penalties"], rel=1e-6)

    # equal to the single-process run within float32 summation noise, for runs that move far beyond it
    for step in range(STEPS):
        now, before = at_step(single, step), at_step(single, step - 1)
        moved = max((now[k] - before[k]).abs().max().item() for k in now if "lora_" in k)
        assert moved > 1e-3
        for k, v in at_step(r0, step).items():
            assert torch.allclose(v, now[k], rtol=0, atol=TOL), (step, k, (v - now[k]).abs().max().item())

    if mask_mode == "strict":  # under FSDP too, the unselected rows of A and columns of B do not move at all
        for step in range(STEPS):
            now, before = at_step(r0, step), at_step(r0, step - 1)
            for module, (rows, cols) in j0["directions"][str(step)].items():
                a = f"{module}.lora_A.default.weight"
                b = f"{module}.lora_B.default.weight"
                still = [i for i in range(now[a].shape[0]) if i not in rows]
                assert torch.equal(now[a][still], before[a][still]), (step, a)
                still = [j for j in range(now[b].shape[1]) if j not in cols]
                assert torch.equal(now[b][:, still], before[b][:, still]), (step, b)
                assert not torch.equal(now[a][rows], before[a][rows]), (step, a)
