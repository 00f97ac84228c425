"""rmlora: RM-LoRA (regularized and masked LoRA) training on top of PEFT, its baselines and diagnostics."""

from .callback import RMLoraCallback
from .config import RMLoraConfig
from .diagnostics import Diagnostics, diagnose, diagnose_adapter, diagnose_model
from .errors import AdapterError, ConfigError, DataError, NoLoraPairsError, RMLoraError
from .pairs import LoraPair, find_lora_pairs
from .rm_lora import RMLora
from .saving import load_adapter, read_adapter, save_adapter
from .trainer import RMLoraTrainer

__version__ = "0.1.0"

__all__ = [
    "RMLora",
    "RMLoraCallback",
    "RMLoraConfig",
    "RMLoraTrainer",
    "Diagnostics",
    "diagnose",
    "diagnose_adapter",
    "diagnose_model",
    "find_lora_pairs",
    "LoraPair",
    "read_adapter",
    "load_adapter",
    "save_adapter",
    "RMLoraError",
    "ConfigError",
    "DataError",
    "AdapterError",
    "NoLoraPairsError",
]
