"""The seven methods through one path: "# T / I params" against hand counts, and what each method updates."""

from __future__ import annotations

import json
import os

import pytest
import torch

from helpers import tiny_bert, token_batch
from rmlora import RMLoraConfig, RMLoraTrainer
from rmlora.config import METHODS
from rmlora.methods import LoraArguments, build_training_method, prepare_model
from rmlora.methods.adalora import AdaLoraArguments
from rmlora.methods.param_counts import format_count, format_param_counts
from rmlora.methods.sora import SoraArguments

R = 4
LORA = LoraArguments(lora_r=R, lora_alpha=8, target_modules="query,value", modules_to_save="classifier")
SETTINGS = {
    "adalora": AdaLoraArguments(adalora_init_r=R, adalora_target_r=2),
    "sora": SoraArguments(sora_lambda=0.1, sora_xi=1e-3),
}


def make(method: str, seed: int = 0):
    torch.manual_seed(seed)
    config = RMLoraConfig(method=method)
    model = prepare_model(tiny_bert(), config, LORA, task_type="SEQ_CLS", total_steps=6, **SETTINGS)
    return model, config


def bert_dims(model):
    c = model.config
    return (
        c.hidden_size,
        c.vocab_size,
        c.max_position_embeddings,
        c.type_vocab_size,
        c.num_hidden_layers,
        c.intermediate_size,
        c.num_labels,
    )


def hand_total(model) -> int:
    """BertForSequenceClassification, counted layer by layer from its config."""
    H, V, P, T, L, I, C = bert_dims(model)
    embeddings = (V + P + T) * H + 2 * H
    layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
    return embeddings + L * layer + (H * H + H) + (H * C + C)


def hand_head(model) -> int:
    H, *_, C = bert_dims(model)
    return H * C + C


@pytest.mark.parametrize("method", METHODS)
def test_param_counts_equal_hand_counts(method):
    model, config = make(method)
    counts = build_training_method(model, config, **SETTINGS).param_counts()
    H, _, _, _, L, _, _ = bert_dims(model)
    n_modules, head = 2 * L, hand_head(model)  # query and value of every layer, d_in = d_out = H
    if method == "full":
        assert counts == {"trainable": hand_total(model), "inference": hand_total(model)}
    elif method in ("lora", "r-lora", "gm-lora", "rm-lora"):
        n = n_modules * R * (H + H) + head
        assert counts == {"trainable": n, "inference": n}
    elif method == "adalora":
        assert counts["trainable"] == n_modules * R * (H + H + 1) + head  # P, Λ, Q at init_r
        # a budget as PEFT's allocator writes it: module i keeps i mod (R + 1) triplets
        names = sorted(n.removeprefix("base_model.model.") for n, _ in model.named_parameters() if "lora_E" in n)
        kept = [i % (R + 1) for i in range(len(names))]
        model.peft_config["default"].rank_pattern = {n: [j < k for j in range(R)] for n, k in zip(names, kept)}
        counts = build_training_method(model, config, **SETTINGS).param_counts()
        assert counts["inference"] == sum(kept) * (H + H + 1) + head
    else:  # sora
        method_obj = build_training_method(model, config, **SETTINGS)
        assert counts["trainable"] == n_modules * (R * (H + H) + R) + head  # A, B and the gates
        with torch.no_grad():
            method_obj.gates[0].gate[:3] = 0.0
            method_obj.gates[1].gate.zero_()
        surviving = n_modules * R - 3 - R
        assert method_obj.param_counts()["inference"] == surviving * (H + H) + head


def test_counts_are_written_like_the_paper():
    assert format_count(1_260_000) == "1.26M" and format_count(184_000_000) == "184M" and format_count(999) == "999"
    assert format_param_counts({"trainable": 1_920_000, "inference": 1_260_000}) == "1.92M / 1.26M"


def _train(model, config, out, steps=4, lr=1e-2):
    from datasets import Dataset
    from transformers import TrainingArguments

    b = token_batch(n=16)
    data = Dataset.from_dict({k: v.tolist() for k, v in b.items()})
    args = TrainingArguments(
        output_dir=out,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        per_device_train_batch_size=4,
        max_steps=steps,
        learning_rate=lr,
        disable_tqdm=True,
    )
    trainer = RMLoraTrainer(model=model, args=args, train_dataset=data, rmlora_config=config, method_settings=SETTINGS)
    trainer.train()
    trainer.save_model(out)
    return trainer


def test_full_fine_tuning_updates_every_parameter(tmp_path):
    model, config = make("full")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = _train(model, config, str(tmp_path), lr=1e-3)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []
    with open(os.path.join(tmp_path, "rmlora_config.json")) as f:
        assert (
            json.load(f)["param_counts"]
            == trainer.rmlora.param_counts()
            == {"trainable": hand_total(model), "inference": hand_total(model)}
        )


def _is_trained_part(name: str) -> bool:
    return any(k in name for k in ("lora_", "sora_gate", "modules_to_save"))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "full"])
def test_adapter_methods_update_only_adapters_and_heads(tmp_path, method):
    model, config = make(method)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = _train(model, config, str(tmp_path))
    for name, p in model.named_parameters():
        if name.endswith("ranknum.default"):  # AdaLoRA's constant rank count, not a parameter it trains
            continue
        changed = not torch.equal(p, before[name])
        if "lora_E" in name and not changed:  # Λ starts at 0: only a module AdaLoRA pruned entirely ends there
            assert not p.any() and trainer.rmlora.ranks()[name.split(".lora_E")[0]] == 0, name
            continue
        assert changed == _is_trained_part(name), name
    with open(os.path.join(tmp_path, "rmlora_config.json")) as f:
        assert json.load(f)["param_counts"] == trainer.rmlora.param_counts()


def _partition_like_zero3(model) -> None:
    """What DeepSpeed ZeRO-3 leaves a rank outside forward: an empty tensor, the full size in `ds_numel`."""
    for p in model.parameters():
        p.ds_numel, p.ds_shape = p.numel(), tuple(p.shape)
        p.data = torch.empty(0, dtype=p.dtype)


@pytest.mark.parametrize("method", ["full", "lora", "rm-lora", "adalora"])
def test_param_counts_under_zero3_partitioning_equal_hand_counts(method):
    # SoRA is left out: its kept count reads the gate values, which a ZeRO-3 rank does not hold either
    model, config = make(method)
    H, _, _, _, L, _, _ = bert_dims(model)
    n_modules, head = 2 * L, hand_head(model)
    method_obj = build_training_method(model, config, **SETTINGS)  # built on the whole model, as the Trainer does
    if method == "adalora":
        names = sorted(n.removeprefix("base_model.model.") for n, _ in model.named_parameters() if "lora_E" in n)
        kept = [i % (R + 1) for i in range(len(names))]
        model.peft_config["default"].rank_pattern = {n: [j < k for j in range(R)] for n, k in zip(names, kept)}
    _partition_like_zero3(model)
    assert all(p.numel() == 0 for p in model.parameters())
    counts = method_obj.param_counts()
    if method == "full":
        assert counts == {"trainable": hand_total(model), "inference": hand_total(model)}
    elif method == "adalora":
        assert counts == {
            "trainable": n_modules * R * (H + H + 1) + head,
            "inference": sum(kept) * (H + H + 1) + head,
        }
    else:
        n = n_modules * R * (H + H) + head
        assert counts == {"trainable": n, "inference": n}
