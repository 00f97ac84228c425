"""create_rmlora_optimizer: strict masks in a plain loop and under Accelerate, the Trainer's update, resume, LR."""

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments, default_data_collator

from helpers import peft_bert, token_batch
from rmlora import ConfigError, RMLoraCallback, RMLoraConfig, RMLoraOptimizer, create_rmlora_optimizer

STRICT = dict(method="rm-lora", r_hat=2, reg_weight=0.5, mask_mode="strict")


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def lora_params(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model, inner) -> dict[str, dict[str, torch.Tensor]]:
    """Each LoRA matrix and its Adam moments (zeros before the optimizer created them)."""
    out = {}
    for n, p in lora_params(model).items():
        st = inner.state.get(p, {})
        out[n] = {"w": p.detach().clone()}
        for k in ("exp_avg", "exp_avg_sq"):
            out[n][k] = st[k].clone() if k in st else torch.zeros_like(p)
    return out


def module_of(param_name: str) -> str:
    # base_model.model....query.lora_A.default.weight -> base_model.model....query
    return param_name.split(".lora_")[0]


def assert_strict_step(before, after, directions):
    """Unselected rows of A / columns of B and their moments are bitwise unchanged; the selected ones moved."""
    moved = 0
    for n, b in before.items():
        rows, cols = directions[module_of(n)]
        is_a = ".lora_A." in n
        rank = b["w"].shape[0] if is_a else b["w"].shape[1]
        chosen = rows if is_a else cols
        frozen = torch.tensor([j for j in range(rank) if j not in set(chosen.tolist())])
        for k in ("w", "exp_avg", "exp_avg_sq"):
            x, y = (b[k][frozen], after[n][k][frozen]) if is_a else (b[k][:, frozen], after[n][k][:, frozen])
            assert torch.equal(x, y), f"{n} {k}: an unselected direction changed"
        sel = b["w"][chosen] if is_a else b["w"][:, chosen]
        now = after[n]["w"][chosen] if is_a else after[n]["w"][:, chosen]
        moved += int(not torch.equal(sel, now))
    assert moved == len(before), "every matrix's selected directions should move"


def test_strict_mode_keeps_unselected_rows_and_moments_bitwise_in_a_plain_loop():
    model = peft_bert(r=4)
    opt = create_rmlora_optimizer(model, torch.optim.AdamW, rmlora_config=RMLoraConfig(**STRICT), lr=1e-2)
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt.optimizer, torch.optim.AdamW)
    for t in range(4):
        model(**token_batch(seed=t)).loss.backward()
        before = snapshot(model, opt.optimizer)
        opt.step()
        assert_strict_step(before, snapshot(model, opt.optimizer), opt.rmlora.directions(t))
        opt.zero_grad()
    assert opt.rmlora_step == 4
    # the directions did change from step to step, so the check above covered different rows
    name = next(iter(opt.rmlora.directions(0)))
    assert len({tuple(opt.rmlora.directions(t)[name][0].tolist()) for t in range(4)}) > 1


@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    # a Trainer of an earlier test leaves accelerate's singletons set up with its own accumulation settings
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_strict_mode_under_accelerate_gradient_accumulation(fresh_accelerate_state):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    assert accelerator.gradient_accumulation_steps == 2
    model = peft_bert(r=4)
    opt = create_rmlora_optimizer(model, torch.optim.AdamW, rmlora_config=RMLoraConfig(**STRICT), lr=1e-2)
    model, wrapped = accelerator.prepare(model, opt)
    assert wrapped.optimizer is opt
    real_steps = 0
    for micro in range(8):
        with accelerator.accumulate(model):
            accelerator.backward(model(**token_batch(seed=micro)).loss)
            before = snapshot(model, opt.optimizer)
            sync = accelerator.sync_gradients
            wrapped.step()
            after = snapshot(model, opt.optimizer)
            if sync:
                assert not wrapped.step_was_skipped
                assert_strict_step(before, after, opt.rmlora.directions(real_steps))
                real_steps += 1
            else:  # an accumulation micro-step: nothing moves and the directions do not advance
                assert all(torch.equal(before[n]["w"], after[n]["w"]) for n in before)
            wrapped.zero_grad()
    assert real_steps == 4 and opt.rmlora_step == 4


def test_a_step_the_grad_scaler_skips_does_not_advance_the_directions(fresh_accelerate_state):
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    Accelerator(cpu=True)
    model = peft_bert(r=4)
    opt = create_rmlora_optimizer(model, torch.optim.AdamW, rmlora_config=RMLoraConfig(**STRICT), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    wrapped = AcceleratedOptimizer(opt, device_placement=False, scaler=scaler)
    start = trainable(model)
    scaler.scale(model(**token_batch()).loss).backward()
    next(iter(lora_params(model).values())).grad[0, 0] = float("inf")
    wrapped.step()
    assert wrapped.step_was_skipped and opt.rmlora_step == 0
    assert all(torch.equal(start[n], p) for n, p in trainable(model).items())
    wrapped.zero_grad()
    scaler.scale(model(**token_batch()).loss).backward()
    wrapped.step()
    assert not wrapped.step_was_skipped and opt.rmlora_step == 1


def _recording_collator(batches: list):
    def collate(features):
        batch = default_data_collator(features)
        batches.append({k: v.clone() for k, v in batch.items()})
        return batch

    return collate


def test_update_equals_the_callback_path_with_clipping_off(tmp_path):
    cfg = dict(STRICT, mask_before_clipping=False)
    data = Dataset.from_dict({k: v.tolist() for k, v in token_batch(16, seed=3).items()})
    m1 = no_dropout(peft_bert(r=8))
    batches: list = []
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        weight_decay=0.01,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    Trainer(
        model=m1,
        args=args,
        train_dataset=data,
        data_collator=_recording_collator(batches),
        callbacks=[RMLoraCallback(RMLoraConfig(**cfg))],
    ).train()

    m2 = no_dropout(peft_bert(r=8)).train()
    opt = create_rmlora_optimizer(m2, rmlora_config=RMLoraConfig(**cfg), lr=1e-2, weight_decay=0.01)
    for batch in batches[:4]:  # the batches the Trainer stepped on, in its order
        m2(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    s1, s2, start = trainable(m1), trainable(m2), trainable(peft_bert(r=8))
    assert any(not torch.equal(s1[k], start[k]) for k in s1)
    for k in s1:
        torch.testing.assert_close(s2[k], s1[k], rtol=0, atol=1e-6, msg=k)


def _run(model, opt, steps):
    for t in steps:
        model(**token_batch(seed=t)).loss.backward()
        opt.step()
        opt.zero_grad()


def test_state_dict_round_trip_resumes_bitwise(tmp_path):
    def fresh():
        model = no_dropout(peft_bert(r=4))
        return model, create_rmlora_optimizer(model, rmlora_config=RMLoraConfig(**STRICT), lr=1e-2, weight_decay=0.1)

    whole, whole_opt = fresh()
    _run(whole, whole_opt, range(6))

    first, first_opt = fresh()
    _run(first, first_opt, range(3))
    path = tmp_path / "ckpt.pt"
    torch.save({"model": trainable(first), "optimizer": first_opt.state_dict()}, path)
    del first, first_opt

    saved = torch.load(path, weights_only=True)
    resumed, resumed_opt = fresh()
    resumed.load_state_dict(saved["model"], strict=False)
    resumed_opt.load_state_dict(saved["optimizer"])
    assert resumed_opt.rmlora_step == 3
    _run(resumed, resumed_opt, range(3, 6))
    a, b = trainable(whole), trainable(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs from the uninterrupted one"


def test_resume_with_other_settings_is_refused():
    model = peft_bert(r=4)
    opt = create_rmlora_optimizer(model, rmlora_config=RMLoraConfig(**STRICT), lr=1e-2)
    _run(model, opt, range(1))
    other = create_rmlora_optimizer(model, rmlora_config=RMLoraConfig(**dict(STRICT, r_hat=1)), lr=1e-2)
    with pytest.raises(ConfigError, match="r_hat"):
        other.load_state_dict(opt.state_dict())


def test_an_lr_scheduler_drives_the_inner_optimizer():
    model = peft_bert(r=4)
    opt = create_rmlora_optimizer(model, rmlora_config=RMLoraConfig(**STRICT), lr=1e-2, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s == 0 else 0.0)
    _run(model, opt, range(1))
    scheduler.step()
    assert [g["lr"] for g in opt.optimizer.param_groups] == [0.0] * len(opt.optimizer.param_groups)
    before = trainable(model)
    _run(model, opt, range(1, 2))  # lr 0 and no weight decay: Adam leaves every weight where it was
    assert all(torch.equal(before[n], p) for n, p in trainable(model).items())
    assert opt.rmlora_step == 2


def test_weight_decay_follows_the_trainer_grouping():
    model = peft_bert(r=4)
    opt = create_rmlora_optimizer(model, rmlora_config=RMLoraConfig(**STRICT), lr=1e-2, weight_decay=0.1)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert (id(p) in decay) == ("bias" not in n and "LayerNorm" not in n), n


def test_baseline_methods_and_models_without_lora_are_refused():
    with pytest.raises(ConfigError, match="baseline"):
        create_rmlora_optimizer(peft_bert(r=4), rmlora_config=RMLoraConfig(method="sora"), lr=1e-2)
    assert issubclass(RMLoraOptimizer, torch.optim.Optimizer)


@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 0.01}, {"loraplus_lr_ratio": 4.0}])
def test_a_model_with_nothing_to_train_is_one_line_on_every_path(kwargs):
    model = peft_bert(r=4)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="the model has no trainable parameters: wrap it with peft.get_peft_model"):
        create_rmlora_optimizer(model, torch.optim.AdamW, lr=1e-3, **kwargs)
