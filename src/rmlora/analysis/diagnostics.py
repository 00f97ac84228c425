"""ΔW diagnostics: rank, orthogonality loss and spectra of every LoRA update, from a model or a folder.

ΔW is the update the adapter applies to the frozen weight, d_out x d_in, LoRA scaling included
(PEFT's delta weight; for GPT-2's Conv1D PEFT stores it transposed, which changes no number here except
that ΔWΔWᵀ is always d_out x d_out as in the paper's Table 5).

The spectrum is computed through the factors: with thin QRs Aᵀ = Q_a R_a and B = Q_b R_b,
ΔW = s · Q_b (R_b R_aᵀ) Q_aᵀ, so ΔW's nonzero singular values are those of the R x R core s·R_b R_aᵀ:
O((d_in + d_out)·R²) work and no d_out x d_in SVD. Everything runs in float64.

- numerical rank: #σ_i > tol, tol = σ_max · rtol, rtol = max(d_out, d_in) · eps(float32) by default
  (numpy.linalg.matrix_rank's rule at the precision the factors were trained in); `rtol` overrides it.
- orthogonality loss ‖ΔWΔWᵀ − I‖²_F = Σ_{i≤k} (σ_i² − 1)² + (d_out − k), k = min(R, d_in, d_out): the
  eigenvalues of ΔWΔWᵀ are the σ_i² and d_out − k zeros; hence it is at least d_out − rank(ΔW).
- effective rank: exp of the entropy of σ_i / Σσ (Roy & Vetterli 2007); stable rank: Σσ² / σ_max².
- penalty terms: ‖AAᵀ − I‖²_F and ‖BᵀB − I‖²_F of the raw factors (Eq. 10's two terms).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

FLOAT32_EPS = float(np.finfo(np.float32).eps)


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


def delta_singular_values(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """Singular values of ΔW = scaling · B A (descending, float64), via QR of the factors."""
    a = A.detach().reshape(A.shape[0], -1).to(torch.float64).cpu()
    b = B.detach().reshape(B.shape[0], -1).to(torch.float64).cpu()
    _, r_a = torch.linalg.qr(a.T)  # Aᵀ = Q_a R_a, R_a: k_a x R
    _, r_b = torch.linalg.qr(b)  # B = Q_b R_b,   R_b: k_b x R
    return torch.linalg.svdvals(scaling * (r_b @ r_a.T))


def numerical_rank(singular_values: torch.Tensor, shape: tuple[int, int], rtol: float | None = None) -> int:
    if singular_values.numel() == 0:
        return 0
    smax = float(singular_values.max())
    if smax == 0.0:
        return 0
    rtol = max(shape) * FLOAT32_EPS if rtol is None else rtol
    return int((singular_values > smax * rtol).sum())


def orthogonality_loss(singular_values: torch.Tensor, d_out: int) -> float:
    """‖ΔWΔWᵀ − I_{d_out}‖²_F from ΔW's singular values."""
    s2 = singular_values.to(torch.float64) ** 2
    return float(((s2 - 1.0) ** 2).sum()) + float(d_out - singular_values.numel())


def effective_rank(singular_values: torch.Tensor) -> float:
    total = float(singular_values.sum())
    if total == 0.0:
        return 0.0
    p = singular_values[singular_values > 0] / total
    return float(math.exp(float(-(p * p.log()).sum())))


def stable_rank(singular_values: torch.Tensor) -> float:
    smax = float(singular_values.max()) if singular_values.numel() else 0.0
    return 0.0 if smax == 0.0 else float((singular_values**2).sum()) / smax**2


def _gram_penalty(m: torch.Tensor, rows: bool) -> float:
    m = m.to(torch.float64)
    g = m @ m.T if rows else m.T @ m
    return float(((g - torch.eye(g.shape[0], dtype=g.dtype)) ** 2).sum())


def module_diagnostics(
    name: str, A: torch.Tensor, B: torch.Tensor, scaling: float, rtol: float | None = None
) -> ModuleDiagnostics:
    rank_r = int(A.shape[0])
    a = A.detach().reshape(rank_r, -1).to(torch.float64).cpu()
    b = B.detach().reshape(B.shape[0], rank_r).to(torch.float64).cpu()
    d_out, d_in = b.shape[0], a.shape[1]
    sv = delta_singular_values(a, b, scaling)
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
        penalty_a=_gram_penalty(a, rows=True),
        penalty_b=_gram_penalty(b, rows=False),
    )


# -- from a model or from an adapter folder -----------------------------------------------------------


def diagnose_model(model, rtol: float | None = None) -> Diagnostics:
    """Diagnostics of every LoRA pair of the active adapter of a PEFT model."""
    from rmlora.core.pairs import find_lora_pairs

    return Diagnostics(
        [module_diagnostics(p.name, p.A, p.effective_b(), p.scaling, rtol) for p in find_lora_pairs(model)]
    )


def _pattern_value(patterns: dict, module: str, default):
    # PEFT's rule for rank_pattern / alpha_pattern keys: the key matches the end of the module path
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$"
)


def adapter_pairs(
    config: dict, tensors: dict[str, torch.Tensor]
) -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """(module, A, B, scaling) for every pair stored in a PEFT adapter file."""
    from rmlora.errors import AdapterError

    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m:
            side = "A" if m.group("kind").endswith("A") else "B"
            found.setdefault(m.group("module"), {})[side] = tensor
    out = []
    for module, sides in found.items():
        if set(sides) != {"A", "B"}:
            raise AdapterError(
                f"adapter has lora_{next(iter(sides))} but not its partner for {module}: the file is incomplete"
            )
        A, B = sides["A"], sides["B"]
        r = int(A.shape[0])
        alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", r))
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        out.append((module, A, B, float(scaling)))
    if not out:
        raise AdapterError("the adapter file holds no lora_A / lora_B tensors: is it a LoRA adapter?")
    return out


def diagnose_adapter(adapter_dir: str, rtol: float | None = None) -> Diagnostics:
    """Diagnostics of a saved PEFT LoRA adapter, without loading the base model."""
    from rmlora.io.adapters import read_adapter

    config, tensors = read_adapter(adapter_dir)
    return Diagnostics([module_diagnostics(n, A, B, s, rtol) for n, A, B, s in adapter_pairs(config, tensors)])


def diagnose(model_or_dir, rtol: float | None = None) -> Diagnostics:
    """Diagnostics of a PEFT model or of an adapter folder."""
    if isinstance(model_or_dir, (str, bytes)) or hasattr(model_or_dir, "__fspath__"):
        return diagnose_adapter(str(model_or_dir), rtol)
    return diagnose_model(model_or_dir, rtol)
