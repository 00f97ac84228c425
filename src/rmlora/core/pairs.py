"""Find the LoRA pairs (A, B) of a PEFT model's active adapter, and group them by shape.

PEFT stores A as `lora_A[adapter].weight` (R x d_in) and B as `lora_B[adapter].weight` (d_out x R) for
nn.Linear and for GPT-2's Conv1D (`fan_in_fan_out=True` only transposes ΔW when merged). Embedding LoRA
stores raw parameters (R x num_embeddings, embedding_dim x R); conv LoRA stores 4-d kernels that are
viewed as R x (d_in·k·k) and d_out x R. Same-shaped pairs form a group so that the penalty and the
masks run as a few batched kernels instead of a Python loop over every parameter.

Only plain LoRA is read here; the baselines' ΔW factors (AdaLoRA's B (A⊙E), SoRA's gated B) are read by
their methods (rmlora.methods.pairs.delta_weight_pairs).

ΔW is the update learned, relative to the pre-trained weight W₀. For PEFT's default init that is s·BA. PiSSA
and OLoRA start from BA ≠ 0 and move s·B₀A₀ out of the base weight, so ΔW = s·(BA − B₀A₀): `keep_initial_factors`
keeps (A₀, B₀) as non-persistent buffers of each layer (they move with the model, and no checkpoint or adapter
file sees them). DoRA rescales each output row of W + s·BA to a trained magnitude m, so its ΔW is
diag(m / ‖W + s·BA‖_row)(W + s·BA) − W₀, in general of full rank (`LoraPair.delta_weight`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from rmlora.errors import NoLoraPairsError

INITIAL_A, INITIAL_B = "rmlora_initial_lora_A", "rmlora_initial_lora_B"  # buffer names, + "_<adapter>"


@dataclass(eq=False)
class LoraPair:
    name: str  # module path inside the model passed in
    A: nn.Parameter  # R x d_in (or a kernel viewed as such)
    B: nn.Parameter  # d_out x R
    rank: int
    scaling: float
    fan_in_fan_out: bool = False
    initial: tuple[torch.Tensor, torch.Tensor] | None = None  # (A₀, B₀) of PiSSA / OLoRA, moved out of W
    layer: nn.Module | None = None  # the LoRA layer, read for DoRA's magnitude and base weight
    adapter: str = "default"

    @property
    def uses_dora(self) -> bool:
        return self.layer is not None and bool(getattr(self.layer, "use_dora", {}).get(self.adapter, False))

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

    def delta_factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A', B') with ΔW = scaling · B' A': (A, B), or ([A; A₀], [B, −B₀]) after PiSSA / OLoRA (rank ≤ 2R, as
        PEFT's conversion writes it); None for DoRA, whose ΔW is not low-rank (use delta_weight)."""
        if self.uses_dora:
            return None
        a, b = self.a_matrix().detach(), self.b_matrix().detach()
        if self.initial is None:
            return a, b
        a0, b0 = self.initial
        a0, b0 = a0.reshape(self.rank, -1).to(a), b0.reshape(b0.shape[0], self.rank).to(b)
        return torch.cat([a, a0]), torch.cat([b, -b0], dim=1)

    def delta_weight(self) -> torch.Tensor:
        """ΔW, the update learned relative to the pre-trained weight, d_out x d_in, float32 (dense; for tests,
        DoRA's diagnostics and small modules)."""
        factors = self.delta_factors()
        if factors is not None:
            a, b = factors
            return self.scaling * (b.float() @ a.float())
        return self._dora_delta_weight()

    @torch.no_grad()
    def _dora_delta_weight(self) -> torch.Tensor:
        # W' = diag(m / ‖W + s·BA‖_row)(W + s·BA) (PEFT's DoRA merge, with PEFT's own norm), W₀ = W + s·B₀A₀
        layer, adapter = self.layer, self.adapter
        if not isinstance(layer.lora_A[adapter], nn.Linear):
            raise NotImplementedError(f"ΔW of DoRA on {type(layer.get_base_layer()).__name__} layers ({self.name})")
        stored = layer.get_base_layer().weight
        weight = (stored.T if self.fan_in_fan_out else stored).float()
        lora = self.scaling * (self.b_matrix().float() @ self.a_matrix().float())
        magnitude = layer.lora_magnitude_vector[adapter]
        norm = magnitude.get_weight_norm(stored.float(), lora, scaling=1).detach()
        merged = (magnitude.weight.float() / norm).view(-1, 1) * (weight + lora)
        if self.initial is not None:
            a0, b0 = self.initial
            weight = weight + self.scaling * (b0.float() @ a0.float())
        return merged - weight


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


def pair_name(module_name: str, adapter: str, active_adapters) -> str:
    """A pair's name: the module path, with `[adapter]` appended when several adapters are active."""
    return module_name if len(active_adapters) == 1 else f"{module_name}[{adapter}]"


def lora_factors(module: nn.Module, adapter: str) -> tuple[nn.Parameter, nn.Parameter] | None:
    """(A, B) of a plain LoRA layer's `adapter`: Linear / Conv1D / conv layers or embedding parameters.

    Other tuners built on LoraLayer (AdaLoRA's raw P, Λ, Q parameters) hold no such layers and give None:
    their pairs are read by their own method (rmlora.methods).
    """
    if adapter in getattr(module, "lora_A", {}) and isinstance(module.lora_A[adapter], nn.Module):
        return module.lora_A[adapter].weight, module.lora_B[adapter].weight
    if adapter in getattr(module, "lora_embedding_A", {}):
        return module.lora_embedding_A[adapter], module.lora_embedding_B[adapter]
    return None


def _initial_buffers(module: nn.Module, adapter: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    A0 = getattr(module, f"{INITIAL_A}_{adapter}", None)
    return None if A0 is None else (A0, getattr(module, f"{INITIAL_B}_{adapter}"))


@torch.no_grad()
def keep_initial_factors(model: nn.Module) -> None:
    """Keep (A₀, B₀) of every LoRA layer's active adapter(s) as non-persistent buffers, right after an init that
    moved s·B₀A₀ out of the base weight (PiSSA, OLoRA): ΔW and the exported adapter are measured from them."""
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            factors = lora_factors(module, adapter)
            if factors is not None:
                module.register_buffer(f"{INITIAL_A}_{adapter}", factors[0].detach().clone(), persistent=False)
                module.register_buffer(f"{INITIAL_B}_{adapter}", factors[1].detach().clone(), persistent=False)


def initial_factors(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module path: (A₀, B₀)} of the active adapter's layers that keep them (empty unless PiSSA / OLoRA)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                initial = _initial_buffers(module, adapter)
                if initial is not None:
                    out[name] = initial
    return out


def find_lora_pairs(model: nn.Module, require_grad: bool = False) -> list[LoraPair]:
    """Every (A, B) pair of the active adapter(s) of `model` (a PeftModel or a model with LoRA layers).

    With `require_grad`, pairs whose matrices are frozen are left out.
    """
    pairs: list[LoraPair] = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            factors = lora_factors(module, adapter)
            if factors is None:
                continue
            A, B = factors
            if require_grad and not (A.requires_grad or B.requires_grad):
                continue
            pairs.append(
                LoraPair(
                    name=pair_name(name, adapter, module.active_adapters),
                    A=A,
                    B=B,
                    rank=int(A.shape[0]),
                    scaling=float(module.scaling[adapter]),
                    fan_in_fan_out=bool(getattr(module, "fan_in_fan_out", False)),
                    initial=_initial_buffers(module, adapter),
                    layer=module,
                    adapter=adapter,
                )
            )
    return pairs


def require_lora_pairs(model: nn.Module) -> list[LoraPair]:
    pairs = find_lora_pairs(model, require_grad=True)
    if not pairs:
        raise NoLoraPairsError(
            "the model has no trainable LoRA pairs: wrap it with "
            "peft.get_peft_model(model, LoraConfig(target_modules=...)) and check that target_modules names "
            "layers of this model"
        )
    return pairs


def group_pairs(pairs: list[LoraPair]) -> list[PairGroup]:
    """Group pairs by (A shape, B shape, dtype, device), keeping the model's order inside each group."""
    groups: OrderedDict[tuple, PairGroup] = OrderedDict()
    for pair in pairs:
        key = (tuple(pair.A.shape), tuple(pair.B.shape), pair.A.dtype, pair.A.device)
        groups.setdefault(key, PairGroup()).pairs.append(pair)
    return list(groups.values())
