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


# PEFT's LoRA variants as their papers name them (LoraArguments.variant): "PiSSA", "DoRA", "LoRA+ ×16"
INIT_LABELS = {"false": "random init", "gaussian": "Gaussian init", "orthogonal": "orthogonal init"}
INIT_LABELS.update({"olora": "OLoRA", "pissa": "PiSSA", "mica": "MiCA"})


def variant_name(variant: dict | None) -> str:
    """ "PiSSA (2 iter.) + DoRA + LoRA+ ×16" for {init_lora_weights: pissa_niter_2, use_dora, loraplus_lr_ratio:
    16}; "" for plain LoRA (None or {}): the report names a row after its method and this."""
    parts = []
    init = str((variant or {}).get("init_lora_weights", "true")).lower()
    if init.startswith("pissa_niter_"):
        parts.append(f"PiSSA ({init.removeprefix('pissa_niter_')} iter.)")
    elif init != "true":
        parts.append(INIT_LABELS.get(init, init))
    if (variant or {}).get("use_dora"):
        parts.append("DoRA")
    if (variant or {}).get("use_rslora"):
        parts.append("rsLoRA")
    ratio = (variant or {}).get("loraplus_lr_ratio")
    if ratio is not None:
        parts.append(f"LoRA+ ×{float(ratio):g}")
    return " + ".join(parts)
