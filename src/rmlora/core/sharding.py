"""LoRA matrices sharded by FSDP2 (`torch.distributed.fsdp.fully_shard`): local shards and global indices.

Under `fully_shard` every parameter is a DTensor whose rank-local shard is a slice of the full matrix
(`Shard(0)`: rows of A, rows of B). Outside forward and backward, where the penalty and the masks act,
only that slice is on the rank. So:

- the penalty needs the full A and B: `gather` all-gathers them (`DTensor.full_tensor`, differentiable:
  its backward hands each rank the gradient of its own slice), as PEFT gathers AdaLoRA's matrices for
  its orthogonality term under DeepSpeed ZeRO-3;
- the masks select directions by global index (row i of A, column j of B): `shard_mask` cuts the full
  mask to the rows/columns this rank holds, and the masking kernels run on `local` tensors
  (gradients, weights and the optimizer's state, which FSDP2 shards the same way).

Plain tensors pass through every function unchanged, so the unsharded path is the same code.
"""

from __future__ import annotations

import torch

try:  # public since torch 2.4
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # an older torch or one built without torch.distributed: nothing can be sharded
    DTensor = None


def is_sharded(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The rank-local shard of a DTensor (a view: in-place writes reach the DTensor), else `t` itself."""
    return t.to_local() if is_sharded(t) else t


def gather(t: torch.Tensor) -> torch.Tensor:
    """The full tensor, all-gathered from the shards (differentiable), else `t` itself."""
    return t.full_tensor() if is_sharded(t) else t


def shard_slices(param: torch.Tensor) -> tuple[slice, ...]:
    """The global index range, per dim, of the part of `param` that this rank holds."""
    if not is_sharded(param):
        return tuple(slice(0, n) for n in param.shape)
    # torch has no public form of this; it is what DTensor itself uses to place a shard
    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return tuple(slice(o, o + n) for o, n in zip(offset, shape))


def shard_mask(mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """Cut a mask broadcastable to an n-stack of `param`-shaped matrices (n x shape) to the local shard.

    Dims where the mask has size 1 broadcast and are left alone; the others are cut to the global rows
    (A) or columns (B) this rank holds, so that direction i keeps meaning row i of the full matrix.
    """
    if not is_sharded(param):
        return mask
    for dim, part in enumerate(shard_slices(param)):
        if mask.shape[dim + 1] != 1:
            mask = mask.narrow(dim + 1, part.start, part.stop - part.start)
    return mask


def local_part(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The slice of a full-shaped tensor (e.g. a gradient computed on gathered matrices) that this rank holds."""
    return full[shard_slices(param)] if is_sharded(param) else full


@torch.no_grad()
def add_to_grad(param: torch.Tensor, full_grad: torch.Tensor) -> None:
    """param.grad += the local part of a full-shaped gradient (which every rank computed alike)."""
    part = local_part(full_grad, param).to(param.dtype)
    if param.grad is None:
        part = part.clone()
        param.grad = DTensor.from_local(part, param.device_mesh, param.placements) if is_sharded(param) else part
    else:
        local(param.grad).add_(part)
