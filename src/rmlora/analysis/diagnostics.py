"""ΔW diagnostics: rank, orthogonality loss and spectra of every LoRA update, from a model or a folder.

ΔW is the update the adapter applies to the frozen weight, d_out x d_in, LoRA scaling included
(PEFT's delta weight; for GPT-2's Conv1D PEFT stores it transposed, which changes no number here except
that ΔWΔWᵀ is always d_out x d_out as in the paper's Table 5). It is the update learned relative to the
pre-trained weight (rmlora.core.pairs): after PiSSA / OLoRA, s·(BA − B₀A₀), of rank up to 2R; under DoRA, the
magnitude's rescaling included, in general of full rank (its spectrum then comes from a dense SVD). `lora_rank`
stays the adapter's R, and the penalty terms are those of the trained A and B.

The spectrum is computed through the factors, in float64 (rmlora.analysis.spectrum). A model's pairs
come from the methods layer (rmlora.methods.pairs: SoRA's gates and AdaLoRA's scaling included), an
adapter folder's from rmlora.io.adapters.

- numerical rank: #σ_i > tol, tol = σ_max · rtol, rtol = max(d_out, d_in) · eps(float32) by default
  (numpy.linalg.matrix_rank's rule at the precision the factors were trained in); `rtol` overrides it.
- orthogonality loss ‖ΔWΔWᵀ − I‖²_F = Σ_{i≤k} (σ_i² − 1)² + (d_out − k), k = min(R, d_in, d_out): the
  eigenvalues of ΔWΔWᵀ are the σ_i² and d_out − k zeros; hence it is at least d_out − rank(ΔW).
- effective rank: exp of the entropy of σ_i / Σσ (Roy & Vetterli 2007); stable rank: Σσ² / σ_max².
- penalty terms: ‖AAᵀ − I‖²_F and ‖BᵀB − I‖²_F of the raw factors (Eq. 10's two terms).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from rmlora.analysis.spectrum import (
    FLOAT32_EPS,
    delta_singular_values,
    effective_rank,
    gram_penalty,
    numerical_rank,
    orthogonality_loss,
    stable_rank,
)
from rmlora.core.pairs import LoraPair
from rmlora.io.adapters import adapter_pairs, read_adapter
from rmlora.methods.pairs import delta_weight_pairs

__all__ = [
    "FLOAT32_EPS",
    "Diagnostics",
    "ModuleDiagnostics",
    "adapter_pairs",
    "delta_singular_values",
    "diagnose",
    "diagnose_adapter",
    "diagnose_model",
    "effective_rank",
    "module_diagnostics",
    "numerical_rank",
    "orthogonality_loss",
    "stable_rank",
]


@dataclass
class ModuleDiagnostics:
    module: str
    d_out: int
    d_in: int
    lora_rank: int
    rank: int
    orthogonality_loss: float
    effective_rank: float
    stable_rank: float
    singular_values: list[float]
    penalty_a: float
    penalty_b: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Diagnostics:
    modules: list[ModuleDiagnostics] = field(default_factory=list)

    @property
    def summary(self) -> dict:
        n = len(self.modules)
        if n == 0:
            return {"num_modules": 0}

        def mean(key):
            return float(np.mean([getattr(m, key) for m in self.modules]))

        return {
            "num_modules": n,
            "mean_rank": mean("rank"),
            "mean_lora_rank": mean("lora_rank"),
            "mean_rank_ratio": float(np.mean([m.rank / m.lora_rank for m in self.modules])),
            "mean_orthogonality_loss": mean("orthogonality_loss"),
            "total_orthogonality_loss": float(sum(m.orthogonality_loss for m in self.modules)),
            "mean_effective_rank": mean("effective_rank"),
            "mean_stable_rank": mean("stable_rank"),
            "total_penalty": float(sum(m.penalty_a + m.penalty_b for m in self.modules)),
        }

    def to_dict(self) -> dict:
        return {"modules": [m.to_dict() for m in self.modules], "summary": self.summary}


def module_diagnostics(
    name: str,
    A: torch.Tensor,
    B: torch.Tensor,
    scaling: float,
    rtol: float | None = None,
    singular_values: torch.Tensor | None = None,
) -> ModuleDiagnostics:
    """Diagnostics of ΔW = scaling · B A, or of the ΔW whose `singular_values` are given (A, B: the trained factors)."""
    rank_r = int(A.shape[0])
    a = A.detach().reshape(rank_r, -1).to(torch.float64).cpu()
    b = B.detach().reshape(B.shape[0], rank_r).to(torch.float64).cpu()
    d_out, d_in = b.shape[0], a.shape[1]
    sv = delta_singular_values(a, b, scaling) if singular_values is None else singular_values
    return ModuleDiagnostics(
        module=name,
        d_out=d_out,
        d_in=d_in,
        lora_rank=rank_r,
        rank=numerical_rank(sv, (d_out, d_in), rtol),
        orthogonality_loss=orthogonality_loss(sv, d_out),
        effective_rank=effective_rank(sv),
        stable_rank=stable_rank(sv),
        singular_values=[float(x) for x in sv],
        penalty_a=gram_penalty(a, rows=True),
        penalty_b=gram_penalty(b, rows=False),
    )


# -- from a model or from an adapter folder -----------------------------------------------------------


def pair_singular_values(pair: LoraPair) -> torch.Tensor:
    """Singular values of the pair's ΔW: through its factors (rank ≤ 2R), or of the dense ΔW (DoRA).

    After PiSSA / OLoRA, ΔW = s·(BA − B₀A₀) is a difference of two large terms: what it has below their float64
    rounding (max(d_out, d_in)·eps64·‖s·B₀A₀‖₂) is that rounding, not an update, and is set to 0, so that an
    untrained adapter has rank 0 as PEFT's default init has.
    """
    factors = pair.delta_factors()
    if factors is None:
        return torch.linalg.svdvals(pair.delta_weight().detach().to(torch.float64).cpu())
    sv = delta_singular_values(*factors, pair.scaling)
    if pair.initial is not None:
        A0, B0 = pair.initial
        initial_norm = float(delta_singular_values(A0, B0, pair.scaling).max())
        rounding = max(pair.d_out, pair.d_in) * torch.finfo(torch.float64).eps * initial_norm
        sv = torch.where(sv > rounding, sv, torch.zeros_like(sv))
    return sv


def diagnose_model(model, rtol: float | None = None) -> Diagnostics:
    """Diagnostics of every adapted module of the active adapter of a PEFT model (LoRA, AdaLoRA, SoRA)."""
    return Diagnostics(
        [
            module_diagnostics(p.name, p.A, p.B, p.scaling, rtol, pair_singular_values(p))
            for p in delta_weight_pairs(model)
        ]
    )


def diagnose_adapter(adapter_dir: str, rtol: float | None = None) -> Diagnostics:
    """Diagnostics of a saved PEFT LoRA adapter, without loading the base model."""
    config, tensors = read_adapter(adapter_dir)
    return Diagnostics([module_diagnostics(n, A, B, s, rtol) for n, A, B, s in adapter_pairs(config, tensors)])


def diagnose(model_or_dir, rtol: float | None = None) -> Diagnostics:
    """Diagnostics of a PEFT model or of an adapter folder."""
    if isinstance(model_or_dir, (str, bytes)) or hasattr(model_or_dir, "__fspath__"):
        return diagnose_adapter(str(model_or_dir), rtol)
    return diagnose_model(model_or_dir, rtol)
