"""The display names of the methods, as the paper's tables and figures write them."""

from __future__ import annotations

METHOD_LABELS = {
    "full": "Full FT",
    "lora": "LoRA",
    "adalora": "AdaLoRA",
    "sora": "SoRA",
    "r-lora": "R-LoRA",
    "gm-lora": "GM-LoRA",
    "rm-lora": "RM-LoRA",
}


def method_name(method: str) -> str:
    """ "RM-LoRA" for "rm-lora"; an unknown method keeps its own name."""
    return METHOD_LABELS.get(method, method)
