"""Grad and strict masking around a real optimizer step, checked row by row against the drawn directions."""

import pytest
import torch

from helpers import peft_bert, token_batch
from rmlora import RMLora, RMLoraConfig


def lora_params(model):
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def module_of(param_name):
    # base_model.model.bert....query.lora_A.default.weight -> base_model.model.bert....query
    return param_name.split(".lora_")[0]


def backward(model, rm, seed=1):
    out = model(**token_batch(seed=seed))
    (out.loss + rm.penalty()).backward()


def test_grad_mode_zeroes_exactly_the_unselected_rows_and_columns():
    model = peft_bert(r=8)
    rm = RMLora(model, RMLoraConfig(method="gm-lora", r_hat=3, mask_mode="grad", mask_sampling="independent"))
    backward(model, rm)
    before = {n: p.grad.clone() for n, p in lora_params(model).items()}
    rm.before_optimizer_step(None, 4)
    dirs = rm.directions(4)
    for n, p in lora_params(model).items():
        a_idx, b_idx = dirs[module_of(n)]
        if "lora_A" in n:
            keep = torch.zeros(8, dtype=torch.bool)
            keep[a_idx] = True
            assert torch.equal(p.grad[keep], before[n][keep])
            assert torch.all(p.grad[~keep] == 0)
        else:
            keep = torch.zeros(8, dtype=torch.bool)
            keep[b_idx] = True
            assert torch.equal(p.grad[:, keep], before[n][:, keep])
            assert torch.all(p.grad[:, ~keep] == 0)
        assert (before[n] != 0).any()


def test_grad_mode_with_adamw_still_moves_masked_rows():
    """The released code's behaviour (docs/FIDELITY.md, "Multiplying .grad"): momentum and weight decay move masked
    rows."""
    model = peft_bert(r=8)
    rm = RMLora(model, RMLoraConfig(method="gm-lora", r_hat=2, mask_mode="grad"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for step in range(2):
        backward(model, rm, seed=step)
        rm.before_optimizer_step(opt, step)
        opt.step()
        rm.after_optimizer_step(opt, step)
        opt.zero_grad()
    name, A = next((n, p) for n, p in lora_params(model).items() if "lora_A" in n)
    before = A.detach().clone()
    backward(model, rm, seed=5)
    rm.before_optimizer_step(opt, 2)
    opt.step()
    a_idx = rm.directions(2)[module_of(name)][0]
    unselected = torch.ones(8, dtype=torch.bool)
    unselected[a_idx] = False
    assert not torch.equal(A.detach()[unselected], before[unselected])


@pytest.mark.parametrize("sampling", ["shared", "independent"])
def test_strict_mode_leaves_unselected_weights_and_adam_moments_bitwise_unchanged(sampling):
    model = peft_bert(r=8)
    rm = RMLora(model, RMLoraConfig(method="rm-lora", r_hat=3, mask_mode="strict", mask_sampling=sampling))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    head = model.base_model.model.classifier.modules_to_save["default"].weight
    head_start = head.detach().clone()
    for step in range(4):
        params = lora_params(model)
        w0 = {n: p.detach().clone() for n, p in params.items()}
        s0 = {
            n: {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v) and v.dim()}
            for n, p in params.items()
        }
        backward(model, rm, seed=step)
        rm.before_optimizer_step(opt, step)
        opt.step()
        rm.after_optimizer_step(opt, step)
        opt.zero_grad()
        dirs = rm.directions(step)
        for n, p in params.items():
            a_idx, b_idx = dirs[module_of(n)]
            keep = torch.zeros(8, dtype=torch.bool)
            keep[a_idx if "lora_A" in n else b_idx] = True
            sel = (lambda t, k=keep: t[k]) if "lora_A" in n else (lambda t, k=keep: t[:, k])
            uns = (lambda t, k=keep: t[~k]) if "lora_A" in n else (lambda t, k=keep: t[:, ~k])
            assert torch.equal(uns(p.detach()), uns(w0[n])), f"{n} unselected weights moved at step {step}"
            for key in ("exp_avg", "exp_avg_sq"):
                now = opt.state[p][key]
                before = s0[n].get(key, torch.zeros_like(now))
                assert torch.equal(uns(now), uns(before)), f"{n} {key} moved at step {step}"
            if step > 0 or "lora_B" not in n:  # B starts random here, A too: selected ones must move
                assert not torch.equal(sel(p.detach()), sel(w0[n]))
    # the classifier head (modules_to_save) trains normally under masking
    assert not torch.equal(head.detach(), head_start)


def test_mask_first_step_false_leaves_step_zero_unmasked():
    model = peft_bert(r=8)
    rm = RMLora(model, RMLoraConfig(method="gm-lora", r_hat=2, mask_mode="grad", mask_first_step=False))
    backward(model, rm)
    before = {n: p.grad.clone() for n, p in lora_params(model).items()}
    rm.before_optimizer_step(None, 0)
    assert all(torch.equal(p.grad, before[n]) for n, p in lora_params(model).items())
    rm.after_optimizer_step(None, 0)
    rm.before_optimizer_step(None, 1)
    assert any(not torch.equal(p.grad, before[n]) for n, p in lora_params(model).items())


@pytest.mark.parametrize("method, masked", [("lora", False), ("r-lora", False), ("gm-lora", True), ("rm-lora", True)])
def test_methods_mask_or_not(method, masked):
    model = peft_bert(r=8)
    rm = RMLora(model, RMLoraConfig(method=method, r_hat=2, mask_mode="grad"))
    backward(model, rm)
    before = {n: p.grad.clone() for n, p in lora_params(model).items()}
    rm.before_optimizer_step(None, 3)
    changed = any(not torch.equal(p.grad, before[n]) for n, p in lora_params(model).items())
    assert changed == masked


def test_only_active_adapter_is_touched():
    from peft import LoraConfig

    model = peft_bert(r=4)
    model.add_adapter("other", LoraConfig(r=4, target_modules=["query", "value"]))
    rm = RMLora(model, RMLoraConfig(method="rm-lora", r_hat=2))
    assert len(rm.pairs) == 4  # 2 layers x (query, value) of "default" only
    active = {id(p) for n, p in model.named_parameters() if ".default." in n and "lora_" in n}
    assert {id(p.A) for p in rm.pairs} | {id(p.B) for p in rm.pairs} <= active


@pytest.mark.parametrize(("compensation", "mode"), [("linear", "strict"), ("sqrt", "grad"), ("none", "strict")])
def test_step_compensation_scales_the_selected_update_by_r_over_r_hat(compensation, mode):
    """Against the naive formula under plain SGD: W ← W − lr·c·(mask ⊙ ∇W), c = R/r̂ (linear), √(R/r̂) or 1."""
    R, r_hat, lr = 8, 2, 0.05
    model = peft_bert(r=R)
    rm = RMLora(model, RMLoraConfig(method="gm-lora", r_hat=r_hat, mask_mode=mode, step_compensation=compensation))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    params = lora_params(model)
    backward(model, rm)
    w0 = {n: p.detach().clone() for n, p in params.items()}
    g0 = {n: p.grad.detach().clone() for n, p in params.items()}
    rm.before_optimizer_step(opt, 3)
    opt.step()
    rm.after_optimizer_step(opt, 3)
    c = {"linear": R / r_hat, "sqrt": (R / r_hat) ** 0.5, "none": 1.0}[compensation]
    dirs = rm.directions(3)
    for n, p in params.items():
        a_idx, b_idx = dirs[module_of(n)]
        keep = torch.zeros(R)
        if "lora_A" in n:
            keep[a_idx] = 1
            mask = keep[:, None]
        else:
            keep[b_idx] = 1
            mask = keep[None, :]
        expected = w0[n] - lr * c * mask * g0[n]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)


def test_step_compensation_is_off_for_unmasked_methods():
    model = peft_bert(r=4)
    rm = RMLora(model, RMLoraConfig(method="lora", step_compensation="linear"))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    name, A = next((n, p) for n, p in lora_params(model).items() if "lora_A" in n)
    backward(model, rm)
    expected = A.detach() - 0.1 * A.grad
    rm.before_optimizer_step(opt, 0)
    opt.step()
    rm.after_optimizer_step(opt, 0)
    torch.testing.assert_close(A.detach(), expected)
