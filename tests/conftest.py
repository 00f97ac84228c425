"""Tiny randomly initialized models (2 layers) shared by the tests."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
torch.set_num_threads(1)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def tiny_bert(num_labels: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2(num_labels: int = 3, seed: int = 0):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=num_labels, pad_token_id=0
    )
    return GPT2ForSequenceClassification(cfg).eval()


def tiny_llama(num_labels: int = 3, seed: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=0,
    )
    return LlamaForSequenceClassification(cfg).eval()


def tiny_vit(num_labels: int = 3, seed: int = 0):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        num_labels=num_labels,
    )
    return ViTForImageClassification(cfg).eval()


def token_batch(n: int = 8, length: int = 12, num_labels: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, 64, (n, length), generator=g),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (n,), generator=g),
    }


def image_batch(n: int = 8, num_labels: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(n, 3, 16, 16, generator=g),
        "labels": torch.randint(0, num_labels, (n,), generator=g),
    }


def peft_bert(
    r: int = 4, seed: int = 0, target_modules=("query", "value"), rank_pattern=None, init_b_random=True, **kw
):
    """A tiny BERT with LoRA; B is randomized (PEFT starts it at 0) so that ΔW ≠ 0 in tests."""
    from peft import LoraConfig, get_peft_model

    model = tiny_bert(seed=seed)
    kw.setdefault("lora_alpha", 2 * r)
    cfg = LoraConfig(
        r=r, target_modules=list(target_modules), modules_to_save=["classifier"], rank_pattern=rank_pattern or {}, **kw
    )
    model = get_peft_model(model, cfg)
    if init_b_random:
        randomize_lora_b(model, seed)
    return model


def randomize_lora_b(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.fixture
def closed_figures(monkeypatch):
    """The figures closed through matplotlib.pyplot.close during the test (rmlora.harness.plots.curves closes what it
    draws), kept here so that a test can look at their axes and lines."""
    import matplotlib.pyplot as plt

    closed = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (closed.append(fig), real_close(fig)))
    return closed


@pytest.fixture
def bert_lora():
    return peft_bert()
