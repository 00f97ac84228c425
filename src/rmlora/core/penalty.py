"""The orthogonality penalty of Eq. 10, its variants, and their closed-form gradients.

Per LoRA matrix (A: R x d_in, its rows; B: d_out x R, its columns) one term, by `form`:

    squared     ‖AAᵀ − I_R‖²_F, ‖BᵀB − I_R‖²_F                 (Eq. 10)
    frobenius   ‖AAᵀ − I_R‖_F,  ‖BᵀB − I_R‖_F                  (the released code, non-squared)
    frd         mean |cos| between distinct rows of A / columns of B   (the released code's lora_type "frd")

and the terms are combined over all A and B matrices of all pairs, by `reduction`:

    sum         Σ terms                                        (Eq. 10: summed over pairs)
    mean        Σ terms / #matrices                            (the released code)
    normalized  Σ (term / ‖I_R‖) / #matrices                   (the default)

where ‖I_R‖ is the term of an all-zero matrix of rank R in the same form: R (squared), √R (frobenius), 1 (frd).
For the squared form term/R = mean over the R directions of (σᵢ² − 1)² (σᵢ the singular values of the matrix),
so the normalized penalty is a mean over every direction of every matrix: it starts at
(1 + c)/2 ≈ 0.72 for PEFT's default initialisation (B = 0 scores 1; A kaiming-uniform scores c ≈ 4/9, see
docs/THEORY.md) whatever R, the number of adapted layers and their widths, so one λ means the same everywhere.

Computed in float32 whatever the parameter dtype and outside autocast, one batched matmul per group of
same-shaped pairs in the forward and one in the backward.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from rmlora.core.pairs import PairGroup

# the released code adds this to the product of norms, so a zero row (B at initialisation) scores 0, not nan
FRD_EPS = 1e-30


def _gram(stacked: torch.Tensor, rows: bool) -> torch.Tensor:
    """A Aᵀ for an n x R x d stack (rows=True), or Bᵀ B for an n x d x R stack (rows=False)."""
    x = stacked.float()
    return x @ x.transpose(1, 2) if rows else x.transpose(1, 2) @ x


def _gram_minus_identity(stacked: torch.Tensor, rows: bool) -> torch.Tensor:
    gram = _gram(stacked, rows)
    # in place on the diagonal: no identity matrix to allocate and subtract
    gram.diagonal(dim1=1, dim2=2).sub_(1)
    return gram


def _frd_parts(x: torch.Tensor, rows: bool):
    """Gram G, direction norms n (n x R), D = n nᵀ + ε and |cos| C = |G| / D with a zero diagonal.

    The R x R part runs in float64: with a zero direction (B's columns start at 0, and strict masking keeps the
    unselected ones there) D = ε = 1e-30, whose square, in the gradient, underflows float32 to 0 and made 0/0 = NaN.
    """
    gram = _gram(x, rows).double()
    norms = x.float().norm(dim=2 if rows else 1).double()
    denom = norms[:, :, None] * norms[:, None, :] + FRD_EPS
    cos = gram.abs() / denom
    cos.diagonal(dim1=1, dim2=2).zero_()  # distinct pairs only (the released code subtracts the trace)
    return gram, norms, denom, cos


def _frd_terms(cos: torch.Tensor) -> torch.Tensor:
    r = cos.shape[-1]
    # R = 1 has no distinct pair: 0 (the released code would divide by R² − R = 0)
    return (cos.sum((1, 2)) / max(r * r - r, 1)).float()


def _forward(x: torch.Tensor, rows: bool, form: str):
    """Per-matrix terms of an n-stack and what their gradient needs."""
    if form == "frd":
        gram, norms, denom, cos = _frd_parts(x, rows)
        return _frd_terms(cos), (gram, norms, denom)
    diff = _gram_minus_identity(x, rows)
    sq = diff.pow(2).sum((1, 2))
    return (sq if form == "squared" else sq.sqrt()), (diff,)


def _frd_gradient(x, gram, norms, denom, rows: bool, scale: torch.Tensor) -> torch.Tensor:
    """∂(scale_k · frd_k)/∂x_k. With pᵢ the directions, Cᵢⱼ = |pᵢ·pⱼ| / (‖pᵢ‖‖pⱼ‖ + ε), frd = Σ_{i≠j} Cᵢⱼ / (R² − R):

    ∂frd/∂pᵢ = 2/(R² − R) · Σ_{j≠i} [ sign(Gᵢⱼ) pⱼ / Dᵢⱼ − |Gᵢⱼ| ‖pⱼ‖ pᵢ / (‖pᵢ‖ Dᵢⱼ²) ]
             = 2/(R² − R) · (W P − diag(v) P),  Wᵢⱼ = sign(Gᵢⱼ)/Dᵢⱼ (i ≠ j),  vᵢ = Σ_{j≠i} |Gᵢⱼ| ‖pⱼ‖ / (‖pᵢ‖ Dᵢⱼ²)

    (a zero direction contributes 0: its Gᵢⱼ are 0, and autograd of the norm takes the 0 subgradient there).
    """
    r = gram.shape[-1]
    coef = (2 * scale / max(r * r - r, 1))[:, None, None]
    w = torch.sign(gram) / denom
    w.diagonal(dim1=1, dim2=2).zero_()
    v = gram.abs() * norms[:, None, :] / denom.pow(2)
    v.diagonal(dim1=1, dim2=2).zero_()
    v = v.sum(2)
    v = torch.where(norms > 0, v / norms.clamp_min(1e-30), torch.zeros_like(v))
    w = ((w - torch.diag_embed(v)) * coef).to(x.dtype)  # scale the R x R factor, not the n x R x d product
    return w @ x if rows else x @ w


def _term_gradient(x: torch.Tensor, saved, terms: torch.Tensor, rows: bool, form: str, scale: torch.Tensor):
    """∂(scale_k · term_k)/∂x_k for every matrix k of the stack, in closed form.

    squared:   ∂‖XXᵀ−I‖²/∂X = 4 (XXᵀ−I) X,      ∂‖XᵀX−I‖²/∂X = 4 X (XᵀX−I)
    frobenius: ∂‖XXᵀ−I‖/∂X  = 2 (XXᵀ−I) X / ‖XXᵀ−I‖  (0 where the norm is 0), likewise for B.
    frd:       see _frd_gradient.
    """
    if form == "frd":
        return _frd_gradient(x, *saved, rows, scale)
    (diff,) = saved
    if form == "squared":
        coef = 4 * scale
    else:
        # the norm is not differentiable at 0 (an exactly orthonormal matrix): take the 0 subgradient
        coef = torch.where(terms > 0, 2 * scale / terms.clamp_min(1e-30), torch.zeros_like(terms))
    # scale the R x R factor, not the n x R x d product: one pass less over the large tensor
    diff = diff * coef[:, None, None]
    return diff @ x if rows else x @ diff


class _StackPenalty(torch.autograd.Function):
    """Per-matrix terms of an n-stack of A's (rows) or B's, with the closed-form backward.

    Autograd of X @ Xᵀ would run two batched matmuls and an add in the backward (one per operand of
    the product); the symmetric closed form needs a single one, and on CPU these skinny batched
    matmuls are most of the penalty's cost.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: bool, form: str) -> torch.Tensor:
        terms, saved = _forward(x, rows, form)
        ctx.rows, ctx.form, ctx.n_saved = rows, form, len(saved)
        ctx.save_for_backward(x, terms, *saved)
        return terms

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_terms: torch.Tensor):
        x, terms, *saved = ctx.saved_tensors
        return _term_gradient(x, saved, terms, ctx.rows, ctx.form, grad_terms), None, None


def zero_matrix_term(form: str, rank: int) -> float:
    """The term of an all-zero matrix of rank R (‖0 − I_R‖ in the form): what `normalized` divides by."""
    if form == "squared":
        return float(rank)
    if form == "frobenius":
        return math.sqrt(rank)
    return 1.0  # frd is a mean of |cos| in [0, 1] already


def _matrix_factor(form: str, reduction: str, rank: int, count: int) -> float:
    """What every term of a group of rank R is multiplied by (before λ), `count` matrices in all."""
    if reduction == "sum":
        return 1.0
    if reduction == "mean":
        return 1.0 / count
    return 1.0 / (count * zero_matrix_term(form, rank))


def group_terms(group: PairGroup, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair terms of A and of B (two length-n float32 tensors, not reduced), differentiable."""
    ta = _StackPenalty.apply(group.stacked_a().float(), True, form)
    tb = _StackPenalty.apply(group.stacked_b().float(), False, form)
    return ta, tb


def _device_type(groups: list[PairGroup]) -> str:
    return groups[0].pairs[0].A.device.type if groups else "cpu"


def orthogonality_penalty(groups: list[PairGroup], form: str, reduction: str, weight: float) -> torch.Tensor:
    """weight · the terms of every A and B reduced over all pairs (module docstring); a float32 scalar."""
    count = 2 * sum(len(g.pairs) for g in groups)
    with torch.autocast(device_type=_device_type(groups), enabled=False):
        total = None
        for group in groups:
            ta, tb = group_terms(group, form)
            s = (ta.sum() + tb.sum()) * _matrix_factor(form, reduction, group.rank, count)
            total = s if total is None else total + s
        if total is None:
            return torch.zeros((), dtype=torch.float32)
        return total * weight


@torch.no_grad()
def add_penalty_gradient(groups: list[PairGroup], form: str, reduction: str, weight: float) -> None:
    """Add ∂(weight · penalty)/∂A and ∂/∂B to the parameters' .grad in closed form (see _term_gradient).

    Used by RMLoraCallback, which cannot change the loss of the Trainer it is attached to.
    """
    count = 2 * sum(len(g.pairs) for g in groups)
    for group in groups:
        scale = weight * _matrix_factor(form, reduction, group.rank, count)
        for params, x, rows in (
            (group.A, group.stacked_a().float(), True),
            (group.B, group.stacked_b().float(), False),
        ):
            terms, saved = _forward(x, rows, form)
            grad = _term_gradient(x, saved, terms, rows, form, torch.full_like(terms, scale))
            grad = grad.to(params[0].dtype)
            add = [(p.grad, g.view(p.shape)) for p, g in zip(params, grad) if p.grad is not None]
            if add:  # one foreach call instead of one add_ per parameter
                torch._foreach_add_([a for a, _ in add], [g for _, g in add])
            for p, g in zip(params, grad):
                if p.grad is None:
                    p.grad = g.view(p.shape).clone()
