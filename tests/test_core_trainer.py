"""RMLoraTrainer and RMLoraCallback end to end on tiny models."""

import os

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from helpers import image_batch, peft_bert, tiny_bert, tiny_gpt2, tiny_llama, tiny_vit, token_batch
from rmlora import ConfigError, RMLoraCallback, RMLoraConfig, RMLoraTrainer


def dataset(n=16, seed=3, batch_fn=token_batch):
    return Dataset.from_dict({k: v.tolist() for k, v in batch_fn(n, seed=seed).items()})


def args(tmp, **kw):
    base = dict(
        output_dir=str(tmp),
        per_device_train_batch_size=4,
        num_train_epochs=1,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
        seed=0,
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        disable_tqdm=True,
    )
    base.update(kw)
    return TrainingArguments(**base)


def lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_masks_once_per_optimizer_step_under_gradient_accumulation(tmp_path):
    model = peft_bert(r=8)
    tr = RMLoraTrainer(
        model=model,
        args=args(tmp_path, gradient_accumulation_steps=2),
        train_dataset=dataset(16),
        rmlora_config=RMLoraConfig(method="rm-lora", r_hat=2),
    )
    calls = []
    original = tr.rmlora.before_optimizer_step

    def spy(optimizer, step):
        calls.append(step)
        return original(optimizer, step)

    tr.rmlora.before_optimizer_step = spy
    tr.train()
    # 16 samples / (4 x 2) = 2 optimizer steps; masking before clipping calls it from _clip_grad_norm and
    # again from on_pre_optimizer_step, where it is a no-op for the same step
    assert sorted(set(calls)) == [0, 1] and tr.state.global_step == 2


def test_penalty_enters_once_per_optimizer_step_under_gradient_accumulation(tmp_path):
    """GA=2 x batch 2 must give the same update as GA=1 x batch 4 (equal micro-batches, mean loss)."""
    results = []
    for ga, bs in ((1, 4), (2, 2)):
        model = peft_bert(r=4)
        tr = RMLoraTrainer(
            model=model,
            args=args(
                tmp_path / f"ga{ga}",
                gradient_accumulation_steps=ga,
                per_device_train_batch_size=bs,
                max_grad_norm=0.0,
                optim="sgd",
                max_steps=1,
            ),
            train_dataset=dataset(4),
            rmlora_config=RMLoraConfig(method="r-lora", reg_weight=5.0),
        )
        tr.train()
        results.append(lora_state(model))
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-4, atol=1e-6)


def test_mask_before_clipping_clips_the_masked_gradient(tmp_path):
    norms = {}
    for before in (True, False):
        model = peft_bert(r=8)
        tr = RMLoraTrainer(
            model=model,
            args=args(tmp_path / str(before), max_steps=1),
            train_dataset=dataset(4),
            rmlora_config=RMLoraConfig(method="gm-lora", r_hat=1, mask_before_clipping=before),
        )
        tr.train()
        norms[before] = tr.state.log_history[0]["grad_norm"]
    assert norms[True] < norms[False]


def test_callback_and_trainer_paths_give_the_same_update_without_clipping(tmp_path):
    cfg = dict(method="rm-lora", r_hat=2, reg_weight=0.5, mask_mode="grad", mask_before_clipping=False)
    m1 = peft_bert(r=8)
    RMLoraTrainer(
        model=m1,
        args=args(tmp_path / "t", max_grad_norm=0.0, max_steps=3),
        train_dataset=dataset(12),
        rmlora_config=RMLoraConfig(**cfg),
    ).train()
    m2 = peft_bert(r=8)
    Trainer(
        model=m2,
        args=args(tmp_path / "c", max_grad_norm=0.0, max_steps=3),
        train_dataset=dataset(12),
        callbacks=[RMLoraCallback(RMLoraConfig(**cfg))],
    ).train()
    s1, s2 = lora_state(m1), lora_state(m2)
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], rtol=1e-4, atol=1e-6)
    start = lora_state(peft_bert(r=8))
    assert any(not torch.equal(s1[k], start[k]) for k in s1)


def test_saved_adapter_reloads_in_vanilla_peft_with_identical_logits(tmp_path):
    from peft import PeftModel

    model = peft_bert(r=4)
    tr = RMLoraTrainer(
        model=model,
        args=args(tmp_path, max_steps=3),
        train_dataset=dataset(12),
        rmlora_config=RMLoraConfig(method="rm-lora", r_hat=2),
    )
    tr.train()
    out = tmp_path / "adapter"
    tr.rmlora.export(str(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "rmlora_config.json"} <= set(os.listdir(out))
    batch = token_batch(4, seed=9)
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        want = model(**batch).logits
        reloaded = PeftModel.from_pretrained(tiny_bert(seed=0), str(out)).eval()
        got = reloaded(**batch).logits
    assert torch.equal(got, want)


def test_checkpoint_carries_settings_and_resume_checks_them(tmp_path):
    cfg = RMLoraConfig(method="rm-lora", r_hat=2)
    tr = RMLoraTrainer(
        model=peft_bert(r=4),
        args=args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
        train_dataset=dataset(8),
        rmlora_config=cfg,
    )
    tr.train()
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / "rmlora_config.json").exists() and (ckpt / "adapter_model.safetensors").exists()
    other = RMLoraTrainer(
        model=peft_bert(r=4),
        args=args(tmp_path, max_steps=4),
        train_dataset=dataset(8),
        rmlora_config=RMLoraConfig(method="rm-lora", r_hat=3),
    )
    with pytest.raises(ConfigError, match="other RM-LoRA settings"):
        other.train(resume_from_checkpoint=str(ckpt))


@pytest.mark.parametrize(
    "build, targets, batch_fn, fan_in_fan_out",
    [
        (tiny_gpt2, ["c_attn", "c_proj", "c_fc"], token_batch, True),
        (tiny_llama, ["q_proj", "v_proj", "gate_proj"], token_batch, False),
        (tiny_vit, ["q_proj", "v_proj", "fc1"], image_batch, False),
        (tiny_bert, ["query", "key", "value", "dense"], token_batch, False),
    ],
)
def test_lora_methods_update_only_adapters_and_heads(tmp_path, build, targets, batch_fn, fan_in_fan_out):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        build(),
        LoraConfig(
            r=4,
            target_modules=targets,
            fan_in_fan_out=fan_in_fan_out,
            modules_to_save=["classifier"] if build in (tiny_bert, tiny_vit) else ["score"],
            rank_pattern={targets[0]: 2},
        ),
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    tr = RMLoraTrainer(
        model=model,
        args=args(tmp_path, max_steps=3),
        train_dataset=dataset(12, batch_fn=batch_fn),
        rmlora_config=RMLoraConfig(method="rm-lora", r_hat=0.5, mask_mode="strict"),
    )
    tr.train()
    assert {p.rank for p in tr.rmlora.pairs} == {2, 4}
    for n, p in model.named_parameters():
        moved = not torch.equal(p.detach(), start[n])
        trainable = "lora_" in n or "modules_to_save" in n
        if not trainable:
            assert not moved, f"frozen {n} moved"
    assert any(not torch.equal(p.detach(), start[n]) for n, p in model.named_parameters() if "lora_B" in n)
    assert any(not torch.equal(p.detach(), start[n]) for n, p in model.named_parameters() if "modules_to_save" in n)


@pytest.mark.parametrize(("method", "refused"), [("rm-lora", True), ("gm-lora", True), ("r-lora", False)])
def test_masking_methods_are_refused_under_deepspeed(tmp_path, monkeypatch, method, refused):
    """DeepSpeed steps the optimizer inside backward, before the masks could act (docs/RELIABILITY.md): the
    Trainer's own DeepSpeed flag, set as accelerate sets it, makes RMLoraTrainer refuse the masking methods."""
    original = Trainer.create_accelerator_and_postprocess

    def as_under_deepspeed(self):
        original(self)
        self.is_deepspeed_enabled = True

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", as_under_deepspeed)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    build = lambda: RMLoraTrainer(model=peft_bert(r=4), args=args, rmlora_config=RMLoraConfig(method=method))  # noqa: E731
    if refused:
        with pytest.raises(ConfigError, match="DeepSpeed"):
            build()
    else:
        assert build().is_deepspeed_enabled


def test_the_evaluation_loss_carries_no_penalty_while_training_loss_does(tmp_path):
    """The released code adds the penalty to the evaluation loss too (docs/FIDELITY.md); rmlora adds it only while
    training, so eval_loss is the task loss alone: the mean of the model's own loss over the evaluation batches."""
    model = peft_bert(r=4)
    config = RMLoraConfig(method="r-lora", reg_form="squared", reg_reduction="sum", reg_weight=1.0)
    tr = RMLoraTrainer(
        model=model,
        args=args(tmp_path, max_steps=2, per_device_eval_batch_size=4),
        train_dataset=dataset(8),
        eval_dataset=dataset(8, seed=5),
        rmlora_config=config,
    )
    tr.train()
    assert tr.rmlora.penalty().item() > 1.0  # large beside a loss of about 1: its absence is visible
    got = tr.evaluate()["eval_loss"]
    batch = {k: torch.tensor(v) for k, v in dataset(8, seed=5)[:].items()}
    model.eval()
    with torch.no_grad():
        want = sum(model(**{k: v[i : i + 4] for k, v in batch.items()}).loss.item() for i in (0, 4)) / 2
    assert got == pytest.approx(want, rel=1e-5)
    logged = [h["rmlora_penalty"] for h in tr.state.log_history if "rmlora_penalty" in h]
    assert logged and all(p > 1.0 for p in logged)  # the training loss did carry it
