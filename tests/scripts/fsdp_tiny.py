"""RM-LoRA on a tiny BERT in a plain PyTorch loop, sharded with FSDP2 (`fully_shard`) or in one process.

    torchrun --standalone --nproc_per_node=2 tests/scripts/fsdp_tiny.py --out DIR [--mask_mode strict]
        [--penalty loss|closed] [--steps 5]
    python tests/scripts/fsdp_tiny.py --out DIR ...      # the single-process reference, same data

Every optimizer step sees the same 8 examples in both runs: one process takes all 8, rank r of 2 takes
examples 4r..4r+3 (FSDP averages the two halves' gradients: the mean over 8). Dropout is off (the model
trains in eval mode) so that both runs compute the same function. `--penalty loss` adds RMLora.penalty()
to the loss (RMLoraTrainer's path), `--penalty closed` adds its closed-form gradient after backward
(RMLoraCallback's path).

Each process writes DIR/rank<r>.safetensors (or DIR/single.safetensors): the full trainable parameters
(all-gathered from the shards) after every step, keys "<step>/<name>" with step -1 the start, and
DIR/rank<r>.json: world size, the directions drawn per step, the penalty per step and each LoRA
matrix's global shape and the global rows this rank held (to show that it was really sharded).
"""

import argparse
import json
import os

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from helpers import peft_bert, token_batch
from rmlora import RMLoraConfig
from rmlora.core.rm_lora import RMLora
from rmlora.core.sharding import gather, shard_slices
from rmlora.harness.run import end_distributed

PER_STEP = 8


def shard(model, world_size):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world_size,))
    for layer in model.base_model.model.bert.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_params(model, step):
    return {f"{step}/{n}": gather(p.detach()).clone() for n, p in model.named_parameters() if p.requires_grad}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--mask_mode", default="strict")
    p.add_argument("--penalty", default="loss", choices=["loss", "closed"])
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    torch.use_deterministic_algorithms(True)
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    model = peft_bert(r=8, seed=0)  # B randomized: the penalty and ΔW are not trivially 0
    if distributed:
        shard(model, world)
    model.eval()  # no dropout: the sharded and the single-process runs compute the same function
    # after sharding: RMLora must hold the parameters the optimizer steps (FSDP2 replaces them by DTensors)
    rm = RMLora(
        model,
        RMLoraConfig(
            # Eq. 10 summed: a penalty gradient ~100x the normalized default's, so a sharding error in it shows
            method="rm-lora",
            r_hat=3,
            mask_mode=a.mask_mode,
            reg_form="squared",
            reg_weight=0.1,
            reg_reduction="sum",
            seed=5,
        ),
    )
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-2, weight_decay=0.1)
    data = token_batch(PER_STEP * a.steps, seed=3)
    per_rank = PER_STEP // world

    weights = full_params(model, -1)
    drawn, penalties = {}, []
    for step in range(a.steps):
        lo = step * PER_STEP + rank * per_rank
        batch = {k: v[lo : lo + per_rank] for k, v in data.items()}
        loss = model(**batch).loss
        penalty = rm.penalty()
        penalties.append(float(penalty.detach()))
        (loss + penalty if a.penalty == "loss" else loss).backward()
        if a.penalty == "closed":
            rm.add_penalty_gradient()
        drawn[step] = {k: [x.tolist(), y.tolist()] for k, (x, y) in rm.directions(step).items()}
        rm.before_optimizer_step(opt, step)
        opt.step()
        rm.after_optimizer_step(opt, step)
        opt.zero_grad(set_to_none=True)
        weights.update(full_params(model, step))

    name = f"rank{rank}" if distributed else "single"
    save_file(weights, os.path.join(a.out, f"{name}.safetensors"))
    shards = {
        f"{pair.name}.{which}": {"shape": list(t.shape), "rows": [shard_slices(t)[0].start, shard_slices(t)[0].stop]}
        for pair in rm.pairs
        for which, t in (("A", pair.A), ("B", pair.B))
    }
    record = {"world_size": world, "directions": drawn, "penalties": penalties, "shards": shards}
    with open(os.path.join(a.out, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
    end_distributed()  # once main()'s sharded model is out of scope: its device mesh holds the process group
