"""The ΔW factor pairs of a model, whatever method adapted it: each method reads its own.

SoRA's pairs carry the gate (B·diag(g)), AdaLoRA's are B (A ⊙ E) · scaling / ranknum, and a plain LoRA
model's are core's find_lora_pairs. Diagnostics reads a model through this function.
"""

from __future__ import annotations

from torch import nn

from rmlora.core.pairs import LoraPair, find_lora_pairs
from rmlora.methods.adalora import adalora_pairs
from rmlora.methods.sora import sora_pairs


def delta_weight_pairs(model: nn.Module) -> list[LoraPair]:
    """(A, B, scaling) with ΔW = scaling · B A for every adapted module of the active adapter(s)."""
    # a PEFT model is adapted by one tuner: a gated (SoRA) model's plain pairs would miss the gates
    return sora_pairs(model) or adalora_pairs(model) or find_lora_pairs(model)
