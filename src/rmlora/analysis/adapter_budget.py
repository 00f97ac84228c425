"""How much of its nominal rank R a trained LoRA adapter used, against E = W_target − W_base (Section 4.1).

ΔW = s·BA has intrinsic rank r ≤ R, so the bound of Theorem 3.1 only reaches e(r) = σ_{r+1}(E), not σ_{R+1}(E);
the gap σ_{r+1}(E) − σ_{R+1}(E) is the part of the nominal budget the adapter left unused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from rmlora.analysis.checkpoints import CheckpointWeights
from rmlora.analysis.discrepancy import bound_term
from rmlora.analysis.module_names import match_names, target_matcher
from rmlora.analysis.spectrum import delta_singular_values, numerical_rank
from rmlora.errors import AdapterError
from rmlora.io.adapters import adapter_pairs, read_adapter

# base module -> (base weight key, adapter module, A, B, scaling)
AdapterPairs = dict[str, tuple[str, str, torch.Tensor, torch.Tensor, float]]


@dataclass
class AdapterBudget:
    """How much of its nominal rank R a trained LoRA adapter used on one module (Section 4.1)."""

    adapter_module: str
    lora_rank: int  # R, the nominal rank
    intrinsic_rank: int  # r, the numerical rank of ΔW = s·BA
    sigma_r1: float  # σ_{r+1}(E): the bound term the adapter actually reaches
    sigma_R1: float  # σ_{R+1}(E): the bound term its nominal rank allows
    error_r: float  # ‖E − E_r‖_F / ‖E‖_F
    error_R: float  # ‖E − E_R‖_F / ‖E‖_F
    delta_error: float  # ‖E − ΔW‖_F / ‖E‖_F: how close the adapter's own update is to E
    delta_singular_values: list[float]

    @property
    def gap(self) -> float:
        return self.sigma_r1 - self.sigma_R1

    @property
    def budget_used(self) -> float:
        return self.intrinsic_rank / self.lora_rank if self.lora_rank else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "gap": self.gap, "budget_used": self.budget_used}


def _lora_pairs(adapter_dir: str, targets: Sequence[str] | None) -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    config, tensors = read_adapter(adapter_dir)
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA" or any(".lora_E" in k for k in tensors):
        # AdaLoRA's ΔW = B (A ⊙ E): reading only A and B would report a wrong update
        raise AdapterError(
            f"{adapter_dir!r} is a {peft_type} adapter, not a LoRA one: rank-budget reads lora_A/lora_B adapters "
            "(lora, r-lora, gm-lora, rm-lora, and SoRA's pruned export)"
        )
    pairs = adapter_pairs(config, tensors)
    if targets is not None:
        wanted = target_matcher(targets)
        pairs = [p for p in pairs if wanted(p[0])]
        if not pairs:
            raise AdapterError(
                f"no LoRA module of {adapter_dir!r} matches target_modules {','.join(targets)}: "
                "drop --target_modules or fix it"
            )
    return pairs


def adapter_pairs_on_base(
    adapter_dir: str, base_ckpt: CheckpointWeights, targets: Sequence[str] | None
) -> AdapterPairs:
    """Every LoRA pair of the adapter, keyed by its module in the base checkpoint, checked against the base."""
    keys = {f"{name}.weight": (name, A, B, s) for name, A, B, s in _lora_pairs(adapter_dir, targets)}
    matched = match_names(keys, base_ckpt.shapes)
    retrain = "pass the base model the adapter was trained on"
    if not matched:
        example = next(iter(keys))[: -len(".weight")]
        raise AdapterError(
            f"none of the adapter's modules (e.g. {example}) is a weight of the base {base_ckpt.source!r}: {retrain}"
        )
    missing = [k for k in keys if k not in matched]
    if missing:
        raise AdapterError(
            f"the adapter's module {missing[0][: -len('.weight')]} has no weight in the base {base_ckpt.source!r}: "
            f"{retrain}"
        )
    out = {}
    for key, base_key in matched.items():
        name, A, B, s = keys[key]
        module = base_ckpt.module_of.get(base_key)
        if module is None or A.dim() != 2 or B.dim() != 2:
            raise AdapterError(
                f"the adapter's module {name} is not a Linear/Conv1D layer of the base: rank-budget compares "
                "the weights of Linear/Conv1D layers"
            )
        shape = base_ckpt.shapes[base_key]
        d_out, d_in = (shape[1], shape[0]) if base_ckpt.transposed(base_key) else (shape[0], shape[1])
        if len(shape) != 2 or (B.shape[0], A.shape[1]) != (d_out, d_in):
            raise AdapterError(
                f"the adapter's ΔW of {name} is {B.shape[0]}x{A.shape[1]} but the base weight {base_key} is "
                f"{d_out}x{d_in} (d_out x d_in): the adapter was trained on another base model"
            )
        out[module] = (base_key, name, A, B, s)
    return out


def adapter_budget(
    sv: torch.Tensor, E: torch.Tensor, rel: Callable[[int], float], pair: tuple, rtol: float | None
) -> AdapterBudget:
    """The budget one adapter pair used; sv = σ(E), rel(R) = ‖E − E_R‖_F / ‖E‖_F."""
    _, name, A, B, scaling = pair
    R = int(A.shape[0])
    dsv = delta_singular_values(A, B, scaling)
    r = numerical_rank(dsv, tuple(E.shape), rtol)
    delta = scaling * (B.to(torch.float64) @ A.to(torch.float64))
    norm = float(torch.linalg.matrix_norm(E))
    return AdapterBudget(
        adapter_module=name,
        lora_rank=R,
        intrinsic_rank=r,
        sigma_r1=bound_term(sv, r),
        sigma_R1=bound_term(sv, R),
        error_r=rel(r),
        error_R=rel(R),
        delta_error=float(torch.linalg.matrix_norm(E - delta)) / norm if norm > 0 else 0.0,
        delta_singular_values=[float(x) for x in dsv],
    )
