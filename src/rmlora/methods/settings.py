"""MethodSettings: the knobs a method takes beyond RMLoraConfig and LoraArguments, typed and checked.

One mapping travels to `prepare_model`, `build_training_method` and RMLoraTrainer (`method_settings`);
each method reads the fields it needs. A key that is not a field (a misspelt knob) is a ConfigError that
names the valid ones, and so is a misspelt field inside a method's own arguments given as a dict.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field

from rmlora.errors import ConfigError
from rmlora.methods.adalora import AdaLoraArguments
from rmlora.methods.sora import SoraArguments


@dataclass
class MethodSettings:
    """What the methods take beyond RMLoraConfig and LoraArguments; each reads the fields it needs."""

    total_steps: int | None = field(
        default=None, metadata={"help": "The run's optimizer steps (AdaLoRA's budget, SoRA's ξ stages)."}
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "The main learning rate (SoRA's gates default to it)."}
    )
    adalora: AdaLoraArguments | None = field(default=None, metadata={"help": "AdaLoRA's budget knobs."})
    sora: SoraArguments | None = field(default=None, metadata={"help": "SoRA's gate knobs."})

    @classmethod
    def from_mapping(cls, settings: Mapping | MethodSettings | None) -> MethodSettings:
        """MethodSettings from {name: value}; method arguments may be given as their dataclass or as a dict."""
        if isinstance(settings, MethodSettings):
            return settings
        settings = dict(settings or {})
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in settings:
            if key not in valid:
                raise ConfigError(
                    f"unknown method setting {key!r}{_suggestion(key, valid)}: the settings are {', '.join(valid)}"
                )
        values = {}
        for key, value in settings.items():
            kind = _ARGUMENT_TYPES.get(key)
            values[key] = _arguments(kind, key, value) if kind is not None else _number(key, value)
        return cls(**values)


_ARGUMENT_TYPES = {"adalora": AdaLoraArguments, "sora": SoraArguments}  # the fields holding a method's arguments


def _suggestion(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _arguments(kind: type, key: str, value):
    if value is None or isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        valid = [f.name for f in dataclasses.fields(kind)]
        for name in value:
            if name not in valid:
                raise ConfigError(
                    f"unknown {kind.__name__} field {name!r}{_suggestion(name, valid)} in the {key!r} setting: "
                    f"the fields are {', '.join(valid)}"
                )
        return kind(**value)
    raise ConfigError(
        f"the {key!r} setting must be a {kind.__name__} (or a dict of its fields), got {type(value).__name__}"
    )


def _number(key: str, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"the {key!r} setting must be a number, got {value!r}")
    return int(value) if key == "total_steps" else float(value)
