"""Adapters on disk: PEFT's own format, plus `rmlora_config.json` beside it.

An RM-LoRA adapter is a plain LoRA adapter (adapter_config.json + adapter_model.safetensors) that
`PeftModel.from_pretrained` loads as it is; the RM-LoRA settings that trained it sit beside it.
Reading is done with safetensors and json only, never by unpickling a file from a user's folder.
"""

from __future__ import annotations

import json
import os

import torch

from . import atomic
from .errors import AdapterError

RMLORA_CONFIG_NAME = "rmlora_config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


def write_rmlora_state(output_dir: str, rmlora) -> None:
    atomic.write_json(os.path.join(output_dir, RMLORA_CONFIG_NAME), rmlora.state_dict())


def read_rmlora_state(adapter_dir: str) -> dict:
    path = os.path.join(adapter_dir, RMLORA_CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path} is not valid JSON ({e}); delete it or re-save the adapter") from None


def save_adapter(model, output_dir: str, rmlora=None) -> None:
    """Save the PEFT adapter (safetensors) and, with `rmlora`, the settings that trained it."""
    model.save_pretrained(output_dir, safe_serialization=True)
    if rmlora is not None:
        write_rmlora_state(output_dir, rmlora)


def read_adapter(adapter_dir: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config, tensors) of a PEFT adapter folder, with one-line errors for what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isdir(adapter_dir):
        raise AdapterError(f"adapter directory {adapter_dir!r} does not exist: pass the folder that save_pretrained wrote")
    config_path = os.path.join(adapter_dir, ADAPTER_CONFIG_NAME)
    weights_path = os.path.join(adapter_dir, ADAPTER_WEIGHTS_NAME)
    for path in (config_path, weights_path):
        if not os.path.exists(path):
            hint = ""
            if path == weights_path and os.path.exists(os.path.join(adapter_dir, "adapter_model.bin")):
                hint = " (only adapter_model.bin is there: re-save it with safe_serialization=True; pickled files are not loaded)"
            raise AdapterError(f"{adapter_dir!r} has no {os.path.basename(path)}: not a PEFT adapter folder{hint}")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise AdapterError(f"{config_path} is not valid JSON ({e}): re-save the adapter") from None
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{weights_path} is not a readable safetensors file ({e}): re-save the adapter") from None
    return config, tensors
