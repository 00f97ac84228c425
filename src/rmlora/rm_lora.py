"""RMLora: the method attached to a PEFT LoRA model — penalty for the loss, masks around the step.

    rm = RMLora(peft_model, RMLoraConfig(method="rm-lora", r_hat=0.5, reg_weight=0.1))
    loss = task_loss + rm.penalty()
    loss.backward()
    rm.before_optimizer_step(optimizer, step)   # masks the gradients (and snapshots, in strict mode)
    optimizer.step()
    rm.after_optimizer_step(optimizer, step)    # strict mode: restores the unselected directions
    optimizer.zero_grad()

Only the LoRA matrices of the active adapter are touched; heads and `modules_to_save` train normally.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import RMLoraConfig
from .directions import STREAM_A, STREAM_B, direction_mask, module_key, select_directions
from .errors import ConfigError
from .masking import Snapshot, expand_masks, mask_gradients, restore_snapshot, take_snapshot
from .pairs import LoraPair, PairGroup, group_pairs, require_lora_pairs
from .penalty import add_penalty_gradient, orthogonality_penalty

STATE_VERSION = 1


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
        for g in self.groups:  # every pair of a group shares R, but check names for the error message
            for p in g.pairs:
                self.config.r_hat_for(p.rank, p.name)
        self._keys = [
            torch.tensor([module_key(p.name) for p in g.pairs], dtype=torch.int64, device=g.pairs[0].A.device)
            for g in self.groups
        ]
        self._prepared_step: int | None = None
        self._snapshots: list[Snapshot] = []

    # -- penalty -------------------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """λ · Reg(A, B) over all pairs, a float32 scalar; a constant 0 for lora / gm-lora."""
        cfg = self.config
        if not cfg.uses_penalty:
            return torch.zeros((), dtype=torch.float32, device=self.pairs[0].A.device)
        return orthogonality_penalty(self.groups, cfg.reg_form, cfg.reg_reduction, cfg.reg_weight)

    def add_penalty_gradient(self) -> None:
        """Add the penalty's gradient to the LoRA .grad in closed form (for RMLoraCallback)."""
        cfg = self.config
        if cfg.uses_penalty:
            add_penalty_gradient(self.groups, cfg.reg_form, cfg.reg_reduction, cfg.reg_weight)

    # -- directions ------------------------------------------------------------------------------------
    def _group_directions(self, gi: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        group, keys, r_hat = self.groups[gi], self._keys[gi], self._r_hat[gi]
        a_idx = select_directions(keys, group.rank, r_hat, self.config.seed, step, STREAM_A)
        if self.config.mask_sampling == "shared":
            return a_idx, a_idx
        return a_idx, select_directions(keys, group.rank, r_hat, self.config.seed, step, STREAM_B)

    def directions(self, step: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{module name: (rows of A, columns of B)} selected at optimizer step `step` (sorted, on CPU)."""
        out = {}
        for gi, group in enumerate(self.groups):
            a_idx, b_idx = self._group_directions(gi, step)
            for k, pair in enumerate(group.pairs):
                out[pair.name] = (a_idx[k].cpu(), b_idx[k].cpu())
        return out

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
        if not self.masks_step(step):
            return
        strict = self.config.mask_mode == "strict"
        for gi, group in enumerate(self.groups):
            a_idx, b_idx = self._group_directions(gi, step)
            dtype = group.pairs[0].A.dtype
            a_mask = direction_mask(a_idx, group.rank, dtype)
            b_mask = a_mask if b_idx is a_idx else direction_mask(b_idx, group.rank, dtype)
            ma, mb = expand_masks(group, a_mask, b_mask)
            params, masks = group.A + group.B, ma + mb
            mask_gradients(params, masks)
            if strict:
                self._snapshots.append(take_snapshot(optimizer, params, masks))

    def after_optimizer_step(self, optimizer, step: int) -> None:
        """Strict mode: write back the unselected rows/columns and their optimizer state."""
        if self._prepared_step != step:
            return
        for snap in self._snapshots:
            restore_snapshot(optimizer, snap)
        self._snapshots = []
        self._prepared_step = None

    # -- the rest of the TrainingMethod interface (rmlora.methods) ---------------------------------------
    def excluded_parameters(self) -> list:
        return []

    def param_counts(self) -> dict[str, int]:
        """Trainable = kept at inference: LoRA matrices plus heads / modules_to_save."""
        n = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return {"trainable": n, "inference": n}

    def export(self, output_dir: str) -> None:
        from .saving import save_adapter

        save_adapter(self.model, output_dir, self)

    # -- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything a resumed run needs: the directions are a pure function of (seed, step, module)."""
        return {"version": STATE_VERSION, "config": self.config.to_dict(), "modules": [p.name for p in self.pairs]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"unsupported RMLora state version {state.get('version')!r} (expected {STATE_VERSION})")
        self.config = RMLoraConfig.from_dict(state["config"])
        names = [p.name for p in self.pairs]
        if state.get("modules") and state["modules"] != names:
            raise ConfigError(
                "the checkpoint's LoRA modules differ from this model's: resume with the same model and target_modules"
            )
        self.refresh()
