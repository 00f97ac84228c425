"""SoRA: proximal soft-threshold, ξ schedule, gated forward, L1 term, gate step, export to plain PEFT LoRA, resume."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from helpers import tiny_bert, tiny_gpt2, token_batch
from rmlora import ConfigError, RMLoraConfig, RMLoraTrainer
from rmlora.methods import LoraArguments, prepare_model
from rmlora.methods.sora import SoraArguments, SoraMethod, soft_threshold, xi_at

SORA = RMLoraConfig(method="sora")


def sora_model(builder=tiny_bert, r=4, targets="query,value", rslora=False, seed=0, randomize=True):
    lora = LoraArguments(
        lora_r=r,
        lora_alpha=2 * r,
        target_modules=targets,
        modules_to_save="classifier" if builder is tiny_bert else "score",
        use_rslora=rslora,
    )
    torch.manual_seed(seed)
    model = prepare_model(builder(), SORA, lora, task_type="SEQ_CLS")
    if randomize:  # PEFT starts B at 0; a nonzero B makes the gates visible in the output
        g = torch.Generator().manual_seed(seed + 7)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def naive_soft_threshold(v: float, xi: float) -> float:
    return math.copysign(max(abs(v) - xi, 0.0), v) if abs(v) > xi else 0.0


def reference_sequential_threshold(t: torch.Tensor, xi: float) -> torch.Tensor:
    # TsinghuaC3I/SoRA SparseAdamW.step: three in-place statements in sequence
    t = t.clone()
    t[t > xi] -= xi
    t[t < -xi] += xi
    t[abs(t) < xi] = 0.0
    return t


def test_soft_threshold_matches_closed_form_below_inside_and_above():
    xi = 0.1
    values = [0.0, 0.05, -0.05, 0.1, 0.13, -0.17, 0.19, 0.25, -0.31, 2.0]  # < ξ, (ξ, 2ξ), > 2ξ, both signs
    got = soft_threshold(torch.tensor(values, dtype=torch.float64), xi).tolist()
    assert got == pytest.approx([naive_soft_threshold(v, xi) for v in values], abs=1e-15)
    inside = torch.tensor([0.13, -0.17, 0.19], dtype=torch.float64)
    assert torch.all(soft_threshold(inside, xi) != 0)
    # the reference's sequential form zeroes exactly these: the bug this implementation does not copy
    assert torch.all(reference_sequential_threshold(inside, xi) == 0)


def test_xi_schedules_follow_the_reference_shapes():
    xi0, top, k = 1e-4, 1e-2, 5
    lin = SoraArguments(sora_xi=xi0, sora_xi_schedule="linear", sora_xi_max=top, sora_xi_steps=k).xi_values()
    ll = SoraArguments(sora_xi=xi0, sora_xi_schedule="log_linear", sora_xi_max=top, sora_xi_steps=k).xi_values()
    el = SoraArguments(sora_xi=xi0, sora_xi_schedule="exp_linear", sora_xi_max=top, sora_xi_steps=k).xi_values()
    for i in range(k):
        t = i / (k - 1)
        assert lin[i] == pytest.approx(xi0 + t * (top - xi0), rel=1e-12)
        assert ll[i] == pytest.approx(math.log(math.exp(xi0) + t * (math.exp(top) - math.exp(xi0))), rel=1e-9)
        assert el[i] == pytest.approx(xi0 * (top / xi0) ** t, rel=1e-12)
    assert SoraArguments(sora_xi=0.3).xi_values() == [0.3]
    # k values over k equal stages of the run: 10 steps, 3 values -> steps 0-3, 4-6, 7-9
    values = [1.0, 2.0, 3.0]
    assert [xi_at(s, 10, values) for s in range(10)] == [1.0] * 4 + [2.0] * 3 + [3.0] * 3


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"sora_lambda": -1.0}, "sora_lambda"),
        ({"sora_xi": -0.1}, "sora_xi"),
        ({"sora_gate_lr": 0.0}, "sora_gate_lr"),
        ({"sora_xi_schedule": "cosine"}, "unknown sora_xi_schedule"),
        ({"sora_xi_schedule": "linear"}, "sora_xi_max"),
        ({"sora_xi_schedule": "exp_linear", "sora_xi": 0.0, "sora_xi_max": 1.0}, "log ξ"),
        ({"sora_xi_schedule": "linear", "sora_xi_max": 1.0, "sora_xi_steps": 0}, "sora_xi_steps"),
    ],
)
def test_bad_sora_arguments_raise(kwargs, fragment):
    with pytest.raises(ConfigError) as e:
        SoraArguments(**kwargs)
    assert fragment in str(e.value)


def test_gates_refuse_embedding_targets():
    lora = LoraArguments(lora_r=2, target_modules="word_embeddings")
    with pytest.raises(ConfigError, match="Linear"):
        prepare_model(tiny_bert(), SORA, lora)


def test_gated_forward_is_B_diag_g_A():
    model = sora_model()
    method = SoraMethod(model, SORA)
    gate = method.gates[0]
    assert gate.gate.shape == (4,)
    layer = gate.layer
    x = torch.randn(5, layer.in_features)
    W0, b0 = layer.base_layer.weight, layer.base_layer.bias
    naive = x @ W0.T + b0 + gate.scaling * ((x @ gate.A.T) * gate.gate) @ gate.B.T
    torch.testing.assert_close(layer(x), naive, rtol=1e-6, atol=1e-6)


def test_l1_term_and_its_gradient_match_the_naive_formula():
    model = sora_model()
    lam = 0.3
    method = SoraMethod(model, SORA, sora=SoraArguments(sora_lambda=lam))
    gates = [g.gate for g in method.gates]
    n = sum(len(g) for g in gates)
    naive = lam * sum(abs(v) for g in gates for v in g.tolist()) / n
    pen = method.penalty()
    assert pen.item() == pytest.approx(naive, rel=1e-6)
    pen.backward()
    for g in gates:
        assert g.grad.tolist() == pytest.approx([lam * math.copysign(1.0, v) / n for v in g.tolist()], rel=1e-6)
    closed = [g.grad.clone() for g in gates]
    for g in gates:
        g.grad = None
    method.add_penalty_gradient()
    for g, c in zip(gates, closed):
        torch.testing.assert_close(g.grad, c)


def test_gate_step_is_adamw_then_proximal_threshold_with_the_main_schedule():
    model = sora_model()
    method = SoraMethod(model, SORA, sora=SoraArguments(sora_xi=0.05, sora_gate_lr=0.2))
    gates = [g.gate for g in method.gates]
    before = [g.detach().clone() for g in gates]
    grads = [torch.randn(g.shape) for g in gates]
    for g, gr in zip(gates, grads):
        g.grad = gr.clone()
    # the main optimizer is half-way down its schedule: the gates' lr follows (0.2 · 0.5)
    main = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    main.param_groups[0]["initial_lr"] = 0.2
    method.after_optimizer_step(main, step=0)
    lr, eps = 0.2 * 0.5, 1e-6
    for g, b, gr in zip(gates, before, grads):
        # first Adam step, bias-corrected: m̂ = grad, v̂ = grad²
        adam = [bv - lr * gv / (abs(gv) + eps) for bv, gv in zip(b.tolist(), gr.tolist())]
        assert g.tolist() == pytest.approx([naive_soft_threshold(v, 0.05) for v in adam], abs=1e-6)


def _dataset(n=32, seed=1):
    from datasets import Dataset

    b = token_batch(n=n, seed=seed)
    return Dataset.from_dict({k: v.tolist() for k, v in b.items()})


def _trainer(model, out, settings, steps=8, **kw):
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=out,
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=8,
        max_steps=steps,
        learning_rate=1e-2,
        disable_tqdm=True,
        **{"save_strategy": "no", **kw},
    )
    return RMLoraTrainer(model=model, args=args, train_dataset=_dataset(), rmlora_config=SORA, method_settings=settings)


def test_trainer_loss_carries_the_l1_term_and_gates_use_their_own_optimizer(tmp_path):
    import torch.nn.functional as F

    model = sora_model()
    settings = {"sora": SoraArguments(sora_lambda=0.5, sora_xi=0.02, sora_gate_lr=0.05)}
    trainer = _trainer(model, str(tmp_path), settings)
    for m in model.modules():  # dropout off, so that the loss can be recomputed
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.train()
    batch = token_batch(n=4)
    loss = trainer.compute_loss(model, dict(batch))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    gates = [g.gate for g in trainer.rmlora.gates]
    l1 = 0.5 * sum(g.abs().sum().item() for g in gates) / sum(g.numel() for g in gates)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, batch["labels"]).item() + l1, rel=1e-5)

    trainer.train()
    owned = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(g) in owned for g in gates)
    assert {id(p) for group in trainer.rmlora.gate_optimizer.param_groups for p in group["params"]} == {
        id(g) for g in gates
    }
    assert trainer.rmlora.sparsity() > 0  # ξ and λ pruned some directions


@pytest.mark.parametrize(
    "builder, targets, rslora",
    [(tiny_bert, "query,value", False), (tiny_bert, "query,value", True), (tiny_gpt2, "c_attn,c_fc", False)],
)
def test_export_prunes_folds_and_reloads_in_vanilla_peft(tmp_path, builder, targets, rslora):
    from peft import PeftModel

    model = sora_model(builder, r=4, targets=targets, rslora=rslora)
    method = SoraMethod(model, SORA)
    with torch.no_grad():
        method.gates[0].gate[[1, 3]] = 0.0  # two directions pruned
        method.gates[1].gate.zero_()  # the whole module pruned
    batch = token_batch(n=6)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        gated = model(**inputs).logits
    method.export(str(tmp_path))

    with open(os.path.join(tmp_path, "adapter_config.json")) as f:
        cfg = json.load(f)
    expected = {g.path.removeprefix("base_model.model."): int((g.gate != 0).sum()) for g in method.gates}
    expected = {k: v for k, v in expected.items() if v > 0}
    assert cfg["rank_pattern"] == expected and sorted(cfg["target_modules"]) == sorted(expected)
    assert cfg["peft_type"] == "LORA"

    torch.manual_seed(0)
    reloaded = PeftModel.from_pretrained(builder(), str(tmp_path)).eval()
    with torch.no_grad():
        plain = reloaded(**inputs).logits
    torch.testing.assert_close(plain, gated, rtol=1e-5, atol=1e-6)
    shapes = {n.removeprefix("base_model.model."): p.shape for n, p in reloaded.named_parameters() if "lora_A" in n}
    for key, r in expected.items():
        assert shapes[f"{key}.lora_A.default.weight"][0] == r
    pruned = method.gates[1].path.removeprefix("base_model.model.")
    assert not any(n.startswith(pruned + ".lora_") for n in shapes)
    # the file holds exactly what vanilla PEFT saves for that config: no gate, no pruned module
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    written = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    assert set(written) == set(get_peft_model_state_dict(reloaded))


def test_export_with_every_gate_pruned_is_the_base_model(tmp_path):
    from peft import PeftModel

    model = sora_model()
    method = SoraMethod(model, SORA)
    with torch.no_grad():
        for g in method.gates:
            g.gate.zero_()
    method.export(str(tmp_path))
    batch = token_batch(n=4)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    reloaded = PeftModel.from_pretrained(tiny_bert(), str(tmp_path)).eval()
    with torch.no_grad():
        # the head (modules_to_save) is the trained one; ΔW = 0 everywhere
        expected = model(**inputs).logits
        torch.testing.assert_close(reloaded(**inputs).logits, expected, rtol=1e-5, atol=1e-6)


def test_final_save_model_writes_the_exported_adapter(tmp_path):
    from peft import PeftModel

    model = sora_model()
    settings = {"sora": SoraArguments(sora_lambda=1.0, sora_xi=0.05, sora_gate_lr=0.05)}
    trainer = _trainer(model, str(tmp_path / "run"), settings, steps=6)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    batch = token_batch(n=4)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model.eval()
    with torch.no_grad():
        reloaded = PeftModel.from_pretrained(tiny_bert(), str(tmp_path / "final")).eval()
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=1e-5, atol=1e-6)


def test_resume_restores_gates_and_gate_optimizer(tmp_path):
    settings = {"sora": SoraArguments(sora_lambda=0.5, sora_xi=0.01, sora_gate_lr=0.05)}
    full = _trainer(sora_model(randomize=False), str(tmp_path / "full"), settings, steps=6)
    full.train()
    cut = _trainer(
        sora_model(randomize=False), str(tmp_path / "cut"), settings, steps=6, save_strategy="steps", save_steps=3
    )
    cut.train()
    checkpoint = str(tmp_path / "cut" / "checkpoint-3")
    assert os.path.exists(os.path.join(checkpoint, "rmlora_state.safetensors"))
    resumed = _trainer(sora_model(randomize=False, seed=5), str(tmp_path / "cut"), settings, steps=6)
    resumed.train(resume_from_checkpoint=checkpoint)
    for a, b in zip(full.rmlora.gates, resumed.rmlora.gates):
        torch.testing.assert_close(b.gate, a.gate, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(b.B, a.B, rtol=1e-5, atol=1e-7)
    sa, sb = full.rmlora.gate_optimizer.state_dict()["state"], resumed.rmlora.gate_optimizer.state_dict()["state"]
    for i in sa:
        np.testing.assert_allclose(sb[i]["exp_avg_sq"].numpy(), sa[i]["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-12)
        assert float(sb[i]["step"]) == float(sa[i]["step"]) == 6


def test_state_round_trips_through_disk_into_a_fresh_model(tmp_path):
    from rmlora.io.state import read_rmlora_state, write_rmlora_state

    model = sora_model()
    method = SoraMethod(model, SORA, sora=SoraArguments(sora_xi=0.01, sora_gate_lr=0.1))
    for g in method.gates:
        g.gate.grad = torch.randn(g.gate.shape)
    method.after_optimizer_step(None, 0)
    write_rmlora_state(str(tmp_path), method)
    other = SoraMethod(sora_model(seed=3), SORA)
    other.load_state_dict(read_rmlora_state(str(tmp_path)))
    assert other.args == method.args
    for a, b in zip(method.gates, other.gates):
        torch.testing.assert_close(b.gate, a.gate, rtol=0, atol=0)
    sa, sb = method.gate_optimizer.state_dict()["state"], other.gate_optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(sb[i][key], sa[i][key], rtol=0, atol=0)


def test_a_step_without_gradients_leaves_the_gates_alone():
    model = sora_model()
    method = SoraMethod(model, SORA, sora=SoraArguments(sora_xi=10.0, sora_gate_lr=0.1))
    before = [g.gate.detach().clone() for g in method.gates]
    method.after_optimizer_step(None, 0)  # ξ = 10 would zero every gate if it ran
    for g, b in zip(method.gates, before):
        torch.testing.assert_close(g.gate, b, rtol=0, atol=0)
