"""RMLora: the method attached to a PEFT LoRA model — penalty for the loss, masks around the step.

    rm = RMLora(peft_model, RMLoraConfig(method="rm-lora", r_hat=0.5, reg_weight=0.1))
    loss = task_loss + rm.penalty()
    loss.backward()
    rm.before_optimizer_step(optimizer, step)   # masks the gradients (and snapshots, in strict mode)
    optimizer.step()
    rm.after_optimizer_step(optimizer, step)    # strict mode: restores the unselected directions;
                                                # step_compensation: scales the step's change by R/r̂
    optimizer.zero_grad()

Only the LoRA matrices of the active adapter are touched; heads and `modules_to_save` train normally.
This class is the algorithm; `rmlora.RMLora` (rmlora.methods.lora.LoraMethod) adds what a training run
needs around it: "# T / I params", export, and the versioned state a checkpoint carries.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from rmlora.config import RMLoraConfig
from rmlora.core.directions import STREAM_A, STREAM_B, direction_mask, module_key, select_directions
from rmlora.core.masking import (
    GroupSnapshot,
    mask_stacked_gradients,
    restore_group_snapshot,
    stacked_masks,
    take_group_snapshot,
)
from rmlora.core.pairs import LoraPair, PairGroup, group_pairs, require_lora_pairs
from rmlora.core.penalty import add_penalty_gradient, orthogonality_penalty
from rmlora.core.sharding import add_to_grad, gather, is_sharded, local, shard_mask
from rmlora.errors import ConfigError


class RMLora:
    """RM-LoRA's training logic for one PEFT model (see the module docstring for the loop)."""

    def __init__(self, model: nn.Module, config: RMLoraConfig | None = None):
        self.model = model
        self.config = config if config is not None else RMLoraConfig()
        if not isinstance(self.config, RMLoraConfig):
            raise ConfigError(f"config must be an RMLoraConfig, got {type(self.config).__name__}")
        if not self.config.is_lora_variant:
            raise ConfigError(
                f"RMLora trains lora, r-lora, gm-lora and rm-lora; method {self.config.method!r} is a baseline: "
                "use rmlora.methods.build_training_method (RMLoraTrainer does)"
            )
        self.refresh()

    def refresh(self) -> None:
        """Find the LoRA pairs again (after switching the active adapter or moving the model)."""
        self.pairs: list[LoraPair] = require_lora_pairs(self.model)
        self.groups: list[PairGroup] = group_pairs(self.pairs)
        self._r_hat = [self.config.r_hat_for(g.rank, g.pairs[0].name) for g in self.groups]
        full = sorted({g.rank for g, r in zip(self.groups, self._r_hat) if r == g.rank})
        if self.config.uses_masking and full:
            warnings.warn(
                f"r_hat={self.config.r_hat} selects every direction of the modules of rank {full}: they are not masked "
                "(gm-lora acts as lora and rm-lora as r-lora there); use a smaller r_hat",
                stacklevel=2,
            )
        for g in self.groups:  # every pair of a group shares R, but check names for the error message
            for p in g.pairs:
                self.config.r_hat_for(p.rank, p.name)
        keys = [
            torch.tensor([module_key(p.name) for p in g.pairs], dtype=torch.int64, device=g.pairs[0].A.device)
            for g in self.groups
        ]
        # Groups sharing (R, r̂, dtype, device) draw their directions in one call: a row's draw depends only
        # on its module's key, so drawing them together changes no direction, only the number of kernels.
        buckets: dict[tuple, list[int]] = {}
        for gi, g in enumerate(self.groups):
            key = (g.rank, self._r_hat[gi], g.pairs[0].A.dtype, g.pairs[0].A.device)
            buckets.setdefault(key, []).append(gi)
        self._buckets = [(gis, torch.cat([keys[gi] for gi in gis])) for gis in buckets.values()]
        self._prepared_step: int | None = None
        self._snapshots: list[GroupSnapshot] = []
        self._before_step: list[tuple[list[torch.Tensor], torch.Tensor, float]] = []  # step_compensation
        # DeepSpeed ZeRO-3 leaves each rank an empty placeholder of every parameter outside forward
        self._sharded = any(hasattr(p.A, "ds_id") or p.A.numel() == 0 for p in self.pairs)
        # FSDP2 (fully_shard) makes every parameter a DTensor holding a slice of the matrix (rmlora.core.sharding)
        self._fsdp = any(is_sharded(t) for p in self.pairs for t in (p.A, p.B))
        if self._sharded and self.config.uses_masking and self.config.step_compensation != "none":
            raise ConfigError(
                "step_compensation needs the LoRA matrices on every rank; under DeepSpeed ZeRO-3 they are partitioned: "
                "use step_compensation='none', or FSDP2 (torch.distributed.fsdp.fully_shard)"
            )

    # -- penalty -------------------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """λ · Reg(A, B) over all pairs, a float32 scalar; a constant 0 for lora / gm-lora."""
        cfg = self.config
        if not cfg.uses_penalty:
            return torch.zeros((), dtype=torch.float32, device=self.pairs[0].A.device)
        if self._fsdp:
            return orthogonality_penalty(self._gathered_groups(), cfg.reg_form, cfg.reg_reduction, cfg.reg_weight)
        if self._sharded:
            return self._gathered_penalty()
        return orthogonality_penalty(self.groups, cfg.reg_form, cfg.reg_reduction, cfg.reg_weight)

    def _gathered_penalty(self) -> torch.Tensor:
        # As PEFT does for AdaLoRA's regularizer (peft#1625): gather the shards for the duration of the
        # computation, registering them with the model so that their gradients reach the partitions.
        # Not working: under ZeRO-3 on CPU (deepspeed 0.19.8) the backward fails with "Function ViewBackward0
        # returned an invalid gradient at index 0 - got [0] but expected shape compatible with [32, 8]"
        # (docs/RELIABILITY.md). FSDP1 (FullyShardedDataParallel) also leaves empty views here; FSDP2 is handled above.
        try:
            import deepspeed  # optional dependency: only a ZeRO-3 run has it
        except ImportError:
            raise ConfigError(
                "the LoRA parameters are sharded (empty on this rank), as FSDP1 or DeepSpeed ZeRO-3 leave them: shard "
                "with FSDP2 instead (torch.distributed.fsdp.fully_shard), or keep the LoRA parameters out of sharding"
            ) from None
        params = [t for p in self.pairs for t in (p.A, p.B)]
        with deepspeed.zero.GatheredParameters(params, fwd_module=self.model):
            cfg = self.config
            return orthogonality_penalty(self.groups, cfg.reg_form, cfg.reg_reduction, cfg.reg_weight)

    def add_penalty_gradient(self) -> None:
        """Add the penalty's gradient to the LoRA .grad in closed form (for RMLoraCallback)."""
        cfg = self.config
        if not cfg.uses_penalty:
            return
        if not self._fsdp:
            add_penalty_gradient(self.groups, cfg.reg_form, cfg.reg_reduction, cfg.reg_weight)
            return
        # FSDP2: the gradient of the gathered matrices, of which each rank adds the slice it holds
        full = self._gathered_groups(detach=True)
        add_penalty_gradient(full, cfg.reg_form, cfg.reg_reduction, cfg.reg_weight)
        for gathered, group in zip(full, self.groups):
            for fp, p in zip(gathered.pairs, group.pairs):
                add_to_grad(p.A, fp.A.grad)
                add_to_grad(p.B, fp.B.grad)

    def _gathered_groups(self, detach: bool = False) -> list[PairGroup]:
        """The groups with every A and B all-gathered from their FSDP2 shards (differentiable unless `detach`)."""

        def full(t):
            return gather(t.detach() if detach else t)

        return [PairGroup([dataclasses.replace(p, A=full(p.A), B=full(p.B)) for p in g.pairs]) for g in self.groups]

    # -- directions ------------------------------------------------------------------------------------
    def _bucket_directions(self, step: int):
        """Per bucket of groups: (group indices, rows of A, columns of B), each an n x r̂ index tensor."""
        cfg = self.config
        for gis, keys in self._buckets:
            rank, r_hat = self.groups[gis[0]].rank, self._r_hat[gis[0]]
            a_idx = select_directions(keys, rank, r_hat, cfg.seed, step, STREAM_A)
            b_idx = (
                a_idx
                if cfg.mask_sampling == "shared"
                else select_directions(keys, rank, r_hat, cfg.seed, step, STREAM_B)
            )
            yield gis, a_idx, b_idx

    def directions(self, step: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{module name: (rows of A, columns of B)} selected at optimizer step `step` (sorted, on CPU)."""
        found = {}
        for gis, a_idx, b_idx in self._bucket_directions(step):
            a_idx, b_idx = a_idx.cpu(), b_idx.cpu()
            pairs = [pair for gi in gis for pair in self.groups[gi].pairs]
            for k, pair in enumerate(pairs):
                found[pair.name] = (a_idx[k], b_idx[k])
        # in the model's group order, as before the buckets
        return {pair.name: found[pair.name] for g in self.groups for pair in g.pairs}

    def masks_step(self, step: int) -> bool:
        """Whether optimizer step `step` is masked."""
        return self.config.uses_masking and (step > 0 or self.config.mask_first_step)

    # -- hooks around optimizer.step() --------------------------------------------------------------------
    def before_optimizer_step(self, optimizer, step: int) -> None:
        """Mask the LoRA gradients for step `step` (once per step; a second call is a no-op)."""
        if self._prepared_step == step:
            return
        self._prepared_step = step
        self._snapshots = []
        self._before_step = []
        if not self.masks_step(step):
            return
        strict = self.config.mask_mode == "strict"
        compensation = self.config.step_compensation
        for gis, a_idx, b_idx in self._bucket_directions(step):
            g0 = self.groups[gis[0]]
            a_mask = direction_mask(a_idx, g0.rank, g0.pairs[0].A.dtype)
            b_mask = a_mask if b_idx is a_idx else direction_mask(b_idx, g0.rank, g0.pairs[0].A.dtype)
            sizes = [len(self.groups[gi].pairs) for gi in gis]
            for gi, am, bm in zip(gis, a_mask.split(sizes), b_mask.split(sizes)):
                group = self.groups[gi]
                ka, kb = stacked_masks(group, am, bm)
                # FSDP2: each rank holds some rows of A and of B; direction i stays row i of the full A
                ka, kb = shard_mask(ka, group.A[0]), shard_mask(kb, group.B[0])
                for params, keep in ((group.A, ka), (group.B, kb)):
                    mask_stacked_gradients(params, keep)
                    if strict:
                        self._snapshots.append(take_group_snapshot(optimizer, params, keep))
                    if compensation != "none":
                        ratio = group.rank / self._r_hat[gi]
                        scale = ratio if compensation == "linear" else ratio**0.5
                        # strict mode has just stacked the same weights into its snapshot
                        weights = (
                            self._snapshots[-1].weights if strict else torch.stack([local(p.detach()) for p in params])
                        )
                        self._before_step.append((params, weights, scale))

    def after_optimizer_step(self, optimizer, step: int) -> None:
        """Strict mode: write back the unselected rows/columns and their optimizer state."""
        if self._prepared_step != step:
            return
        for snap in self._snapshots:
            restore_group_snapshot(optimizer, snap)
        # step_compensation: W ← W_before + scale · (W − W_before), after strict mode's restore (so the unselected
        # rows/columns, unchanged there, stay unchanged). Written here rather than as a learning-rate change so that
        # it holds in any loop and under any optimizer and schedule the user brings.
        with torch.no_grad():
            for params, before, scale in self._before_step:
                now = torch.stack([local(p.detach()) for p in params])
                now.sub_(before).mul_(scale).add_(before)
                torch._foreach_copy_([local(p) for p in params], list(now.unbind(0)))
        self._before_step = []
        self._snapshots = []
        self._prepared_step = None
