"""The orthogonality penalty of Eq. 10 and its closed-form gradient.

Reg(A, B) = ‖A Aᵀ − I_R‖²_F + ‖Bᵀ B − I_R‖²_F ("squared", the paper), or the released code's
non-squared ‖·‖_F ("frobenius"); summed over all pairs ("sum") or averaged over all A and B matrices
("mean", the released code). Computed in float32 whatever the parameter dtype and outside autocast,
one batched matmul per group of same-shaped pairs.
"""

from __future__ import annotations

import torch

from .pairs import PairGroup


def _gram_minus_identity(stacked: torch.Tensor, rows: bool) -> torch.Tensor:
    """A Aᵀ − I for an n x R x d stack (rows=True), or Bᵀ B − I for an n x d x R stack (rows=False)."""
    x = stacked.float()
    gram = x @ x.transpose(1, 2) if rows else x.transpose(1, 2) @ x
    eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
    return gram - eye


def group_terms(group: PairGroup, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair penalty terms of A and of B (two length-n float32 tensors), differentiable."""
    ga = _gram_minus_identity(group.stacked_a(), rows=True)
    gb = _gram_minus_identity(group.stacked_b(), rows=False)
    if form == "squared":
        return ga.pow(2).sum((1, 2)), gb.pow(2).sum((1, 2))
    return torch.linalg.matrix_norm(ga), torch.linalg.matrix_norm(gb)


def _device_type(groups: list[PairGroup]) -> str:
    return groups[0].pairs[0].A.device.type if groups else "cpu"


def orthogonality_penalty(groups: list[PairGroup], form: str, reduction: str, weight: float) -> torch.Tensor:
    """weight · Reg summed (or averaged) over every pair of every group; a float32 scalar."""
    with torch.autocast(device_type=_device_type(groups), enabled=False):
        total = None
        count = 0
        for group in groups:
            ta, tb = group_terms(group, form)
            s = ta.sum() + tb.sum()
            total = s if total is None else total + s
            count += 2 * len(group.pairs)
        if total is None:
            return torch.zeros((), dtype=torch.float32)
        if reduction == "mean":
            total = total / count
        return total * weight


@torch.no_grad()
def add_penalty_gradient(groups: list[PairGroup], form: str, reduction: str, weight: float) -> None:
    """Add ∂(weight · Reg)/∂A and ∂/∂B to the parameters' .grad in closed form.

    squared:   ∂‖AAᵀ−I‖²/∂A = 4 (AAᵀ−I) A,      ∂‖BᵀB−I‖²/∂B = 4 B (BᵀB−I)
    frobenius: ∂‖AAᵀ−I‖/∂A  = 2 (AAᵀ−I) A / ‖AAᵀ−I‖  (0 where the norm is 0), likewise for B.
    Used by RMLoraCallback, which cannot change the loss of the Trainer it is attached to.
    """
    count = 2 * sum(len(g.pairs) for g in groups)
    scale = weight / count if reduction == "mean" else weight
    for group in groups:
        a = group.stacked_a().float()
        b = group.stacked_b().float()
        ga = _gram_minus_identity(a, rows=True)
        gb = _gram_minus_identity(b, rows=False)
        da = ga @ a
        db = b @ gb
        if form == "squared":
            da, db = 4 * da, 4 * db
        else:
            na = torch.linalg.matrix_norm(ga)[:, None, None]
            nb = torch.linalg.matrix_norm(gb)[:, None, None]
            da = torch.where(na > 0, 2 * da / na.clamp_min(1e-30), torch.zeros_like(da))
            db = torch.where(nb > 0, 2 * db / nb.clamp_min(1e-30), torch.zeros_like(db))
        for pair, dpa, dpb in zip(group.pairs, da * scale, db * scale):
            for param, dp in ((pair.A, dpa), (pair.B, dpb)):
                dp = dp.reshape(param.shape).to(param.dtype)
                if param.grad is None:
                    param.grad = dp.clone()
                else:
                    param.grad.add_(dp)
