"""The orthogonality penalty of Eq. 10 and its closed-form gradient.

Reg(A, B) = ‖A Aᵀ − I_R‖²_F + ‖Bᵀ B − I_R‖²_F ("squared", the paper), or the released code's
non-squared ‖·‖_F ("frobenius"); summed over all pairs ("sum") or averaged over all A and B matrices
("mean", the released code). Computed in float32 whatever the parameter dtype and outside autocast,
one batched matmul per group of same-shaped pairs in the forward and one in the backward.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rmlora.core.pairs import PairGroup


def _gram_minus_identity(stacked: torch.Tensor, rows: bool) -> torch.Tensor:
    """A Aᵀ − I for an n x R x d stack (rows=True), or Bᵀ B − I for an n x d x R stack (rows=False)."""
    x = stacked.float()
    gram = x @ x.transpose(1, 2) if rows else x.transpose(1, 2) @ x
    # in place on the diagonal: no identity matrix to allocate and subtract
    gram.diagonal(dim1=1, dim2=2).sub_(1)
    return gram


def _terms(diff: torch.Tensor, squared: bool) -> torch.Tensor:
    sq = diff.pow(2).sum((1, 2))
    return sq if squared else sq.sqrt()


def _term_gradient(
    x: torch.Tensor, diff: torch.Tensor, terms: torch.Tensor, rows: bool, squared: bool, scale: torch.Tensor
):
    """∂(scale_k · term_k)/∂x_k for every pair k of the stack, in closed form.

    squared:   ∂‖XXᵀ−I‖²/∂X = 4 (XXᵀ−I) X,      ∂‖XᵀX−I‖²/∂X = 4 X (XᵀX−I)
    frobenius: ∂‖XXᵀ−I‖/∂X  = 2 (XXᵀ−I) X / ‖XXᵀ−I‖  (0 where the norm is 0), likewise for B.
    """
    if squared:
        coef = 4 * scale
    else:
        # the norm is not differentiable at 0 (an exactly orthonormal matrix): take the 0 subgradient
        coef = torch.where(terms > 0, 2 * scale / terms.clamp_min(1e-30), torch.zeros_like(terms))
    # scale the R x R factor, not the n x R x d product: one pass less over the large tensor
    diff = diff * coef[:, None, None]
    return diff @ x if rows else x @ diff


class _StackPenalty(torch.autograd.Function):
    """Per-pair terms ‖XXᵀ−I‖ (rows) or ‖XᵀX−I‖ of an n-stack, with the closed-form backward.

    Autograd of X @ Xᵀ would run two batched matmuls and an add in the backward (one per operand of
    the product); the symmetric closed form needs a single one, and on CPU these skinny batched
    matmuls are most of the penalty's cost.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: bool, squared: bool) -> torch.Tensor:
        diff = _gram_minus_identity(x, rows)
        terms = _terms(diff, squared)
        ctx.rows, ctx.squared = rows, squared
        ctx.save_for_backward(x, diff, terms)
        return terms

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_terms: torch.Tensor):
        x, diff, terms = ctx.saved_tensors
        return _term_gradient(x, diff, terms, ctx.rows, ctx.squared, grad_terms), None, None


def group_terms(group: PairGroup, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair penalty terms of A and of B (two length-n float32 tensors), differentiable."""
    squared = form == "squared"
    ta = _StackPenalty.apply(group.stacked_a().float(), True, squared)
    tb = _StackPenalty.apply(group.stacked_b().float(), False, squared)
    return ta, tb


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
    """Add ∂(weight · Reg)/∂A and ∂/∂B to the parameters' .grad in closed form (see _term_gradient).

    Used by RMLoraCallback, which cannot change the loss of the Trainer it is attached to.
    """
    count = 2 * sum(len(g.pairs) for g in groups)
    scale = weight / count if reduction == "mean" else weight
    squared = form == "squared"
    for group in groups:
        for params, x, rows in (
            (group.A, group.stacked_a().float(), True),
            (group.B, group.stacked_b().float(), False),
        ):
            diff = _gram_minus_identity(x, rows)
            terms = _terms(diff, squared)
            grad = _term_gradient(x, diff, terms, rows, squared, torch.full_like(terms, scale))
            grad = grad.to(params[0].dtype)
            add = [(p.grad, g.view(p.shape)) for p, g in zip(params, grad) if p.grad is not None]
            if add:  # one foreach call instead of one add_ per parameter
                torch._foreach_add_([a for a, _ in add], [g for _, g in add])
            for p, g in zip(params, grad):
                if p.grad is None:
                    p.grad = g.view(p.shape).clone()
