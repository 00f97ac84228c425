"""Adapters on disk: PEFT's own format, plus `rmlora_config.json` beside it (rmlora.io.state).

An RM-LoRA adapter is a plain LoRA adapter (adapter_config.json + adapter_model.safetensors) that
`PeftModel.from_pretrained` loads as it is; the RM-LoRA settings that trained it sit beside it.
Reading is done with safetensors and json only, never by unpickling a file from a user's folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import warnings

import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from peft.utils.other import get_pattern_key
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rmlora.errors import AdapterError
from rmlora.io.state import write_rmlora_state

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel's path to the wrapped model's modules, in state dicts and models


# PEFT's inject_adapter checks every rank_pattern key against the adapted module names and warns about the rest
# as "ignored"; AdaLoRA keys its rank_pattern by `<module>.lora_E`, which its own loader applies afterwards
# (AdaLoraModel.resize_modules_by_rank_pattern), so every pruned AdaLoRA adapter loads with this false warning.
# This matches it only when every key it lists is such a `.lora_E` key.
ADALORA_PATTERN_WARNING = (
    r"The following rank_pattern keys did not match any targeted module and were ignored: "
    r"\[('[^']+\.lora_E'(, )?)+\]\.$"
)


@contextlib.contextmanager
def adalora_pattern_warning_ignored():
    """A context in which PEFT's false "rank_pattern keys ... were ignored" warning for AdaLoRA is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ADALORA_PATTERN_WARNING, category=RuntimeWarning)
        yield


def relative_module_name(name: str) -> str:
    """A module path inside the base model: PEFT's `base_model.model.` prefix removed (rank_pattern, target keys)."""
    return name.removeprefix(PEFT_PREFIX)


def save_adapter(model, output_dir: str, rmlora=None, state_dict=None) -> None:
    """Save the PEFT adapter (safetensors) and, with `rmlora`, the settings that trained it.

    `state_dict`, if given, is the model state PEFT takes the adapter's tensors from (default: the model's).
    """
    model.save_pretrained(output_dir, safe_serialization=True, state_dict=state_dict)
    if rmlora is not None:
        write_rmlora_state(output_dir, rmlora)


def save_converted_adapter(model, output_dir: str, initial_state: dict[str, torch.Tensor], rmlora=None) -> None:
    """Save an adapter trained from PiSSA / OLoRA so that it loads on the *original* base model.

    Those inits move s·B₀A₀ out of the base weight; PEFT's `save_pretrained(...,
    path_initial_model_for_weight_conversion=...)` rewrites the trained (A, B) as the plain LoRA adapter
    A' = [A; A₀], B' = [B, −B₀] of rank 2R (alpha doubled, the scaling unchanged), whose ΔW = s·(BA − B₀A₀).
    `initial_state` is the adapter's state dict as it was at initialisation (PEFT's keys).
    """
    was_training = model.training  # PEFT's conversion loads the initial adapter, which puts the model in eval mode
    with tempfile.TemporaryDirectory() as tmp:
        initial_dir = os.path.join(tmp, "initial")
        os.makedirs(initial_dir)
        initial = {k: v.detach().contiguous() for k, v in initial_state.items()}
        save_file(initial, os.path.join(initial_dir, ADAPTER_WEIGHTS_NAME))
        model.peft_config[model.active_adapter].save_pretrained(initial_dir)  # PEFT resets its init to True
        with warnings.catch_warnings():
            # loading the initial adapter beside the trained one is what the conversion is for
            warnings.filterwarnings("ignore", message=".*changes the base weights of the model")
            model.save_pretrained(
                output_dir, safe_serialization=True, path_initial_model_for_weight_conversion=initial_dir
            )
    model.train(was_training)
    # PEFT's conversion (LoraModel.subtract_mutated_init) writes lora_A / lora_B only: the heads (modules_to_save)
    # and DoRA's magnitudes, which the conversion does not change, are put back from the trained state
    weights_path = os.path.join(output_dir, ADAPTER_WEIGHTS_NAME)
    converted = load_file(weights_path)
    dropped = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items() if k not in converted}
    if dropped:
        save_file({**converted, **dropped}, weights_path, metadata={"format": "pt"})
    if rmlora is not None:
        write_rmlora_state(output_dir, rmlora)


def read_adapter(adapter_dir: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config, tensors) of a PEFT adapter folder, with one-line errors for what is wrong."""
    if not os.path.isdir(adapter_dir):
        raise AdapterError(
            f"adapter directory {adapter_dir!r} does not exist: pass the folder that save_pretrained wrote"
        )
    config_path = os.path.join(adapter_dir, ADAPTER_CONFIG_NAME)
    weights_path = os.path.join(adapter_dir, ADAPTER_WEIGHTS_NAME)
    for path in (config_path, weights_path):
        if not os.path.exists(path):
            hint = ""
            if path == weights_path and os.path.exists(os.path.join(adapter_dir, "adapter_model.bin")):
                hint = (
                    " (only adapter_model.bin is there: re-save it with safe_serialization=True; "
                    "pickled files are not loaded)"
                )
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


_KEY = re.compile(
    rf"^(?:{re.escape(PEFT_PREFIX)})?(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$"
)


def adapter_pairs(
    config: dict, tensors: dict[str, torch.Tensor]
) -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """(module, A, B, scaling) for every LoRA pair stored in a PEFT adapter file (read_adapter's output).

    The module is its path inside the base model; the scaling is alpha / r (alpha / √r with rsLoRA), alpha
    and r per module by PEFT's alpha_pattern key rule (get_pattern_key).
    """
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m:
            side = "A" if m.group("kind").endswith("A") else "B"
            found.setdefault(m.group("module"), {})[side] = tensor
    out = []
    alpha_pattern = config.get("alpha_pattern") or {}
    for module, sides in found.items():
        if set(sides) != {"A", "B"}:
            raise AdapterError(
                f"adapter has lora_{next(iter(sides))} but not its partner for {module}: the file is incomplete"
            )
        A, B = sides["A"], sides["B"]
        r = int(A.shape[0])
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config.get("lora_alpha", r))
        if r == 0:  # an AdaLoRA module pruned to rank 0, which PEFT saves as an empty pair: ΔW = 0
            scaling = 0.0
        else:
            scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        out.append((module, A, B, float(scaling)))
    if not out:
        raise AdapterError("the adapter file holds no lora_A / lora_B tensors: is it a LoRA adapter?")
    return out


def load_adapter(base_model, adapter_dir: str, is_trainable: bool = False):
    """`PeftModel.from_pretrained` with one-line errors for a folder that is not an adapter or does not fit.

    The folder is read with safetensors first (read_adapter), so nothing pickled is ever loaded, and every
    lora_A / lora_B shape is checked against the base model's layer before PEFT builds anything.
    """
    config, tensors = read_adapter(adapter_dir)
    modules = dict(base_model.named_modules())
    for module, A, B, _ in adapter_pairs(config, tensors):
        layer = modules.get(module)
        if layer is None:
            raise AdapterError(
                f"the adapter adapts {module}, which this base model does not have: "
                "load it on the model it was trained on"
            )
        weight = getattr(layer, "weight", None)
        if weight is None or weight.dim() != 2:
            continue
        d_out, d_in = weight.shape[::-1] if type(layer).__name__ == "Conv1D" else weight.shape
        if A.shape[1] != d_in or B.shape[0] != d_out:
            raise AdapterError(
                f"adapter shapes for {module} (A {tuple(A.shape)}, B {tuple(B.shape)}) do not fit the base layer "
                f"({d_out} x {d_in}): load it on the model it was trained on"
            )
    with adalora_pattern_warning_ignored():
        return PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=is_trainable)
