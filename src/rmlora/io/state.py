"""A training method's state on disk: `rmlora_config.json` (JSON) and `rmlora_state.safetensors` (its tensors).

Written beside PEFT's adapter files by every checkpoint and export; read with json and safetensors only,
never by unpickling a file from a user's folder.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rmlora.errors import AdapterError
from rmlora.io import atomic

RMLORA_CONFIG_NAME = "rmlora_config.json"
RMLORA_TENSORS_NAME = "rmlora_state.safetensors"  # tensors of a method's state (never pickled)
TENSOR_REF = "__tensor__"


def _split_tensors(obj, tensors: dict):
    """Replace every tensor in a nested dict/list by {"__tensor__": key}, collecting it in `tensors`."""
    if torch.is_tensor(obj):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {TENSOR_REF: key}
    if isinstance(obj, dict):
        return {k: _split_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split_tensors(v, tensors) for v in obj]
    return obj


def _join_tensors(obj, tensors: dict):
    if isinstance(obj, dict):
        if set(obj) == {TENSOR_REF}:
            return tensors[obj[TENSOR_REF]]
        return {k: _join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    return obj


def write_rmlora_state(output_dir: str, rmlora) -> None:
    """The method's state_dict() as JSON; its tensors (SoRA's gate optimizer, AdaLoRA's importance) as safetensors.

    `rmlora` is a TrainingMethod (rmlora.methods.base); the run's "# T / I params" (param_counts) are
    recorded beside its state.
    """
    tensors: dict[str, torch.Tensor] = {}
    state = _split_tensors(rmlora.state_dict(), tensors)
    if "param_counts" not in state:
        state["param_counts"] = rmlora.param_counts()
    tensor_path = os.path.join(output_dir, RMLORA_TENSORS_NAME)
    if tensors:
        os.makedirs(output_dir, exist_ok=True)
        tmp = tensor_path + ".tmp"
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, tensor_path)
    elif os.path.exists(tensor_path):
        os.unlink(tensor_path)
    atomic.write_json(os.path.join(output_dir, RMLORA_CONFIG_NAME), state)


def read_rmlora_state(adapter_dir: str) -> dict:
    path = os.path.join(adapter_dir, RMLORA_CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path} is not valid JSON ({e}); delete it or re-save the adapter") from None
    tensor_path = os.path.join(adapter_dir, RMLORA_TENSORS_NAME)
    if os.path.exists(tensor_path):
        try:
            state = _join_tensors(state, load_file(tensor_path))
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            raise AdapterError(f"{tensor_path} does not match {path} ({e}): save the checkpoint again") from None
    return state
