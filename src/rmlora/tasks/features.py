"""Cached backbone features for LoRA on the task head only (the paper's Figure 1 placement).

When LoRA sits only on the classification layer, everything before that layer is frozen, so its input
for an image (or a text's pooled vector) does not change during training. It is computed once (a
forward pre-hook on the head captures the head's input, in eval mode), cached on disk, and the model that
trains is the head alone (`FeatureClassifier`),
fed with those features: an epoch costs a matrix product instead of a backbone
pass. The head keeps its module path (e.g. `classifier`), so the adapter it produces loads onto the
full model with `PeftModel.from_pretrained` as it is.

What differs from training the full model with a frozen backbone: nothing for ViT / DINOv2 (no dropout
or augmentation before their classifier); a model with dropout before its head (BERT's pooler) trains
without that dropout here, and no data augmentation can be applied to cached features.

The cache key hashes what determines the features: the model (its path or hub id and revision, the
size and modification time of its weight files, its config), the image processor's settings, the head's
name and the dataset split's `datasets` fingerprint (which follows its files, subset and order). For text
it also holds the tokenizer, the effective max_seq_length, the text columns and the model class (which
decides the pooling: BERT's pooler, a CLS token, ...), so a cache made under other settings is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.nn.functional as F
from torch import nn

CACHE_VERSION = 1
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


class FeatureClassifier(nn.Module):
    """The task head alone, at its original module path, applied to cached features."""

    def __init__(self, head: nn.Module, head_name: str, config):
        super().__init__()
        self.config = config  # PEFT and the Trainer read model.config
        self.name_or_path = getattr(config, "name_or_path", None)  # becomes the adapter's base_model_name_or_path
        self._head_name = head_name
        parent = self
        *path, last = head_name.split(".")
        for part in path:
            child = nn.Module()
            parent.add_module(part, child)
            parent = child
        parent.add_module(last, head)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self.get_submodule(self._head_name)(features)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Full fine-tuning of the head alone: the head's weights (keys at their module path, e.g.
        `classifier.weight`) in head.safetensors, and the config. Not named model.safetensors, so that
        `from_pretrained` on this folder cannot silently build a model with a random backbone."""
        from safetensors.torch import save_file

        os.makedirs(save_directory, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, os.path.join(save_directory, "head.safetensors"))
        self.config.save_pretrained(save_directory)


def single_linear_head(model: nn.Module) -> str | None:
    """The head's module name when the head is one linear layer (else None: no caching possible)."""
    from rmlora.tasks.placement import head_modules

    heads = head_modules(model)
    return heads[0] if len(heads) == 1 else None


@torch.no_grad()
def extract_features(
    model: nn.Module, head_name: str, dataset, collator, batch_size: int, device
) -> dict[str, torch.Tensor]:
    """{"features": N x d_in of the head's inputs, "labels": N} over `dataset`, in order."""
    from torch.utils.data import DataLoader

    head = model.get_submodule(head_name)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().float().cpu()))
    was_training = model.training
    model.eval().to(device)
    labels = []
    # Iterating a DataLoader draws its base seed from the global CPU generator, and extraction runs only on a cache
    # miss, between set_seed and LoRA's initialisation: without the fork, the run that builds the cache would
    # initialise (and so train) differently from every run that reads it. Eval mode draws nothing else (no dropout).
    try:
        with torch.random.fork_rng(devices=[]):
            for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collator):
                labels.append(batch.pop("labels").cpu())
                model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
    finally:
        hook.remove()
        model.train(was_training)
    return {"features": torch.cat(captured).contiguous(), "labels": torch.cat(labels).contiguous()}


def model_identity(name_or_path: str, revision: str | None = None, gguf_file: str | None = None) -> dict:
    """What names a model's weights: a local folder's weight files (size, mtime), else the hub id and revision."""
    if os.path.isdir(name_or_path):
        files = []
        for entry in sorted(os.listdir(name_or_path)):
            full = os.path.join(name_or_path, entry)
            if entry.endswith(_WEIGHT_SUFFIXES) and os.path.isfile(full):
                st = os.stat(full)
                files.append([entry, st.st_size, st.st_mtime_ns])
        return {"path": os.path.abspath(name_or_path), "weights": files, "gguf_file": gguf_file}
    return {"hub_id": name_or_path, "revision": revision, "gguf_file": gguf_file}


def cache_key(parts: dict) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rmlora", "features")


def cached(cache_dir: str, key: str, compute) -> tuple[dict[str, torch.Tensor], bool]:
    """(tensors, hit): load `key` from the cache, or compute and store it (written to a temp file, then renamed)."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(cache_dir, f"{key}.safetensors")
    if os.path.exists(path):
        return load_file(path), True
    tensors = compute()
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(tensors, tmp)
    os.replace(tmp, path)
    return tensors, False


def tokenizer_identity(tokenizer) -> dict:
    """What decides a tokenizer's ids: its class, vocabulary size, init settings and special tokens."""
    settings = {k: v for k, v in tokenizer.init_kwargs.items() if isinstance(v, (str, int, float, bool, type(None)))}
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "settings": settings,
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
    }


@torch.no_grad()
def head_reads_pooled_input(model: nn.Module, head_name: str, batch: dict) -> bool:
    """Whether the head's input is one vector per example (N x d), found by one eval-mode forward of `batch`.
    Only then can it be cached: a head applied to every token (GPT-2's score) gets N x T x d."""
    shapes = []
    hook = model.get_submodule(head_name).register_forward_pre_hook(lambda module, args: shapes.append(args[0].dim()))
    was_training = model.training
    model.eval()
    try:
        model(**batch)
    finally:
        hook.remove()
        model.train(was_training)
    return shapes == [2]


def cached_feature_dataset(parts: dict, cache_dir, model, head_name, dataset, collator, batch_size, device):
    """(Dataset of {"features", "labels"} in torch format, cache hit, cache file) for the split `dataset`."""
    from datasets import Dataset

    key = cache_key(parts)
    cache_dir = cache_dir or default_cache_dir()
    tensors, hit = cached(
        cache_dir, key, lambda: extract_features(model, head_name, dataset, collator, batch_size, device)
    )
    ds = Dataset.from_dict({"features": tensors["features"].numpy(), "labels": tensors["labels"].numpy()})
    return ds.with_format("torch"), hit, os.path.join(cache_dir, f"{key}.safetensors")
