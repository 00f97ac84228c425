"""The penalty at PEFT's initialisation (B = 0, A kaiming-uniform) with λ = 0.1, for every form and reduction, over
R, the number of adapted layers and their widths: what the default `reg_reduction="normalized"` makes constant.

    python experiments/initial_penalty.py            # the table of docs/THEORY.md, "The weight of the penalty"

Each model is a stack of nn.Linear layers (widths cycling through the given list) with PEFT LoRA on every layer;
seconds on a CPU.
"""

from __future__ import annotations

import argparse

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from rmlora import RMLora, RMLoraConfig

WIDTHS = {"narrow": (64, 96, 128), "wide": (256, 512, 384), "minilm": (384,)}


def lora_stack(n_layers: int, rank: int, widths: tuple[int, ...], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    dims = [widths[i % len(widths)] for i in range(n_layers + 1)]
    model = nn.Sequential(*(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:])))
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=[str(i) for i in range(n_layers)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2, 24, 200])
    ap.add_argument("--widths", nargs="+", default=["narrow", "wide"], choices=sorted(WIDTHS))
    ap.add_argument("--reg_weight", type=float, default=0.1)
    a = ap.parse_args()
    forms = [("squared", "normalized"), ("frobenius", "normalized"), ("frd", "normalized")]
    forms += [("squared", "sum"), ("frobenius", "mean")]
    head = ["R", "layers", "widths"] + [f"{f} {r}" for f, r in forms]
    print(f"initial penalty, λ = {a.reg_weight:g} (PEFT default init: B = 0, A kaiming-uniform)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for rank in a.ranks:
        for n in a.layers:
            for w in a.widths:
                model = lora_stack(n, rank, WIDTHS[w])
                cells = []
                for form, red in forms:
                    cfg = RMLoraConfig(method="r-lora", reg_form=form, reg_reduction=red, reg_weight=a.reg_weight)
                    cells.append(f"{float(RMLora(model, cfg).penalty().detach()):.4g}")
                print(f"| {rank} | {n} | {w} {'/'.join(map(str, WIDTHS[w]))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
