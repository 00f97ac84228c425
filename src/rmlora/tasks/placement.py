"""Where LoRA goes: the task head, the attention layers, or every linear layer of the backbone.

The head is every linear layer outside the backbone (`model.base_model_prefix`: `bert`, `vit`,
`transformer`, `model`, ...): `classifier` of BERT/ViT/DINOv2, `score` of GPT-2/Llama, `qa_outputs` of
the QA models, DeBERTa's `pooler.dense` + `classifier`. Module names are returned in full so that PEFT
matches exactly those layers (suffixes such as `output.dense` are ambiguous in BERT).
"""

from __future__ import annotations

import re

from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers.pytorch_utils import Conv1D

from rmlora.errors import ConfigError

_ATTENTION = re.compile(r"(^|\.)(attn|attention|self_attn|self_attention)(\.|$)")


def _is_linear(module: nn.Module) -> bool:

    return isinstance(module, (nn.Linear, Conv1D))


def linear_modules(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if name and _is_linear(m)]


def head_modules(model: nn.Module) -> list[str]:
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not hasattr(model, prefix):
        raise ConfigError(
            f"{type(model).__name__} has no separate backbone: pass --target_modules instead of --lora_placement"
        )
    return [n for n in linear_modules(model) if n != prefix and not n.startswith(prefix + ".")]


def backbone_modules(model: nn.Module, attention_only: bool = False) -> list[str]:
    heads = set(head_modules(model))
    names = [n for n in linear_modules(model) if n not in heads]
    if attention_only:
        names = [n for n in names if _ATTENTION.search(n)]
    return names


def placement_modules(model: nn.Module, placement: str) -> tuple[list[str], list[str]]:
    """(target_modules, modules_to_save) of a placement: LoRA targets, and the head trained fully beside them."""
    heads = head_modules(model)
    if placement == "head":
        targets, save = heads, []
    elif placement in ("attention", "all"):
        targets, save = backbone_modules(model, attention_only=placement == "attention"), heads
    else:
        raise ConfigError(f"unknown --lora_placement {placement!r}: choose head, attention or all")
    if not targets:
        raise ConfigError(
            f"--lora_placement {placement} finds no linear layer in {type(model).__name__}: pass --target_modules"
        )
    return targets, save


def has_peft_default(model: nn.Module) -> bool:
    """Whether PEFT's per-architecture default targets exist in this model.

    The table can lag behind transformers' module names (transformers 5 renamed ViT's query/value to
    q_proj/v_proj while PEFT still lists query/value), so the names are checked, not only the model type.
    """

    defaults = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(getattr(model.config, "model_type", None))
    if not defaults:
        return False
    names = linear_modules(model)
    return all(any(n == t or n.endswith("." + t) for n in names) for t in defaults)
