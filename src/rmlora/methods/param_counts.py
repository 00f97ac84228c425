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
from peft import PeftModel
from torch import nn


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters, by PEFT's own count: a DeepSpeed ZeRO-3 partition (numel() == 0) counts
    its `ds_numel`, a 4-bit bitsandbytes parameter its unpacked size. PEFT's method reads only
    `named_parameters()`, so it is called on plain models (full fine-tuning) too."""
    return PeftModel.get_nb_trainable_parameters(model)


def trainable_count(model: nn.Module) -> int:
    return parameter_counts(model)[0]


def total_count(model: nn.Module) -> int:
    return parameter_counts(model)[1]


def full_numel(p: torch.Tensor) -> int:
    """p.numel(), or a ZeRO-3 partitioned parameter's full size (`ds_numel`), as PEFT counts it."""
    n = p.numel()
    return int(p.ds_numel) if n == 0 and hasattr(p, "ds_numel") else int(n)


def full_shape(p: torch.Tensor) -> tuple[int, ...]:
    """p.shape, or a ZeRO-3 partitioned parameter's full shape (`ds_shape`)."""
    return tuple(p.ds_shape) if p.numel() == 0 and hasattr(p, "ds_shape") else tuple(p.shape)


def inference_count(model: nn.Module, training_adapter: Iterable[torch.Tensor], kept_adapter: int) -> int:
    """Trainable parameters, with the adapter's training-time tensors replaced by the `kept_adapter` it exports."""
    dropped = sum(full_numel(p) for p in training_adapter if p.requires_grad)
    return trainable_count(model) - dropped + int(kept_adapter)


def format_count(n: int) -> str:
    """1_260_000 -> '1.26M', as the paper's tables write them."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def format_param_counts(counts: dict[str, int]) -> str:
    """{'trainable': T, 'inference': I} -> 'T / I'."""
    return f"{format_count(counts['trainable'])} / {format_count(counts['inference'])}"
