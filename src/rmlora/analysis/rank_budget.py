"""Rank budget: how much LoRA rank a fine-tune needs, read off E = W_target − W_base (Theorem 3.1, Eq. 9).

Zeng & Lee's bound (the paper's Eq. 8) charges every target layer i the term e_i = σ_{R+1}(E_i), the
(R+1)-th singular value of the discrepancy between the target weight and the frozen weight, for a LoRA of
rank R (Eq. 9, one pre-trained layer per target layer). For two checkpoints of one architecture — a base
and a full fine-tune of it, or any two — this module computes, for every weight matrix LoRA would target:

- the singular values σ_1 ≥ σ_2 ≥ … of E = W_target − W_base (dense, float64),
- the bound term e(R) = σ_{R+1}(E) for each candidate R (0 once R ≥ min(d_out, d_in)),
- the best relative error any rank-R update can reach, ‖E − E_R‖_F / ‖E‖_F = sqrt(Σ_{i>R} σ_i²) / ‖E‖_F
  (Eckart–Young: E_R, the truncated SVD, is the best rank-R approximation of E),
- the smallest R whose best relative error is at most `max_error`.

Given a LoRA adapter trained on the same base (Section 4.1): ΔW has intrinsic rank r ≤ R, so the bound
only reaches e(r) = σ_{r+1}(E), not σ_{R+1}(E). The gap σ_{r+1}(E) − σ_{R+1}(E) is the part of the nominal
budget the adapter left unused; r / R is the budget it used.

E is always reported as d_out x d_in: GPT-2's Conv1D stores its weight as d_in x d_out, so it is transposed
(σ(E) does not change; the reported shape and the comparison with ΔW = s·BA do).

Checkpoints are read by rmlora.analysis.checkpoints (safetensors directly, or transformers' from_pretrained).
Weight names are matched between checkpoints by their longest common dotted suffix
(rmlora.analysis.module_names.match_names), so a base saved as `BertModel` (encoder.layer.0...) matches a
fine-tune saved as `BertForSequenceClassification` (bert.encoder.layer.0...). The spectrum functions of E are
in rmlora.analysis.discrepancy, the adapter's part in rmlora.analysis.adapter_budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm  # a dependency of transformers

from rmlora.analysis.adapter_budget import AdapterBudget, AdapterPairs, adapter_budget, adapter_pairs_on_base
from rmlora.analysis.checkpoints import load_checkpoint, select_modules
from rmlora.analysis.discrepancy import bound_term, discrepancy_singular_values, rank_for_error, tail_norms
from rmlora.analysis.module_names import layer_type, match_names, parse_target_modules
from rmlora.analysis.spectrum import numerical_rank
from rmlora.errors import ConfigError

DEFAULT_RANKS = (1, 2, 4, 8, 16, 32)
DEFAULT_MAX_ERROR = 0.1


@dataclass
class ModuleBudget:
    module: str  # the module path in the base checkpoint (weight key without ".weight")
    layer_type: str  # the path after the block index, e.g. attention.self.query
    d_out: int
    d_in: int
    base_norm: float  # ‖W_base‖_F
    norm: float  # ‖E‖_F
    numerical_rank: int  # #σ_i(E) > max(d_out, d_in)·eps(float32)·σ_1
    rank_for_error: int  # smallest R with relative error ≤ max_error
    ranks: list[int]
    bound_terms: list[float]  # σ_{R+1}(E) for each R in ranks
    relative_errors: list[float]  # ‖E − E_R‖_F / ‖E‖_F for each R in ranks
    singular_values: list[float]
    adapter: AdapterBudget | None = None

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "adapter"}
        out["adapter"] = self.adapter.to_dict() if self.adapter is not None else None
        return out

    def relative_error_curve(self) -> np.ndarray:
        """‖E − E_R‖_F / ‖E‖_F for R = 0 … min(d_out, d_in)."""
        tails = tail_norms(torch.tensor(self.singular_values, dtype=torch.float64)).numpy()
        return tails / tails[0] if tails[0] > 0 else np.zeros_like(tails)


@dataclass
class RankBudget:
    base: str
    target: str
    ranks: list[int]
    max_error: float
    modules: list[ModuleBudget] = field(default_factory=list)
    adapter: str | None = None

    @property
    def summary(self) -> dict:
        """Model-level numbers per candidate R: Σ_l σ_{R+1}(E_l) (the terms Eq. 8 adds up), the global relative
        error sqrt(Σ_l ‖E_l − E_{l,R}‖²_F / Σ_l ‖E_l‖²_F), LoRA parameters, and modules within max_error."""
        mods = self.modules
        total_sq = sum(m.norm**2 for m in mods)
        per_rank = []
        for j, R in enumerate(self.ranks):
            tail_sq = sum((m.relative_errors[j] * m.norm) ** 2 for m in mods)
            per_rank.append(
                {
                    "rank": R,
                    "sum_bound_terms": float(sum(m.bound_terms[j] for m in mods)),
                    "relative_error": math.sqrt(tail_sq / total_sq) if total_sq > 0 else 0.0,
                    "max_relative_error": max((m.relative_errors[j] for m in mods), default=0.0),
                    "modules_within_max_error": sum(m.relative_errors[j] <= self.max_error for m in mods),
                    "lora_parameters": sum(min(R, m.d_out, m.d_in) * (m.d_out + m.d_in) for m in mods),
                }
            )
        needed = [m.rank_for_error for m in mods]
        out = {
            "num_modules": len(mods),
            "total_norm": math.sqrt(total_sq),
            "max_error": self.max_error,
            # one R for every module (a uniform LoRA config) vs the per-module need
            "uniform_rank_for_error": max(needed, default=0),
            "median_rank_for_error": float(np.median(needed)) if needed else 0.0,
            "per_rank": per_rank,
        }
        with_adapter = [m.adapter for m in mods if m.adapter is not None]
        if with_adapter:
            out["adapter"] = {
                "num_modules": len(with_adapter),
                "mean_lora_rank": float(np.mean([a.lora_rank for a in with_adapter])),
                "mean_intrinsic_rank": float(np.mean([a.intrinsic_rank for a in with_adapter])),
                "mean_budget_used": float(np.mean([a.budget_used for a in with_adapter])),
                "sum_sigma_r1": float(sum(a.sigma_r1 for a in with_adapter)),
                "sum_sigma_R1": float(sum(a.sigma_R1 for a in with_adapter)),
                "sum_gap": float(sum(a.gap for a in with_adapter)),
                "mean_delta_error": float(np.mean([a.delta_error for a in with_adapter])),
            }
        return out

    def by_layer_type(self) -> dict[str, list[ModuleBudget]]:
        groups: dict[str, list[ModuleBudget]] = {}
        for m in self.modules:
            groups.setdefault(m.layer_type, []).append(m)
        return groups

    def to_dict(self) -> dict:
        return {
            "base": self.base,
            "target": self.target,
            "adapter": self.adapter,
            "ranks": self.ranks,
            "max_error": self.max_error,
            "modules": [m.to_dict() for m in self.modules],
            "summary": self.summary,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# -- the analysis ------------------------------------------------------------------------------------------


def _check_ranks(ranks: Sequence[int]) -> list[int]:
    ranks = sorted(set(int(r) for r in ranks))
    if not ranks or ranks[0] < 1:
        raise ConfigError(f"ranks must be positive integers, got {list(ranks)}: e.g. --ranks 1,2,4,8,16,32")
    return ranks


def rank_budget(
    base: str,
    target: str,
    ranks: Sequence[int] = DEFAULT_RANKS,
    max_error: float = DEFAULT_MAX_ERROR,
    target_modules: str | Sequence[str] | None = None,
    adapter: str | None = None,
    rtol: float | None = None,
    progress: bool = True,
) -> RankBudget:
    """The rank budget of the fine-tune base -> target (and, with `adapter`, how much of it a LoRA used)."""
    ranks = _check_ranks(ranks)
    if not (0.0 <= max_error < 1.0) or math.isnan(max_error):
        raise ConfigError(f"max_error must lie in [0, 1), got {max_error}: it is a relative Frobenius error, e.g. 0.1")
    targets = parse_target_modules(target_modules)
    base_ckpt, target_ckpt = load_checkpoint(base), load_checkpoint(target)

    pairs_by_module = adapter_pairs_on_base(adapter, base_ckpt, targets) if adapter is not None else None
    base_keys = _base_keys(base, base_ckpt, targets, pairs_by_module)
    target_keys = match_names(base_keys.values(), target_ckpt.shapes)

    result = RankBudget(base=base, target=target, ranks=ranks, max_error=max_error, adapter=adapter)
    modules = list(base_keys)
    if progress:
        modules = tqdm(modules, desc="SVD of E = W_target − W_base", unit="module", disable=None)
    for module in modules:
        base_key = base_keys[module]
        target_key = target_keys.get(base_key)
        if target_key is None:
            raise ConfigError(
                f"{target!r} has no weight matching {base_key} of {base!r}: base and target must be the same "
                "architecture"
            )
        W0 = base_ckpt.matrix(base_key)
        W1 = target_ckpt.matrix(target_key)
        if W0.shape != W1.shape:
            raise ConfigError(
                f"{base_key} is {tuple(W0.shape)} in the base but {tuple(W1.shape)} in the target: "
                "compare two checkpoints of the same architecture (or leave this module out with --target_modules)"
            )
        pair = pairs_by_module[module] if pairs_by_module is not None else None
        result.modules.append(_module_budget(module, W0, W1 - W0, ranks, max_error, pair, rtol))
    return result


def _base_keys(base: str, base_ckpt, targets: list[str] | None, pairs_by_module: AdapterPairs | None) -> dict:
    """{module: base weight key} of the modules to analyse: the adapter's, or those LoRA would target."""
    if pairs_by_module is not None:
        return {module: pair[0] for module, pair in pairs_by_module.items()}
    base_keys = select_modules(base_ckpt, targets)
    if not base_keys:
        what = f"target_modules {','.join(targets)}" if targets else "a Linear/Conv1D layer inside a transformer block"
        raise ConfigError(
            f"no weight matrix of {base!r} matches {what}: check --target_modules against the model's module names"
        )
    return base_keys


def _module_budget(module, W0, E, ranks, max_error, pair, rtol) -> ModuleBudget:
    """σ(E) and what it says for every candidate R; with the adapter's `pair`, the budget that pair used."""
    sv = discrepancy_singular_values(E)
    d_out, d_in = E.shape
    tails = tail_norms(sv)
    norm = float(tails[0])
    rel = (lambda R: float(tails[min(R, tails.numel() - 1)]) / norm) if norm > 0 else (lambda R: 0.0)
    budget = ModuleBudget(
        module=module,
        layer_type=layer_type(module),
        d_out=d_out,
        d_in=d_in,
        base_norm=float(torch.linalg.matrix_norm(W0)),
        norm=norm,
        numerical_rank=numerical_rank(sv, (d_out, d_in)),
        rank_for_error=rank_for_error(sv, max_error),
        ranks=list(ranks),
        bound_terms=[bound_term(sv, R) for R in ranks],
        relative_errors=[rel(R) for R in ranks],
        singular_values=[float(x) for x in sv],
    )
    if pair is not None:
        budget.adapter = adapter_budget(sv, E, rel, pair, rtol)
    return budget
