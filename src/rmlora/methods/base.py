"""The seven methods of the paper behind one interface, so that one Trainer path trains them all.

`prepare_model(base_model, config, lora)` wraps a base model for a method (a PEFT LoRA model for the
LoRA variants, PEFT AdaLoRA, SoRA's gated LoRA, or the model itself for full fine-tuning), and
`build_training_method(model, config)` returns the object whose hooks the training loop calls:

    penalty()                               -> scalar added to the loss
    add_penalty_gradient()                  -> the same, added to .grad in closed form (callback path)
    before_optimizer_step(optimizer, step)  -> masks / snapshots before optimizer.step()
    after_optimizer_step(optimizer, step)   -> restores, gate updates, rank allocation after it
    excluded_parameters()                   -> parameters the main optimizer must not own (SoRA's gates)
    param_counts()                          -> {"trainable": T, "inference": I} ("# T / I params")
    export(output_dir)                      -> the final adapter (or model) in a format vanilla PEFT loads
    state_dict() / load_state_dict()        -> what a checkpoint must carry

Optional: `uses_penalty` (whether penalty() is nonzero; default config.uses_penalty), `set_total_steps(n)`
(the run's optimizer steps, called by RMLoraTrainer at train begin), `export_on_save` (Trainer.save_model
writes export() instead of the raw model). How each method counts "# T / I": rmlora.methods.param_counts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from rmlora.config import RMLoraConfig
from rmlora.errors import ConfigError


@dataclass
class LoraArguments:
    """Where the adapter goes and its size (PEFT's LoraConfig fields, under run_glue-style names)."""

    lora_r: int = field(default=8, metadata={"help": "LoRA rank R of every adapted module."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; ΔW is scaled by alpha / R."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input."})
    target_modules: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated module names (or suffixes) to adapt, or 'all-linear'. Default: PEFT's "
            "per-architecture default (attention projections)."
        },
    )
    modules_to_save: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated modules trained fully and saved with the adapter (e.g. the classifier head)."
        },
    )
    use_rslora: bool = field(
        default=False, metadata={"help": "Scale by alpha / sqrt(R) (rsLoRA) instead of alpha / R."}
    )

    def __post_init__(self):
        if self.lora_r < 1:
            raise ConfigError(f"lora_r must be at least 1, got {self.lora_r}")

    @staticmethod
    def split(value: str | list[str] | None) -> list[str] | str | None:
        if value is None or isinstance(value, list):
            return value
        if value.strip() == "all-linear":
            return "all-linear"
        return [v.strip() for v in value.split(",") if v.strip()]

    def lora_config(self, task_type=None, **overrides):
        from peft import LoraConfig

        kwargs = dict(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.split(self.target_modules),
            modules_to_save=self.split(self.modules_to_save),
            use_rslora=self.use_rslora,
            task_type=task_type,
        )
        kwargs.update(overrides)
        return LoraConfig(**kwargs)


class TrainingMethod(Protocol):
    config: RMLoraConfig

    def penalty(self) -> torch.Tensor: ...
    def add_penalty_gradient(self) -> None: ...
    def before_optimizer_step(self, optimizer, step: int) -> None: ...
    def after_optimizer_step(self, optimizer, step: int) -> None: ...
    def excluded_parameters(self) -> list[nn.Parameter]: ...
    def param_counts(self) -> dict[str, int]: ...
    def export(self, output_dir: str) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class FullFineTuning:
    """Every parameter trainable, no adapter, nothing around the step."""

    def __init__(self, model: nn.Module, config: RMLoraConfig):
        self.model, self.config = model, config
        self._device = next(model.parameters()).device

    def penalty(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float32, device=self._device)

    def add_penalty_gradient(self) -> None:
        pass

    def before_optimizer_step(self, optimizer, step: int) -> None:
        pass

    def after_optimizer_step(self, optimizer, step: int) -> None:
        pass

    def excluded_parameters(self) -> list[nn.Parameter]:
        return []

    def param_counts(self) -> dict[str, int]:
        """T: every trainable parameter; I: every parameter of the model (Table 1's 184M / 184M)."""
        from rmlora.methods.param_counts import total_count, trainable_count

        return {"trainable": trainable_count(self.model), "inference": total_count(self.model)}

    def export(self, output_dir: str) -> None:
        self.model.save_pretrained(output_dir, safe_serialization=True)

    def state_dict(self) -> dict:
        return {"version": 1, "config": self.config.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.config = RMLoraConfig.from_dict(state["config"])


def linear_layer_names(model: nn.Module) -> list[str]:
    """Distinct last names of the layers LoRA can adapt (Linear, Conv1D, Conv2d, Embedding)."""
    kinds = (nn.Linear, nn.Conv2d, nn.Embedding)
    names = []
    for name, module in model.named_modules():
        if name and (isinstance(module, kinds) or type(module).__name__ == "Conv1D"):
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return names


class targets_checked:
    """Turn PEFT's "target modules not found" error into a one-line ConfigError that lists the choices."""

    def __init__(self, model: nn.Module, lora: LoraArguments):
        self.model, self.lora = model, lora

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and isinstance(exc, ValueError) and "target" in str(exc).lower():
            choices = ", ".join(linear_layer_names(self.model)[:20])
            raise ConfigError(
                f"target_modules {self.lora.target_modules!r} match no layer of this model: choose among {choices} "
                "(comma-separated), or 'all-linear'"
            ) from None
        return False


def prepare_model(
    base_model: nn.Module, config: RMLoraConfig, lora: LoraArguments | None = None, task_type=None, **settings
) -> nn.Module:
    """Wrap `base_model` for `config.method`; `settings` carries the baselines' own knobs."""
    with warnings.catch_warnings():
        # PEFT's PeftModel.__init__ reads transformers' deprecated `is_gradient_checkpointing` alias on every wrap
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return _prepare_model(base_model, config, lora, task_type, **settings)


def _prepare_model(base_model: nn.Module, config: RMLoraConfig, lora, task_type, **settings) -> nn.Module:
    lora = lora or LoraArguments()
    if config.method == "full":
        for p in base_model.parameters():
            p.requires_grad_(True)
        return base_model
    if config.is_lora_variant:
        from peft import get_peft_model

        with targets_checked(base_model, lora):
            return get_peft_model(base_model, lora.lora_config(task_type=task_type))
    if config.method == "adalora":
        from rmlora.methods.adalora import prepare_adalora_model

        return prepare_adalora_model(base_model, lora, task_type=task_type, **settings)
    if config.method == "sora":
        from rmlora.methods.sora import prepare_sora_model

        return prepare_sora_model(base_model, lora, task_type=task_type, **settings)
    raise ConfigError(f"unknown method {config.method!r}")


def build_training_method(model: nn.Module, config: RMLoraConfig | None = None, **settings) -> TrainingMethod:
    """The hook object for `config.method` on a model made by `prepare_model`."""
    config = config if config is not None else RMLoraConfig()
    if config.is_lora_variant:
        from rmlora.core.rm_lora import RMLora

        return RMLora(model, config)
    if config.method == "full":
        return FullFineTuning(model, config)
    if config.method == "adalora":
        from rmlora.methods.adalora import AdaLoraMethod

        return AdaLoraMethod(model, config, **settings)
    if config.method == "sora":
        from rmlora.methods.sora import SoraMethod

        return SoraMethod(model, config, **settings)
    raise ConfigError(f"unknown method {config.method!r}")
