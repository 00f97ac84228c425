"""Find the LoRA pairs (A, B) of a PEFT model's active adapter, and group them by shape.

PEFT stores A as `lora_A[adapter].weight` (R x d_in) and B as `lora_B[adapter].weight` (d_out x R) for
nn.Linear and for GPT-2's Conv1D (`fan_in_fan_out=True` only transposes ΔW when merged). Embedding LoRA
stores raw parameters (R x num_embeddings, embedding_dim x R); conv LoRA stores 4-d kernels that are
viewed as R x (d_in·k·k) and d_out x R. Same-shaped pairs form a group so that the penalty and the
masks run as a few batched kernels instead of a Python loop over every parameter.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from rmlora.errors import NoLoraPairsError


@dataclass(eq=False)
class LoraPair:
    name: str  # module path inside the model passed in
    A: nn.Parameter  # R x d_in (or a kernel viewed as such)
    B: nn.Parameter  # d_out x R
    rank: int
    scaling: float
    fan_in_fan_out: bool = False
    gate: torch.Tensor | None = None  # SoRA's g between A and B (rmlora.methods.sora), else None

    def effective_b(self) -> torch.Tensor:
        """B, or B·diag(g) for a SoRA-gated pair: ΔW = scaling · effective_b · A."""
        b = self.b_matrix()
        return b if self.gate is None else b * self.gate.reshape(1, -1).to(b.dtype)

    @property
    def d_in(self) -> int:
        return self.A.numel() // self.rank

    @property
    def d_out(self) -> int:
        return self.B.numel() // self.rank

    def a_matrix(self) -> torch.Tensor:
        return self.A.reshape(self.rank, -1)

    def b_matrix(self) -> torch.Tensor:
        return self.B.reshape(self.B.shape[0], self.rank)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B A as a d_out x d_in matrix (dense; for tests and small modules)."""
        return self.scaling * (self.effective_b().float() @ self.a_matrix().float())


@dataclass(eq=False)
class PairGroup:
    """Pairs whose A and B have identical shapes, dtypes and devices."""

    pairs: list[LoraPair] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return self.pairs[0].rank

    @property
    def A(self) -> list[nn.Parameter]:
        return [p.A for p in self.pairs]

    @property
    def B(self) -> list[nn.Parameter]:
        return [p.B for p in self.pairs]

    def stacked_a(self) -> torch.Tensor:
        """n x R x d_in, differentiable."""
        return torch.stack([p.a_matrix() for p in self.pairs])

    def stacked_b(self) -> torch.Tensor:
        """n x d_out x R, differentiable."""
        return torch.stack([p.b_matrix() for p in self.pairs])


def _lora_layer_class():
    from peft.tuners.lora import LoraLayer

    return LoraLayer


def find_lora_pairs(model: nn.Module, require_grad: bool = False) -> list[LoraPair]:
    """Every (A, B) pair of the active adapter(s) of `model` (a PeftModel or a model with LoRA layers).

    With `require_grad`, pairs whose matrices are frozen are left out.
    """
    LoraLayer = _lora_layer_class()
    pairs: list[LoraPair] = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if hasattr(module, "lora_E") and adapter in module.lora_E:
                # AdaLoRA's P Λ Q: ΔW = B (A ⊙ E) · scaling / (ranknum + 1e-5), as PEFT's get_delta_weight.
                # Read-only pairs for diagnostics; RMLora never trains AdaLoRA models.
                if require_grad:
                    continue
                ranknum = float(module.ranknum[adapter])
                pairs.append(
                    LoraPair(
                        name=name,
                        A=(module.lora_A[adapter] * module.lora_E[adapter]).detach(),
                        B=module.lora_B[adapter].detach(),
                        rank=int(module.lora_A[adapter].shape[0]),
                        scaling=float(module.scaling[adapter]) / (ranknum + 1e-5),
                        fan_in_fan_out=bool(getattr(module, "fan_in_fan_out", False)),
                    )
                )
                continue
            if adapter in getattr(module, "lora_A", {}):
                A = module.lora_A[adapter].weight
                B = module.lora_B[adapter].weight
            elif adapter in getattr(module, "lora_embedding_A", {}):
                A = module.lora_embedding_A[adapter]
                B = module.lora_embedding_B[adapter]
            else:
                continue
            if require_grad and not (A.requires_grad or B.requires_grad):
                continue
            gates = getattr(module, "sora_gate", None)
            gate = gates[adapter] if gates is not None and adapter in gates else None
            pairs.append(
                LoraPair(
                    name=name if len(module.active_adapters) == 1 else f"{name}[{adapter}]",
                    A=A,
                    B=B,
                    rank=int(A.shape[0]),
                    scaling=float(module.scaling[adapter]),
                    fan_in_fan_out=bool(getattr(module, "fan_in_fan_out", False)),
                    gate=gate,
                )
            )
    return pairs


def require_lora_pairs(model: nn.Module) -> list[LoraPair]:
    pairs = find_lora_pairs(model, require_grad=True)
    if not pairs:
        raise NoLoraPairsError(
            "the model has no trainable LoRA pairs: wrap it with peft.get_peft_model(model, LoraConfig(target_modules=...)) "
            "and check that target_modules names layers of this model"
        )
    return pairs


def group_pairs(pairs: list[LoraPair]) -> list[PairGroup]:
    """Group pairs by (A shape, B shape, dtype, device), keeping the model's order inside each group."""
    groups: OrderedDict[tuple, PairGroup] = OrderedDict()
    for pair in pairs:
        key = (tuple(pair.A.shape), tuple(pair.B.shape), pair.A.dtype, pair.A.device)
        groups.setdefault(key, PairGroup()).pairs.append(pair)
    return list(groups.values())
