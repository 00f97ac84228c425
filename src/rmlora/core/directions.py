"""The random directions R_t of Algorithm 1: r̂ of R rank directions per LoRA pair per optimizer step.

The draw is a pure function of (seed, step, module, stream): every direction j of a module gets a 32-bit
key from a counter-based hash of those four numbers, and the r̂ directions with the smallest keys are
selected. No generator state is carried, so every DDP rank and a resumed run draw the same directions
(the released code's `random.sample` needs Python's global generator in lockstep: docs/FIDELITY.md,
"Direction draws"), and the draw runs on the parameters' device as a few batched integer kernels with no
host-device sync.

Written by hand because torch's generators are stateful (a seeded generator per module and step would
cost one host call each); numpy's SeedSequence would be pure but runs on the host. The hash is
"lowbias32" (Wellons) with multipliers below 2**31, so every product of 32-bit values fits an int64.
"""

from __future__ import annotations

import zlib

import torch

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
STREAM_A, STREAM_B = 0, 1


def mix32(x):
    """A 32-bit integer hash; works on Python ints and on int64 tensors alike."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    x = x ^ (x >> 16)
    return x


def module_key(name: str) -> int:
    """A stable 32-bit id of a module name (Python's hash() is salted per process; crc32 is not)."""
    return zlib.crc32(name.encode("utf-8")) & _M32


def step_key(seed: int, step: int, stream: int) -> int:
    return mix32(mix32(mix32(seed & _M32) ^ (stream * _GOLDEN)) ^ mix32(step & _M32) ^ ((step >> 32) & _M32))


def direction_keys(module_keys: torch.Tensor, rank: int, seed: int, step: int, stream: int) -> torch.Tensor:
    """n x R int64 keys, one per (module, direction), for modules given as an int64 tensor of ids."""
    base = step_key(seed, step, stream)
    per_module = mix32(module_keys ^ base)
    j = torch.arange(rank, device=module_keys.device, dtype=torch.int64) * _GOLDEN
    return mix32(per_module[:, None] + j[None, :])


def select_directions(
    module_keys: torch.Tensor, rank: int, r_hat: int, seed: int, step: int, stream: int
) -> torch.Tensor:
    """n x r̂ sorted indices in [0, R): the r̂ directions with the smallest keys (distinct by construction)."""
    keys = direction_keys(module_keys, rank, seed, step, stream)
    # (key, index) order breaks the rare tie deterministically; argsort of a permutation-free key set
    # returns distinct indices either way.
    chosen = torch.argsort(keys * rank + torch.arange(rank, device=keys.device), dim=1)[:, :r_hat]
    return torch.sort(chosen, dim=1).values


def direction_mask(indices: torch.Tensor, rank: int, dtype: torch.dtype) -> torch.Tensor:
    """n x R 0/1 mask with ones at the selected indices."""
    mask = torch.zeros(indices.shape[0], rank, dtype=dtype, device=indices.device)
    return mask.scatter_(1, indices, 1)
