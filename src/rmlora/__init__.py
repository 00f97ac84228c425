"""rmlora: RM-LoRA (regularized and masked LoRA) training on top of PEFT, its baselines and diagnostics."""

from rmlora.analysis.diagnostics import Diagnostics, diagnose, diagnose_adapter, diagnose_model
from rmlora.config import RMLoraConfig
from rmlora.core.pairs import LoraPair, find_lora_pairs
from rmlora.errors import AdapterError, ConfigError, DataError, NoLoraPairsError, RMLoraError
from rmlora.io.adapters import load_adapter, read_adapter, save_adapter
from rmlora.methods.lora import LoraMethod as RMLora  # core.rm_lora.RMLora plus counts, export and state
from rmlora.training.callback import RMLoraCallback
from rmlora.training.optimizer import RMLoraOptimizer, create_rmlora_optimizer
from rmlora.training.trainer import RMLoraTrainer

__version__ = "0.1.0"

__all__ = [
    "RMLora",
    "RMLoraCallback",
    "RMLoraConfig",
    "RMLoraOptimizer",
    "RMLoraTrainer",
    "create_rmlora_optimizer",
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
