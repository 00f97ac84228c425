"""The models the benchmark steps: randomly initialized classifiers of real shapes, their batch, and synthetic
LoRA stacks of any width for timing the hooks alone."""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from rmlora.bench.arguments import SHAPES
from rmlora.core.pairs import find_lora_pairs, group_pairs


def build_base_model(
    name: str, layers: int, seed: int = 0, num_labels: int = 2, vocab: int | None = None, **dims
) -> nn.Module:
    """A randomly initialized sequence classifier of the named shape (in train mode)."""
    shape = SHAPES[name]
    d = {**shape.dims, **dims}
    vocab = vocab or shape.vocab
    torch.manual_seed(seed)
    if shape.family == "bert":
        model = BertForSequenceClassification(
            BertConfig(vocab_size=vocab, num_hidden_layers=layers, num_labels=num_labels, **d)
        )
    elif shape.family == "gpt2":
        special = {} if vocab > 50256 else {"bos_token_id": vocab - 1, "eos_token_id": vocab - 1}  # tiny vocabularies
        model = GPT2ForSequenceClassification(
            GPT2Config(vocab_size=vocab, n_layer=layers, num_labels=num_labels, pad_token_id=0, **special, **d)
        )
    else:
        model = LlamaForSequenceClassification(
            LlamaConfig(vocab_size=vocab, num_hidden_layers=layers, num_labels=num_labels, pad_token_id=0, **d)
        )
    return model.train()


def make_batch(vocab: int, batch_size: int, seq_len: int, device, seed: int = 0, num_labels: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    # token 0 is the pad token of GPT-2 / Llama here: keep it out so every sequence is full length
    batch = {
        "input_ids": torch.randint(1, vocab, (batch_size, seq_len), generator=g),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch_size,), generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def share_frozen_copy(template: nn.Module) -> nn.Module:
    """A copy of `template` whose parameters and buffers are the template's own tensors.

    The adapter methods never write the base weights, so one copy of them serves all of them; full
    fine-tuning gets a real copy (copy.deepcopy).
    """
    memo = {id(t): t for t in list(template.parameters()) + list(template.buffers())}
    return copy.deepcopy(template, memo)


def pair_shapes(model: nn.Module) -> list[tuple[int, int, int]]:
    """(count, d_in, d_out) of every group of same-shaped LoRA pairs of a PEFT model."""
    return [(len(g.pairs), g.pairs[0].d_in, g.pairs[0].d_out) for g in group_pairs(find_lora_pairs(model))]


class _Stack(nn.Module):
    def __init__(self, num_pairs: int, d_in: int, d_out: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d_in, d_out, bias=False) for _ in range(num_pairs)])


def synthetic_lora_model(num_pairs: int, d_in: int, d_out: int, rank: int, device="cpu", seed: int = 0) -> nn.Module:
    """A PEFT LoRA model of `num_pairs` d_in -> d_out linear layers whose base weights are never allocated.

    The hooks only touch the LoRA matrices, so the base layers live on the meta device and any width fits.
    """
    with torch.device("meta"):
        base = _Stack(num_pairs, d_in, d_out)
    model = get_peft_model(
        base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=[f"layers.{i}" for i in range(num_pairs)])
    )
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for part in (module.lora_A, module.lora_B):
                part.to_empty(device=device)
                for p in part.parameters():
                    with torch.no_grad():
                        p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model
