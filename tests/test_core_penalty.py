"""The penalty against a naive per-matrix formula, and its gradients against autograd of that formula."""

import pytest
import torch

from helpers import peft_bert, tiny_gpt2
from rmlora import RMLora, RMLoraConfig, find_lora_pairs


def naive_penalty(model, form, reduction, weight):
    terms = []
    for name, p in model.named_parameters():
        if "lora_A" in name:
            m = p.double() @ p.double().T
        elif "lora_B" in name:
            m = p.double().T @ p.double()
        else:
            continue
        diff = m - torch.eye(m.shape[0], dtype=torch.float64)
        sq = (diff**2).sum()
        terms.append(sq if form == "squared" else sq.sqrt())
    total = torch.stack(terms).sum()
    if reduction == "mean":
        total = total / len(terms)
    return weight * total


@pytest.mark.parametrize("form", ["squared", "frobenius"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_penalty_value_matches_naive_formula(form, reduction):
    # two ranks via rank_pattern -> two shape groups
    model = peft_bert(r=4, rank_pattern={"value": 2})
    rm = RMLora(model, RMLoraConfig(method="r-lora", reg_form=form, reg_reduction=reduction, reg_weight=0.3))
    assert len(rm.groups) == 2
    got = rm.penalty()
    assert got.dtype == torch.float32
    want = naive_penalty(model, form, reduction, 0.3)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["squared", "frobenius"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_penalty_gradient_matches_autograd_of_naive_formula(form, reduction):
    model = peft_bert(r=4, rank_pattern={"value": 2})
    rm = RMLora(model, RMLoraConfig(method="r-lora", reg_form=form, reg_reduction=reduction, reg_weight=0.3))
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    want = torch.autograd.grad(naive_penalty(model, form, reduction, 0.3), params)
    got = torch.autograd.grad(rm.penalty(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-6)
    # closed form (the callback path) against the same autograd reference
    for p in params:
        p.grad = None
    rm.add_penalty_gradient()
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad.double(), w.double(), rtol=1e-4, atol=1e-6)


def test_penalty_is_zero_for_lora_and_gm_lora():
    model = peft_bert()
    for method in ("lora", "gm-lora"):
        pen = RMLora(model, RMLoraConfig(method=method)).penalty()
        assert float(pen) == 0.0 and not pen.requires_grad


def test_penalty_float32_for_bf16_params_and_under_autocast():
    model = peft_bert().to(torch.bfloat16)
    rm = RMLora(model, RMLoraConfig(method="rm-lora"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pen = rm.penalty()
    assert pen.dtype == torch.float32
    want = naive_penalty(model, "squared", "sum", 0.1)  # from the same bf16 values, in float64
    torch.testing.assert_close(pen.double(), want, rtol=1e-4, atol=1e-4)


def test_gpt2_conv1d_pairs_have_lora_shapes():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_gpt2(), LoraConfig(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True))
    pairs = find_lora_pairs(model)
    assert pairs and all(p.fan_in_fan_out for p in pairs)
    for p in pairs:
        # c_attn: Conv1D(3*32, 32): d_in 32, d_out 96; c_fc: d_in 32, d_out 128
        assert p.A.shape == (4, 32) and p.B.shape[1] == 4 and p.B.shape[0] in (96, 128)
    rm = RMLora(model, RMLoraConfig(method="r-lora"))
    torch.testing.assert_close(rm.penalty().double(), naive_penalty(model, "squared", "sum", 0.1), rtol=1e-5, atol=1e-6)
