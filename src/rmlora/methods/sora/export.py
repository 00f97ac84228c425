"""SoRA's export: zero gates pruned, g folded into B, a plain PEFT LoRA adapter written (rmlora.methods.sora)."""

from __future__ import annotations

import copy
import math
import os

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from rmlora.errors import AdapterError
from rmlora.io.adapters import ADAPTER_WEIGHTS_NAME, relative_module_name
from rmlora.methods.sora.gates import GATE_ATTR, SoraGate, attach_gates


def _put_module(tensors: dict, rank_pattern: dict, alpha_pattern: dict, gate: SoraGate, A, B, alpha: float) -> None:
    # PEFT keys the factors by the module path inside the PeftModel, rank/alpha patterns by that inside the base
    tensors[f"{gate.path}.lora_A.weight"] = A.contiguous()
    tensors[f"{gate.path}.lora_B.weight"] = B.contiguous()
    key = relative_module_name(gate.path)
    rank_pattern[key], alpha_pattern[key] = int(A.shape[0]), alpha


@torch.no_grad()
def export_sora_adapter(model: nn.Module, output_dir: str, gates: list[SoraGate] | None = None) -> dict[str, int]:
    """Write a plain PEFT LoRA adapter equal to the gated model; returns {module: exported rank}.

    Per module, the directions with g_i = 0 are dropped and B' = B[:, kept] · diag(g[kept]), A' = A[kept];
    the scaling stays that of training (alpha_pattern = scaling · r', or · √r' with rsLoRA, since PEFT
    recomputes alpha / r). A module with no surviving direction has ΔW = 0 and is left out of
    target_modules; if no direction survives anywhere, the first module is kept at rank 1 with B' = 0,
    because PEFT cannot write an adapter without modules.
    """
    if not isinstance(model, PeftModel):
        raise AdapterError("SoRA export needs the PeftModel that prepare_sora_model returned")
    gates = gates if gates is not None else attach_gates(model)
    adapter = gates[0].adapter
    config = copy.deepcopy(model.peft_config[adapter])
    tensors = get_peft_model_state_dict(model, adapter_name=adapter)
    tensors = {k: v.detach() for k, v in tensors.items() if f".{GATE_ATTR}" not in k}
    for gate in gates:
        for key in (f"{gate.path}.lora_A.weight", f"{gate.path}.lora_B.weight"):
            if tensors.pop(key, None) is None:
                raise AdapterError(
                    f"PEFT's state dict has no LoRA weights for {gate.path}: export from the model SoRA trained"
                )
    rank_pattern, alpha_pattern = {}, {}
    for gate in gates:
        kept = gate.surviving()
        if kept.numel() == 0:
            continue
        r = int(kept.numel())
        B = gate.B.detach()[:, kept] * gate.gate.detach()[kept].to(gate.B.dtype)
        alpha = gate.scaling * (math.sqrt(r) if config.use_rslora else r)
        _put_module(tensors, rank_pattern, alpha_pattern, gate, gate.A.detach()[kept], B, alpha)
    if not rank_pattern:
        gate = gates[0]
        B = torch.zeros_like(gate.B.detach()[:, :1])
        _put_module(tensors, rank_pattern, alpha_pattern, gate, gate.A.detach()[:1], B, gate.scaling)
    targets = list(rank_pattern)
    config.target_modules = targets
    config.rank_pattern, config.alpha_pattern = rank_pattern, alpha_pattern
    config.r = max(rank_pattern.values())
    config.layers_to_transform = config.layers_pattern = config.exclude_modules = None
    config.inference_mode = True
    os.makedirs(output_dir, exist_ok=True)
    save_file(
        {k: v.cpu().contiguous() for k, v in tensors.items()},
        os.path.join(output_dir, ADAPTER_WEIGHTS_NAME),
        metadata={"format": "pt"},
    )
    config.save_pretrained(output_dir)
    return rank_pattern
