"""The spectrum of a discrepancy E = W_target − W_base and what Theorem 3.1 reads off it (Eq. 9, Eckart–Young).

- σ_1 ≥ σ_2 ≥ … of E (dense, float64),
- the bound term e(R) = σ_{R+1}(E) for a LoRA of rank R (0 once R ≥ min(d_out, d_in)),
- the best relative error any rank-R update can reach, ‖E − E_R‖_F / ‖E‖_F = sqrt(Σ_{i>R} σ_i²) / ‖E‖_F
  (Eckart–Young: E_R, the truncated SVD, is the best rank-R approximation of E),
- the smallest R whose best relative error is at most a given one.

The spectra of ΔW = s·BA (rank, effective rank, ...) are in rmlora.analysis.diagnostics.
"""

from __future__ import annotations

import torch


def discrepancy_singular_values(E: torch.Tensor) -> torch.Tensor:
    """σ(E), descending, float64."""
    return torch.linalg.svdvals(E.detach().to(torch.float64).cpu())


def bound_term(singular_values: torch.Tensor, rank: int) -> float:
    """e(R) = σ_{R+1}(E) (Eq. 9); 0 when R ≥ the number of singular values."""
    return float(singular_values[rank]) if rank < singular_values.numel() else 0.0


def tail_norms(singular_values: torch.Tensor) -> torch.Tensor:
    """tail[R] = ‖E − E_R‖_F = sqrt(Σ_{i>R} σ_i²) for R = 0 … k (Eckart–Young), float64, length k+1."""
    s2 = singular_values.to(torch.float64) ** 2
    # suffix sums from the smallest σ up, so the small tails are not the difference of two large numbers
    suffix = torch.flip(torch.cumsum(torch.flip(s2, [0]), 0), [0])
    return torch.cat([suffix, suffix.new_zeros(1)]).clamp_min(0).sqrt()


def relative_error(singular_values: torch.Tensor, rank: int) -> float:
    """Best relative error of a rank-`rank` update, ‖E − E_R‖_F / ‖E‖_F; 0 for E = 0."""
    tails = tail_norms(singular_values)
    total = float(tails[0])
    if total == 0.0:
        return 0.0
    return float(tails[min(rank, tails.numel() - 1)]) / total


def rank_for_error(singular_values: torch.Tensor, max_error: float) -> int:
    """The smallest R with ‖E − E_R‖_F ≤ max_error · ‖E‖_F."""
    tails = tail_norms(singular_values)
    ok = torch.nonzero(tails <= max_error * tails[0]).flatten()
    return int(ok[0]) if ok.numel() else int(tails.numel() - 1)
