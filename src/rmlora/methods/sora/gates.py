"""SoRA's gates on PEFT's LoRA layers: g between A and B through a forward pre-hook on `lora_B[adapter]`."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from rmlora.core.pairs import LoraPair, pair_name
from rmlora.errors import ConfigError, NoLoraPairsError
from rmlora.methods.lora import LoraArguments, checked_peft_model

# PEFT saves every tensor of a tuner layer, so its checkpoints carry the gates too (and resume them); a vanilla
# LoRA model has no such key, which is why the final adapter is written by export_sora_adapter
GATE_ATTR = "sora_gate"


@dataclass(eq=False)
class SoraGate:
    name: str  # module path inside the model passed in ([adapter] appended when several are active)
    path: str  # module path inside the model passed in
    layer: nn.Module  # PEFT LoraLayer
    adapter: str

    @property
    def gate(self) -> nn.Parameter:
        return getattr(self.layer, GATE_ATTR)[self.adapter]

    @property
    def A(self) -> torch.Tensor:
        return self.layer.lora_A[self.adapter].weight

    @property
    def B(self) -> torch.Tensor:
        return self.layer.lora_B[self.adapter].weight

    @property
    def scaling(self) -> float:
        return float(self.layer.scaling[self.adapter])

    def surviving(self) -> torch.Tensor:
        """Indices of the directions whose gate is not exactly 0."""
        return torch.nonzero(self.gate.detach() != 0).flatten()


def _gate_input(layer: nn.Module, adapter: str, module: nn.Module, args: tuple):
    # x Aᵀ enters B multiplied by g: ((x Aᵀ) ⊙ g) Bᵀ, as the reference's LowRankLinear (docs/BASELINES.md, sora)
    g = getattr(layer, GATE_ATTR)[adapter]
    return (args[0] * g.to(args[0].dtype),) + tuple(args[1:])


def attach_gates(model: nn.Module) -> list[SoraGate]:
    """Give every LoRA layer of the active adapter a gate g (length R, standard normal); idempotent."""
    gates = []
    for name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for adapter in layer.active_adapters:
            if adapter in getattr(layer, "lora_embedding_A", {}) or (
                adapter in getattr(layer, "lora_A", {}) and not isinstance(layer.lora_B[adapter], nn.Linear)
            ):
                raise ConfigError(
                    f"SoRA gates support LoRA on Linear / Conv1D layers only, and {name} is not one: "
                    "leave it out of target_modules"
                )
            if adapter not in getattr(layer, "lora_A", {}):
                continue
            if adapter in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(adapter, False):
                raise ConfigError(
                    f"SoRA does not combine with DoRA or other LoRA variants ({name}): set use_dora=False"
                )
            if getattr(layer, "lora_bias", {}).get(adapter, False):
                raise ConfigError(
                    f"SoRA prunes B's columns, which a LoRA bias would survive ({name}): set lora_bias=False"
                )
            if not hasattr(layer, GATE_ATTR):
                setattr(layer, GATE_ATTR, nn.ParameterDict())
            gates_of_layer = getattr(layer, GATE_ATTR)
            if adapter not in gates_of_layer:
                A = layer.lora_A[adapter].weight
                gates_of_layer[adapter] = nn.Parameter(torch.randn(A.shape[0], dtype=A.dtype, device=A.device))
                layer.lora_B[adapter].register_forward_pre_hook(functools.partial(_gate_input, layer, adapter))
            gates.append(SoraGate(pair_name(name, adapter, layer.active_adapters), name, layer, adapter))
    if not gates:
        raise NoLoraPairsError(
            "SoRA found no LoRA layer to gate: build the model with rmlora.methods.prepare_model(..., "
            "RMLoraConfig(method='sora')) and check that target_modules names layers of this model"
        )
    return gates


def prepare_sora_model(base_model: nn.Module, lora: LoraArguments | None = None, task_type=None) -> nn.Module:
    """PEFT LoRA on `base_model` (LoraArguments `lora`), with a gate between every A and B."""
    lora = lora or LoraArguments()
    model = checked_peft_model(base_model, lora.lora_config(task_type=task_type))
    attach_gates(model)
    return model


def sora_pairs(model: nn.Module) -> list[LoraPair]:
    """Read-only (A, B·diag(g)) pairs of every gated LoRA layer of the active adapter(s), for ΔW diagnostics:
    ΔW = scaling · B diag(g) A, the update the gated forward applies. Empty for a model without gates."""
    pairs = []
    for name, layer in model.named_modules():
        gates = getattr(layer, GATE_ATTR, None)
        if not isinstance(layer, LoraLayer) or gates is None:
            continue
        for adapter in layer.active_adapters:
            if adapter not in gates:
                continue
            A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            pairs.append(
                LoraPair(
                    name=pair_name(name, adapter, layer.active_adapters),
                    A=A.detach(),
                    B=(B * gates[adapter].reshape(1, -1).to(B.dtype)).detach(),
                    rank=int(A.shape[0]),
                    scaling=float(layer.scaling[adapter]),
                    fan_in_fan_out=bool(getattr(layer, "fan_in_fan_out", False)),
                )
            )
    return pairs
