"""The paper's "# T / I params": parameters trained during training / kept at inference (Tables 1–3).

- full fine-tuning: T = every trainable parameter, I = every parameter of the model (184M / 184M).
- LoRA, R-LoRA, GM-LoRA, RM-LoRA: T = I = the LoRA matrices plus heads / modules_to_save.
- AdaLoRA: T counts P, Λ, Q at init_r; I counts the kept triplets only, kept_r · (d_in + d_out + 1) per
  module (the singular value stays a parameter of the exported adapter), as in Table 1 where AdaLoRA at
  init_r = 2R trains as much as LoRA at 2R but keeps as much as LoRA at R.
- SoRA: T counts A, B and the gates; I counts the surviving directions only, r' · (d_in + d_out) per
  module, since the gates fold into B at export.

Heads and every other trainable parameter outside the adapter count in both. I is the number of
parameters in what `export()` writes (plus, for full fine-tuning, the frozen ones).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def total_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def inference_count(model: nn.Module, training_adapter: Iterable[torch.Tensor], kept_adapter: int) -> int:
    """Trainable parameters, with the adapter's training-time tensors replaced by the `kept_adapter` it exports."""
    return trainable_count(model) - sum(p.numel() for p in training_adapter if p.requires_grad) + int(kept_adapter)


def format_count(n: int) -> str:
    """1_260_000 -> '1.26M', as the paper's tables write them."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def format_param_counts(counts: dict[str, int]) -> str:
    """{'trainable': T, 'inference': I} -> 'T / I'."""
    return f"{format_count(counts['trainable'])} / {format_count(counts['inference'])}"
