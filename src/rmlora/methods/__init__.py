"""The training methods: one TrainingMethod subclass per method (PEFT's `tuners/<name>/` idea).

base (TrainingMethod, the no-op hooks and the versioned state) → lora (LoraArguments, the four LoRA
variants) → full, adalora, sora/ → settings (MethodSettings) → registry (prepare_model,
build_training_method); pairs reads any adapted model's ΔW factors; param_counts is "# T / I params".
"""

from rmlora.methods.adalora import AdaLoraArguments, AdaLoraMethod
from rmlora.methods.base import TrainingMethod
from rmlora.methods.full import FullFineTuning
from rmlora.methods.lora import LoraArguments, LoraMethod
from rmlora.methods.pairs import delta_weight_pairs
from rmlora.methods.registry import METHOD_CLASSES, build_training_method, method_class, prepare_model
from rmlora.methods.settings import MethodSettings
from rmlora.methods.sora import SoraArguments, SoraMethod

__all__ = [
    "METHOD_CLASSES",
    "AdaLoraArguments",
    "AdaLoraMethod",
    "FullFineTuning",
    "LoraArguments",
    "LoraMethod",
    "MethodSettings",
    "SoraArguments",
    "SoraMethod",
    "TrainingMethod",
    "build_training_method",
    "delta_weight_pairs",
    "method_class",
    "prepare_model",
]
