"""How far the LoRA matrices travel under masking, relative to LoRA, with AdamW (docs/THEORY.md, "Masked steps and
the learning rate").

A PEFT LoRA model (one 64 -> 64 linear layer, R = 8, B and A random) is fitted to a fixed random linear target with
AdamW for STEPS steps from the same start and the same batches, once per variant: lora; gm-lora (masking only, so
the penalty does not change the path) with r̂ = R/2 in strict and grad mode, each with step_compensation none /
sqrt / linear. Printed per variant: the distance ‖A_T − A_0‖_F + ‖B_T − B_0‖_F travelled, and its ratio to LoRA's
(r̂/R = 0.5 is what "a direction moves one lr per step in which it is selected" predicts for strict mode).

    python experiments/masked_step_size.py [--steps 200] [--lr 1e-3]
"""

import argparse

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from rmlora import RMLora, RMLoraConfig

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--rank", type=int, default=8)
args = parser.parse_args()


def model_at_start():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 64))
    model = get_peft_model(base, LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=["0"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def lora_tensors(model):
    return [p for n, p in model.named_parameters() if "lora_" in n]


g = torch.Generator().manual_seed(1)
target = torch.randn(64, 64, generator=g) / 8
batches = [torch.randn(32, 64, generator=g) for _ in range(args.steps)]


def travel(method, mode="strict", compensation="none"):
    model = model_at_start()
    start = [p.detach().clone() for p in lora_tensors(model)]
    config = RMLoraConfig(method=method, r_hat=0.5, mask_mode=mode, step_compensation=compensation)
    rm = RMLora(model, config)
    opt = torch.optim.AdamW(lora_tensors(model), lr=args.lr, weight_decay=0.0)
    for step, x in enumerate(batches):
        loss = ((model(x) - x @ target.T) ** 2).mean()
        loss.backward()
        rm.before_optimizer_step(opt, step)
        opt.step()
        rm.after_optimizer_step(opt, step)
        opt.zero_grad()
    return sum((p.detach() - s).norm().item() for p, s in zip(lora_tensors(model), start)), loss.item()


base, base_loss = travel("lora")
print(f"AdamW lr {args.lr}, {args.steps} steps, R = {args.rank}, r̂ = R/2\n")
print(f"{'variant':<34} {'travel':>8} {'/ LoRA':>7} {'final loss':>11}")
print(f"{'lora':<34} {base:>8.4f} {1.0:>7.3f} {base_loss:>11.5f}")
for mode in ("strict", "grad"):
    for compensation in ("none", "sqrt", "linear"):
        t, loss = travel("gm-lora", mode, compensation)
        print(f"{f'gm-lora {mode}, compensation {compensation}':<34} {t:>8.4f} {t / base:>7.3f} {loss:>11.5f}")
