"""directions(step): exact size, distinct, deterministic across fresh objects, shared vs independent."""

import subprocess
import sys

import torch

from helpers import peft_bert, subprocess_env
from rmlora import RMLora, RMLoraConfig


def test_exact_size_distinct_and_in_range():
    model = peft_bert(r=8, rank_pattern={"value": 4})
    rm = RMLora(model, RMLoraConfig(method="gm-lora", r_hat=0.5, mask_sampling="independent"))
    for step in range(20):
        for name, (a, b) in rm.directions(step).items():
            rank = 4 if "value" in name else 8
            for idx in (a, b):
                assert idx.numel() == rank // 2
                assert len(set(idx.tolist())) == idx.numel()
                assert 0 <= int(idx.min()) and int(idx.max()) < rank


def test_deterministic_across_fresh_objects_and_models():
    c = RMLoraConfig(method="rm-lora", r_hat=3, seed=11)
    d1 = RMLora(peft_bert(r=8, seed=0), c).directions(5)
    d2 = RMLora(peft_bert(r=8, seed=1), RMLoraConfig(method="rm-lora", r_hat=3, seed=11)).directions(5)
    assert d1.keys() == d2.keys()
    for k in d1:
        assert torch.equal(d1[k][0], d2[k][0]) and torch.equal(d1[k][1], d2[k][1])
    other_seed = RMLora(peft_bert(r=8), RMLoraConfig(method="rm-lora", r_hat=3, seed=12)).directions(5)
    assert any(not torch.equal(d1[k][0], other_seed[k][0]) for k in d1)


def test_same_in_another_process():
    """A fresh interpreter (another DDP rank, a resumed run) draws the same directions."""
    code = (
        "from helpers import peft_bert; "
        "from rmlora import RMLora, RMLoraConfig; "
        "d = RMLora(peft_bert(r=8), RMLoraConfig(method='gm-lora', r_hat=3, seed=4)).directions(17); "
        "print({k: v[0].tolist() for k, v in d.items()})"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=subprocess_env()
    )
    out = proc.stdout.strip()
    here = RMLora(peft_bert(r=8), RMLoraConfig(method="gm-lora", r_hat=3, seed=4)).directions(17)
    assert out == str({k: v[0].tolist() for k, v in here.items()})


def test_different_across_steps_and_modules_and_roughly_uniform():
    rm = RMLora(peft_bert(r=8), RMLoraConfig(method="gm-lora", r_hat=2))
    names = list(rm.directions(0))
    per_step = [tuple(rm.directions(s)[names[0]][0].tolist()) for s in range(50)]
    assert len(set(per_step)) > 15  # 28 possible pairs
    assert any(rm.directions(s)[names[0]][0].tolist() != rm.directions(s)[names[1]][0].tolist() for s in range(5))
    counts = torch.zeros(8)
    for s in range(400):
        counts[rm.directions(s)[names[0]][0]] += 1
    # each direction is chosen with probability 2/8: 100 of 400 expected
    assert counts.min() > 60 and counts.max() < 140


def test_shared_vs_independent():
    shared = RMLora(peft_bert(r=8), RMLoraConfig(method="gm-lora", r_hat=3, mask_sampling="shared")).directions(3)
    assert all(torch.equal(a, b) for a, b in shared.values())
    indep = RMLora(peft_bert(r=8), RMLoraConfig(method="gm-lora", r_hat=3, mask_sampling="independent"))
    assert any(not torch.equal(a, b) for s in range(5) for a, b in indep.directions(s).values())
    # A's draw is the same in both modes (stream A), so switching B's sampling does not change A's rows
    for k in shared:
        assert torch.equal(shared[k][0], indep.directions(3)[k][0])
