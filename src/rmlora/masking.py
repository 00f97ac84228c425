"""Partial updates of the LoRA matrices around `optimizer.step()` (Algorithm 1).

"grad" mode multiplies the gradients of the unselected rows of A / columns of B by 0, as Algorithm 1
and the released code do. With AdamW that does not freeze them: the first moment and the decoupled
weight decay still move them (REFERENCE.md §2). "strict" mode also snapshots the unselected rows and
columns of the weights and of every optimizer state tensor shaped like the weight (exp_avg,
exp_avg_sq, momentum_buffer, ...) before the step and writes them back after it, so they end the step
bitwise unchanged: a true partial update under any optimizer. Neither saves optimizer memory: the
optimizer still holds full state for every LoRA matrix (REFERENCE.md §6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pairs import PairGroup


def _row_view(param: torch.Tensor, rank: int) -> tuple[int, ...]:
    # A: direction i is row i (dim 0), broadcast over every other dim
    return (rank,) + (1,) * (param.dim() - 1)


def _col_view(param: torch.Tensor, rank: int) -> tuple[int, ...]:
    # B: direction j is column j (dim 1), broadcast over every other dim
    return (1, rank) + (1,) * (param.dim() - 2)


def expand_masks(group: PairGroup, a_mask: torch.Tensor, b_mask: torch.Tensor) -> tuple[list, list]:
    """Per-parameter broadcastable masks for the A's and B's of a group (n x R masks in)."""
    rank = group.rank
    a = [m.view(_row_view(p.A, rank)) for p, m in zip(group.pairs, a_mask)]
    b = [m.view(_col_view(p.B, rank)) for p, m in zip(group.pairs, b_mask)]
    return a, b


@torch.no_grad()
def mask_gradients(params: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    """grad ← grad · mask for every parameter that has a gradient (one foreach kernel where possible)."""
    pairs = [(p.grad, m.to(p.grad.dtype)) for p, m in zip(params, masks) if p.grad is not None]
    if pairs:
        grads, ms = zip(*pairs)
        torch._foreach_mul_(list(grads), list(ms))


def _state_tensors(optimizer, param: torch.Tensor) -> dict[str, torch.Tensor]:
    state = optimizer.state.get(param, {}) if optimizer is not None else {}
    return {k: v for k, v in state.items() if torch.is_tensor(v) and v.shape == param.shape}


@dataclass
class Snapshot:
    """What strict mode restores after the step: weights and optimizer state of the unselected directions."""

    params: list[torch.Tensor]
    keep: list[torch.Tensor]  # broadcastable bool masks: True where the step may change the value
    weights: list[torch.Tensor]
    states: list[dict[str, torch.Tensor] | None]  # None: the optimizer had no state yet (lazy init)


@torch.no_grad()
def take_snapshot(optimizer, params: list[torch.Tensor], masks: list[torch.Tensor]) -> Snapshot:
    keep = [m.bool() for m in masks]
    weights = [p.detach().clone() for p in params]
    states = []
    for p in params:
        st = _state_tensors(optimizer, p)
        states.append({k: v.clone() for k, v in st.items()} if st else None)
    return Snapshot(params, keep, weights, states)


@torch.no_grad()
def restore_snapshot(optimizer, snap: Snapshot) -> None:
    for p, keep, w, saved in zip(snap.params, snap.keep, snap.weights, snap.states):
        p.copy_(torch.where(keep, p, w))
        for key, now in _state_tensors(optimizer, p).items():
            # state created by this very step started from zeros (AdamW, SGD momentum start there)
            before = saved[key] if saved is not None and key in saved else torch.zeros_like(now)
            now.copy_(torch.where(keep, now, before))
