"""TrainingMethod: the hooks one training loop calls, whatever the method (PEFT's `tuners/<name>/` idea).

    penalty()                               -> scalar added to the loss (default 0)
    add_penalty_gradient()                  -> the same, added to .grad in closed form (callback path)
    before_optimizer_step(optimizer, step)  -> masks / snapshots before optimizer.step()
    after_optimizer_step(optimizer, step)   -> restores, gate updates, rank allocation after it
    excluded_parameters()                   -> parameters the main optimizer must not own (SoRA's gates)
    uses_penalty                            -> whether penalty() is nonzero (default config.uses_penalty)
    set_total_steps(n)                      -> the run's optimizer steps (RMLoraTrainer calls it at train begin)
    export_on_save                          -> whether Trainer.save_model writes export() instead of the raw model
    checkpoint_save()                       -> a context a checkpoint is saved inside (AdaLoRA keeps every triplet)
    param_counts()                          -> {"trainable": T, "inference": I} ("# T / I params")
    export(output_dir)                      -> the final adapter (or model) in a format vanilla PEFT loads
    state_dict() / load_state_dict()        -> what a checkpoint must carry (versioned here, once)

Every default is a no-op; a method overrides what it does. Its knobs arrive typed, as MethodSettings
(rmlora.methods.settings), through `prepare` and `from_settings`.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
from torch import nn

from rmlora.config import RMLoraConfig
from rmlora.errors import ConfigError
from rmlora.methods.param_counts import trainable_count


class TrainingMethod:
    """Base class of every method; subclasses set `methods`, `state_version` and override the hooks they use."""

    methods: ClassVar[tuple[str, ...]] = ()  # RMLoraConfig.method values this class trains
    state_version: ClassVar[int] = 1
    export_on_save: ClassVar[bool] = False

    def __init__(self, model: nn.Module, config: RMLoraConfig):
        self.model = model
        self.config = config

    # -- building ---------------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, base_model: nn.Module, lora, task_type, settings) -> nn.Module:
        """Wrap `base_model` for this method (LoraArguments `lora`, MethodSettings `settings`)."""
        raise NotImplementedError(f"{cls.__name__} does not wrap models")

    @classmethod
    def from_settings(cls, model: nn.Module, config: RMLoraConfig, settings) -> TrainingMethod:
        """The method on a model made by `prepare`, with its knobs from MethodSettings `settings`."""
        return cls(model, config)

    # -- hooks (no-ops by default) ------------------------------------------------------------------------
    @property
    def uses_penalty(self) -> bool:
        return self.config.uses_penalty

    def penalty(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float32, device=next(self.model.parameters()).device)

    def add_penalty_gradient(self) -> None:
        pass

    def before_optimizer_step(self, optimizer, step: int) -> None:
        pass

    def after_optimizer_step(self, optimizer, step: int) -> None:
        pass

    def excluded_parameters(self) -> list[nn.Parameter]:
        return []

    def set_total_steps(self, total_steps: int) -> None:
        pass

    def checkpoint_save(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    # -- counts and export ----------------------------------------------------------------------------------
    def param_counts(self) -> dict[str, int]:
        """T = I = every trainable parameter (the LoRA variants); the baselines override it."""
        n = trainable_count(self.model)
        return {"trainable": n, "inference": n}

    def export(self, output_dir: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no export")

    # -- checkpoints ------------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """What the method adds to its state beyond version and config (tensors allowed)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {"version": self.state_version, "config": self.config.to_dict(), **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != self.state_version:
            raise ConfigError(
                f"unsupported {type(self).__name__} state version {state.get('version')!r} "
                f"(expected {self.state_version}): resume with the rmlora version that wrote the checkpoint"
            )
        self.config = RMLoraConfig.from_dict(state["config"])
        self.load_extra_state(state)
