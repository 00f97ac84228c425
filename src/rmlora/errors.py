"""Typed exceptions. The CLI prints their message as one line (no traceback); the API raises them.

Each message names the problem and the fix.
"""


class RMLoraError(ValueError):
    """Base class of every error rmlora raises for bad input."""


class ConfigError(RMLoraError):
    """An invalid setting (method, r_hat, reg_weight, ...)."""


class NoLoraPairsError(RMLoraError):
    """The model has no LoRA A/B pairs for the active adapter."""


class DataError(RMLoraError):
    """A dataset file or column that cannot be used."""


class AdapterError(RMLoraError):
    """An adapter directory that is missing files, corrupt, or does not fit the base model."""


class NonFiniteLossError(RMLoraError):
    """The training loss became NaN or Inf."""


class AssetError(RMLoraError):
    """A pre-trained asset that cannot be found or converted (`rmlora assets`)."""
