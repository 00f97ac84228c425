"""Partial updates of the LoRA matrices around `optimizer.step()` (Algorithm 1).

"grad" mode multiplies the gradients of the unselected rows of A / columns of B by 0, as Algorithm 1
and the released code do. With AdamW that does not freeze them: the first moment and the decoupled
weight decay still move them (docs/FIDELITY.md, "Multiplying `.grad`"). "strict" mode also snapshots the
unselected rows and columns of the weights and of every optimizer state tensor shaped like the weight (exp_avg,
exp_avg_sq, momentum_buffer, ...) before the step and writes them back after it, so they end the step
bitwise unchanged: a true partial update under any optimizer. Neither saves optimizer memory: the
optimizer still holds full state for every LoRA matrix (docs/PERFORMANCE.md §6).

The work is done per group of same-shaped pairs on an n-stack of its matrices: stack, one masked
kernel, one foreach copy back. A model has ~100 LoRA matrices and a per-parameter loop would launch
~10 small kernels for each of them (weights, exp_avg, exp_avg_sq; clone, where, copy): the per-group
form launches a handful per group; `mask_gradients` is the per-parameter fallback for a group in which
some matrix got no gradient.

Under FSDP2 the kernels run on the rank-local shards (rmlora.core.sharding.local) with masks already cut to
the rows/columns the rank holds (sharding.shard_mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rmlora.core.pairs import PairGroup
from rmlora.core.sharding import local


def _row_view(param: torch.Tensor, rank: int) -> tuple[int, ...]:
    # A: direction i is row i (dim 0), broadcast over every other dim
    return (rank,) + (1,) * (param.dim() - 1)


def _col_view(param: torch.Tensor, rank: int) -> tuple[int, ...]:
    # B: direction j is column j (dim 1), broadcast over every other dim
    return (1, rank) + (1,) * (param.dim() - 2)


def stacked_masks(group: PairGroup, a_mask: torch.Tensor, b_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks broadcastable to the n-stack of the group's A's (n x R x 1...) and B's (n x 1 x R x 1...)."""
    n, rank = len(group.pairs), group.rank
    a = a_mask.view((n,) + _row_view(group.pairs[0].A, rank))
    b = b_mask.view((n,) + _col_view(group.pairs[0].B, rank))
    return a, b


# -- per-parameter fallback -------------------------------------------------------------------------
@torch.no_grad()
def mask_gradients(params: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    """grad ← grad · mask for every parameter that has a gradient (one foreach call)."""
    pairs = [(local(p.grad), m.to(p.grad.dtype)) for p, m in zip(params, masks) if p.grad is not None]
    if pairs:
        grads, ms = zip(*pairs)
        torch._foreach_mul_(list(grads), list(ms))


def _state_tensors(optimizer, param: torch.Tensor) -> dict[str, torch.Tensor]:
    state = optimizer.state.get(param, {}) if optimizer is not None else {}
    # sharded (FSDP2) state is sharded like its parameter: the local shards are what the masks act on
    return {k: local(v) for k, v in state.items() if torch.is_tensor(v) and v.shape == param.shape}


# -- per-group forms (what RMLora runs) ------------------------------------------------------------------
@torch.no_grad()
def mask_stacked_gradients(params: list[torch.Tensor], mask: torch.Tensor) -> None:
    """grad ← grad · mask for same-shaped parameters, `mask` broadcastable to their n-stack."""
    grads = [p.grad for p in params]
    if any(g is None for g in grads):  # a pair outside the graph this step: mask the others one by one
        mask_gradients(params, list(mask.unbind(0)))
        return
    grads = [local(g) for g in grads]
    stacked = torch.stack(grads)
    stacked.mul_(mask.to(stacked.dtype))
    torch._foreach_copy_(grads, list(stacked.unbind(0)))


@dataclass
class GroupSnapshot:
    """Strict mode's copy of a group's weights and optimizer state, stacked (n x shape of one matrix)."""

    params: list[torch.Tensor]
    keep: torch.Tensor  # bool, broadcastable to the stack: True where the step may change the value
    weights: torch.Tensor
    states: dict[str, torch.Tensor]  # key -> stack; rows of parameters without that state yet are zeros


@torch.no_grad()
def take_group_snapshot(optimizer, params: list[torch.Tensor], keep: torch.Tensor) -> GroupSnapshot:
    weights = torch.stack([local(p.detach()) for p in params])
    per_param = [_state_tensors(optimizer, p) for p in params]
    states = {}
    for key in {k for st in per_param for k in st}:
        rows = [st.get(key) for st in per_param]
        like = next(r for r in rows if r is not None)
        states[key] = torch.stack([r if r is not None else torch.zeros_like(like) for r in rows])
    return GroupSnapshot(params, keep.bool(), weights, states)


@torch.no_grad()
def restore_group_snapshot(optimizer, snap: GroupSnapshot) -> None:
    params, keep = snap.params, snap.keep
    now = torch.stack([local(p.detach()) for p in params])
    torch.where(keep, now, snap.weights, out=now)
    torch._foreach_copy_([local(p) for p in params], list(now.unbind(0)))
    per_param = [_state_tensors(optimizer, p) for p in params]
    for key in {k for st in per_param for k in st}:
        targets = [st.get(key) for st in per_param]
        before = snap.states.get(key)
        if any(t is None for t in targets):
            # some parameter took no step (no gradient): restore the others one by one
            for i, t in enumerate(targets):
                if t is not None:
                    row = before[i] if before is not None else torch.zeros_like(t)
                    t.copy_(torch.where(keep[i], t, row))
            continue
        now = torch.stack(targets)
        # state created by this very step started from zeros (AdamW, SGD momentum start there)
        torch.where(keep, now, before if before is not None else torch.zeros_like(now), out=now)
        torch._foreach_copy_(targets, list(now.unbind(0)))
