"""The weight matrices of a checkpoint, read lazily, and the modules LoRA can target in it (for rank-budget).

A transformers model folder is read with safetensors directly (model.safetensors or a sharded index), module
types from a skeleton of the architecture built on the meta device (no weights allocated); anything else (a hub
id, a folder without safetensors) goes through transformers' from_pretrained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import transformers
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModel
from transformers.pytorch_utils import Conv1D

from rmlora.analysis.module_names import in_block, match_names, target_matcher
from rmlora.errors import ConfigError

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"


@dataclass
class CheckpointWeights:
    """The weight matrices of one checkpoint, read on demand, with the modules LoRA can target."""

    source: str
    shapes: dict[str, tuple[int, ...]]  # weight key -> stored shape
    read: Callable[[str], torch.Tensor]
    linear_modules: dict[str, bool]  # module path -> transposed (Conv1D stores d_in x d_out)

    def __post_init__(self) -> None:
        # weight key -> module path; the architecture's paths may differ from the file's keys by a prefix
        matched = match_names([f"{m}.weight" for m in self.linear_modules], self.shapes)
        self.module_of = {key: name[: -len(".weight")] for name, key in matched.items()}

    def transposed(self, key: str) -> bool:
        return self.linear_modules.get(self.module_of.get(key, ""), False)

    def matrix(self, key: str) -> torch.Tensor:
        """The weight as d_out x d_in, float64."""
        w = self.read(key).to(torch.float64)
        return w.T if self.transposed(key) else w


def linear_modules(model: torch.nn.Module) -> dict[str, bool]:
    """{module path: stored transposed} for every nn.Linear and transformers Conv1D of a model."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):
            out[name] = True
        elif isinstance(module, torch.nn.Linear):
            out[name] = False
    return out


def _architecture(config) -> type:
    """The model class config.json names (its `architectures`), or AutoModel when it names none transformers has."""
    arch = (getattr(config, "architectures", None) or [None])[0]
    return (getattr(transformers, arch, None) if arch else None) or AutoModel


def _safetensors_files(path: str) -> list[str] | None:
    single = os.path.join(path, SAFETENSORS_NAME)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(path, SAFETENSORS_INDEX_NAME)
    if not os.path.isfile(index):
        return None
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ConfigError(f"{index} is not a safetensors index ({e}): re-save the model with save_pretrained") from None
    files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ConfigError(
            f"{index} names {os.path.basename(missing[0])}, which is not in {path}: the download is incomplete"
        )
    return files


def _skeleton_linear_modules(path: str) -> dict[str, bool] | None:
    """Linear/Conv1D module paths of the architecture in path/config.json, from a meta-device skeleton."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        return None
    try:
        config = AutoConfig.from_pretrained(path)
        cls = _architecture(config)
        with torch.device("meta"):
            model = AutoModel.from_config(config) if cls is AutoModel else cls(config)
    except Exception:  # an architecture transformers cannot build: fall back to the names in the file
        return None
    return linear_modules(model)


def _guess_linear_modules(shapes: dict[str, tuple[int, ...]]) -> dict[str, bool]:
    # without an architecture: 2-D "*.weight" tensors that are not embeddings, taken as nn.Linear (d_out x d_in)
    return {
        key[: -len(".weight")]: False
        for key, shape in shapes.items()
        if key.endswith(".weight") and len(shape) == 2 and "embed" not in key.lower()
    }


def _load_safetensors(path: str, files: list[str]) -> CheckpointWeights:
    owner: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        for file in files:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    owner[key] = file
                    shapes[key] = tuple(f.get_slice(key).get_shape())
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{path} holds an unreadable safetensors file ({e}): re-save the model") from None

    def read(key: str) -> torch.Tensor:
        with safe_open(owner[key], framework="pt") as f:
            return f.get_tensor(key)

    linear = _skeleton_linear_modules(path)
    return CheckpointWeights(path, shapes, read, linear if linear is not None else _guess_linear_modules(shapes))


def _load_with_from_pretrained(path: str) -> CheckpointWeights:
    try:
        model = _architecture(AutoConfig.from_pretrained(path)).from_pretrained(path)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"cannot load {path!r} ({first}): pass a transformers model folder (model.safetensors + config.json) "
            "or a hub id"
        ) from None
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return CheckpointWeights(
        path, {k: tuple(v.shape) for k, v in state.items()}, state.__getitem__, linear_modules(model)
    )


def load_checkpoint(path: str) -> CheckpointWeights:
    """The weights of a transformers model folder (safetensors read lazily) or hub id (from_pretrained)."""
    files = _safetensors_files(path) if os.path.isdir(path) else None
    if files is not None:
        return _load_safetensors(path, files)
    return _load_with_from_pretrained(path)


def select_modules(ckpt: CheckpointWeights, target_modules: Sequence[str] | None) -> dict[str, str]:
    """{module: weight key} of the 2-D weights LoRA would target: every Linear/Conv1D inside a transformer block
    by default (not embeddings, norms, poolers or heads), or those matching `target_modules` (PEFT's rule)."""
    wanted = target_matcher(target_modules) if target_modules is not None else in_block
    # Linear/Conv1D without a stored weight (a tied lm_head) are absent from module_of
    return {module: key for key, module in ckpt.module_of.items() if len(ckpt.shapes[key]) == 2 and wanted(module)}
