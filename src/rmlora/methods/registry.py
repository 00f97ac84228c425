"""The seven methods of the paper behind one interface: `prepare_model` and `build_training_method`.

    model = prepare_model(base_model, RMLoraConfig(method="sora"), LoraArguments(...), task_type="SEQ_CLS",
                          sora=SoraArguments(...), total_steps=500)
    method = build_training_method(model, RMLoraConfig(method="sora"), sora=SoraArguments(...))

The keyword settings are MethodSettings' fields (rmlora.methods.settings); each method reads those it
needs, and an unknown key is a ConfigError. How each method counts "# T / I": rmlora.methods.param_counts.
"""

from __future__ import annotations

import warnings

from torch import nn

from rmlora.config import RMLoraConfig
from rmlora.errors import ConfigError
from rmlora.methods.adalora import AdaLoraMethod
from rmlora.methods.base import TrainingMethod
from rmlora.methods.full import FullFineTuning
from rmlora.methods.lora import LoraArguments, LoraMethod, check_variants
from rmlora.methods.settings import MethodSettings
from rmlora.methods.sora import SoraMethod

METHOD_CLASSES: tuple[type[TrainingMethod], ...] = (FullFineTuning, LoraMethod, AdaLoraMethod, SoraMethod)


def method_class(method: str) -> type[TrainingMethod]:
    for cls in METHOD_CLASSES:
        if method in cls.methods:
            return cls
    known = ", ".join(m for cls in METHOD_CLASSES for m in cls.methods)
    raise ConfigError(f"unknown method {method!r}: choose one of {known}")


def prepare_model(
    base_model: nn.Module, config: RMLoraConfig, lora: LoraArguments | None = None, task_type=None, **settings
) -> nn.Module:
    """Wrap `base_model` for `config.method`: PEFT LoRA, PEFT AdaLoRA, SoRA's gated LoRA, or itself (full)."""
    parsed = MethodSettings.from_mapping(settings)
    check_variants(config.method, lora or LoraArguments())
    with warnings.catch_warnings():
        # PEFT's PeftModel.__init__ reads transformers' deprecated `is_gradient_checkpointing` alias on every wrap
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return method_class(config.method).prepare(base_model, lora or LoraArguments(), task_type, parsed)


def build_training_method(model: nn.Module, config: RMLoraConfig | None = None, **settings) -> TrainingMethod:
    """The hook object for `config.method` on a model made by `prepare_model`."""
    config = config if config is not None else RMLoraConfig()
    parsed = MethodSettings.from_mapping(settings)
    return method_class(config.method).from_settings(model, config, parsed)
