"""The penalty against a naive per-matrix formula, its gradients against autograd of that formula, and the
default-λ property of the normalized reduction against the initialisation's expected value."""

import math

import pytest
import torch
from torch import nn

from helpers import peft_bert, tiny_gpt2
from rmlora import RMLora, RMLoraConfig, find_lora_pairs

FORMS = ["squared", "frobenius", "frd"]
REDUCTIONS = ["normalized", "sum", "mean"]


def naive_frd(m):
    """The released code's compute_frd_orth_regu for one matrix, written out: mean |cos| of distinct directions."""
    cov = m @ m.T
    norm = m.norm(dim=1)
    coef = cov.abs() / (norm.view(1, -1) * norm.view(-1, 1) + 1e-30)
    d = coef.shape[0]
    return (coef.sum() - coef.trace()) / (d * d - d)


def naive_penalty(model, form, reduction, weight):
    terms, zero_terms = [], []
    for name, p in model.named_parameters():
        if "lora_A" in name:
            rows = p.double()
        elif "lora_B" in name:
            rows = p.double().T
        else:
            continue
        r = rows.shape[0]
        if form == "frd":
            terms.append(naive_frd(rows))
            zero_terms.append(1.0)
            continue
        diff = rows @ rows.T - torch.eye(r, dtype=torch.float64)
        sq = (diff**2).sum()
        terms.append(sq if form == "squared" else sq.sqrt())
        # the term of an all-zero matrix of the same rank: ‖I_R‖²_F = R, ‖I_R‖_F = √R
        zero_terms.append(float(r) if form == "squared" else math.sqrt(r))
    if reduction == "normalized":
        terms = [t / z for t, z in zip(terms, zero_terms)]
    total = torch.stack(terms).sum()
    if reduction in ("mean", "normalized"):
        total = total / len(terms)
    return weight * total


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_penalty_value_matches_naive_formula(form, reduction):
    # two ranks via rank_pattern -> two shape groups (normalized divides them differently)
    model = peft_bert(r=4, rank_pattern={"value": 2})
    rm = RMLora(model, RMLoraConfig(method="r-lora", reg_form=form, reg_reduction=reduction, reg_weight=0.3))
    assert len(rm.groups) == 2
    got = rm.penalty()
    assert got.dtype == torch.float32
    want = naive_penalty(model, form, reduction, 0.3)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_frd_is_the_mean_absolute_cosine_similarity():
    torch.manual_seed(0)
    a = torch.randn(5, 40)
    cos = torch.nn.functional.cosine_similarity(a[:, None, :], a[None, :, :], dim=-1).abs()
    want = (cos.sum() - cos.diagonal().sum()) / 20
    from rmlora.core.penalty import _forward

    got, _ = _forward(a[None], True, "frd")
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-7)
    # scale-invariant: rescaling the directions changes nothing; orthogonal directions score 0
    torch.testing.assert_close(_forward(3.7 * a[None], True, "frd")[0], got, rtol=1e-5, atol=1e-7)
    q = torch.linalg.qr(torch.randn(40, 5)).Q.T
    assert float(_forward(q[None], True, "frd")[0]) < 1e-6


def test_frd_of_a_rank_one_module_is_zero_not_nan():
    """R = 1 has no pair of distinct directions: its frd term is 0, where the released code divides 0 by R² − R = 0.

    With query at R = 4 and value at R = 1 the penalty is the naive mean over all matrices, value's terms 0."""
    model = peft_bert(r=4, rank_pattern={"value": 1})
    ones = [p for n, p in model.named_parameters() if "value.lora_" in n]
    assert ones and all(1 in p.shape for p in ones)
    assert torch.isnan(naive_frd(ones[0].double()))  # the released formula at R = 1
    rm = RMLora(model, RMLoraConfig(method="r-lora", reg_form="frd", reg_weight=1.0))
    terms = [
        naive_frd(p.double() if "lora_A" in n else p.double().T)
        for n, p in model.named_parameters()
        if "lora_" in n and "value." not in n
    ]
    n_matrices = sum(1 for n, _ in model.named_parameters() if "lora_" in n)
    torch.testing.assert_close(rm.penalty().double(), torch.stack(terms).sum() / n_matrices, rtol=1e-5, atol=1e-7)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    grads = torch.autograd.grad(rm.penalty(), params)
    for p in params:
        p.grad = None
    rm.add_penalty_gradient()
    for p, g in zip(params, grads):
        assert torch.isfinite(g).all() and torch.isfinite(p.grad).all()
        if 1 in p.shape:  # a single direction has no cosine to reduce
            assert torch.all(g == 0) and torch.all(p.grad == 0)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
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


@pytest.mark.parametrize("form", FORMS)
def test_gradient_at_peft_initialisation_b_zero(form):
    # B = 0: frd's cosines are 0/ε (the released code's ε keeps them finite) and the norm is √R, not 0
    model = peft_bert(r=4, init_b_random=False)
    rm = RMLora(model, RMLoraConfig(method="r-lora", reg_form=form, reg_weight=0.1))
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    want = torch.autograd.grad(naive_penalty(model, form, "normalized", 0.1), params)
    rm.add_penalty_gradient()
    for p, w in zip(params, want):
        assert torch.isfinite(p.grad).all()
        torch.testing.assert_close(p.grad.double(), w.double(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("path", ["closed form", "autograd"])
def test_frd_gradient_is_finite_with_some_zero_directions(path):
    """Strict masking keeps B's unselected columns at PEFT's 0 while the selected ones grow: zero and nonzero
    directions side by side (D = ε there, whose square underflows float32). Against the naive formula's gradient."""
    model = peft_bert(r=4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p[:, 1:3] = 0  # two of four columns still zero
    rm = RMLora(model, RMLoraConfig(method="r-lora", reg_form="frd", reg_weight=1.0))
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    want = torch.autograd.grad(naive_penalty(model, "frd", "normalized", 1.0), params)
    if path == "closed form":
        rm.add_penalty_gradient()
        got = [p.grad for p in params]
    else:
        got = torch.autograd.grad(rm.penalty(), params)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-7)


def test_frd_trains_with_masks_through_the_callback_and_the_loss():
    # rm-lora with reg_form="frd": masked steps change only the selected rows, and the penalty goes down
    model = peft_bert(r=4)
    rm = RMLora(model, RMLoraConfig(method="rm-lora", r_hat=2, reg_form="frd", reg_weight=1.0, seed=3))
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if "lora_" in n], lr=0.5)
    a = rm.pairs[0].A
    start = float(rm.penalty().detach())
    for step in range(5):
        before = a.detach().clone()
        opt.zero_grad()
        rm.penalty().backward()
        rm.before_optimizer_step(opt, step)
        opt.step()
        rm.after_optimizer_step(opt, step)
        changed = (a.detach() != before).any(dim=1)
        assert int(changed.sum()) <= 2
    assert float(rm.penalty().detach()) < start


def test_penalty_is_zero_for_lora_and_gm_lora():
    model = peft_bert()
    for method in ("lora", "gm-lora"):
        pen = RMLora(model, RMLoraConfig(method=method)).penalty()
        assert float(pen) == 0.0 and not pen.requires_grad


def test_penalty_float32_for_bf16_params_and_under_autocast():
    model = peft_bert().to(torch.bfloat16)
    rm = RMLora(model, RMLoraConfig(method="rm-lora", reg_form="squared", reg_weight=0.1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pen = rm.penalty()
    assert pen.dtype == torch.float32
    want = naive_penalty(model, "squared", "normalized", 0.1)  # from the same bf16 values, in float64
    torch.testing.assert_close(pen.double(), want, rtol=1e-4, atol=1e-4)


def test_gpt2_conv1d_pairs_have_lora_shapes():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_gpt2(), LoraConfig(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True))
    pairs = find_lora_pairs(model)
    assert pairs and all(p.fan_in_fan_out for p in pairs)
    for p in pairs:
        # c_attn: Conv1D(3*32, 32): d_in 32, d_out 96; c_fc: d_in 32, d_out 128
        assert p.A.shape == (4, 32) and p.B.shape[1] == 4 and p.B.shape[0] in (96, 128)
    rm = RMLora(model, RMLoraConfig(method="r-lora", reg_form="squared", reg_reduction="sum", reg_weight=0.1))
    torch.testing.assert_close(rm.penalty().double(), naive_penalty(model, "squared", "sum", 0.1), rtol=1e-5, atol=1e-6)


# -- the default-λ property ----------------------------------------------------------------------------------


class Stack(nn.Module):
    """A plain stack of Linear layers of the given widths: as many adapted layers as wanted, any widths."""

    def __init__(self, widths):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:]))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def lora_stack(n_layers, rank, widths, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    dims = [widths[i % len(widths)] for i in range(n_layers + 1)]
    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=[f"layers.{i}" for i in range(n_layers)])
    return get_peft_model(Stack(dims), cfg), dims


def expected_initial(rank, d_ins):
    """(1 + c)/2 averaged over the pairs: B = 0 scores 1; PEFT's kaiming_uniform(a=√5) A, entries U(±1/√d), scores
    c = E‖AAᵀ−I‖²/R = (1 − 1/3)² + Var(Σa²) + (R − 1)/(9d) = 4/9 + 4/(45d) + (R − 1)/(9d)."""
    c = [4 / 9 + 4 / (45 * d) + (rank - 1) / (9 * d) for d in d_ins]
    return sum((1 + ci) / 2 for ci in c) / len(c)


# the band the default λ = 0.1 keeps the initial penalty in: 0.1 × (1 + c)/2 with c ∈ [4/9, 0.6]
DEFAULT_LAMBDA_BAND = (0.07, 0.08)


@pytest.mark.parametrize("rank", [4, 16, 64])
@pytest.mark.parametrize("n_layers", [2, 24])
@pytest.mark.parametrize("widths", [(64, 96, 128), (256, 512, 384)], ids=["narrow", "wide"])
def test_default_lambda_puts_the_initial_penalty_in_a_fixed_band(rank, n_layers, widths):
    model, dims = lora_stack(n_layers, rank, widths)
    # the squared form under the default normalized reduction, at λ = 0.1
    rm = RMLora(model, RMLoraConfig(method="r-lora", reg_form="squared", reg_weight=0.1))
    got = float(rm.penalty().detach())
    assert DEFAULT_LAMBDA_BAND[0] <= got <= DEFAULT_LAMBDA_BAND[1], got
    # and it is the value the initialisation predicts, not a coincidence of the band
    assert got == pytest.approx(0.1 * expected_initial(rank, dims[:-1]), rel=0.04)


@pytest.mark.parametrize("rank", [4, 16, 64])
@pytest.mark.parametrize("n_layers", [2, 24])
def test_default_frd_penalty_is_at_most_lambda_and_independent_of_rank_and_layers(rank, n_layers):
    """The defaults (frd, normalized, λ = 0.001) at PEFT's initialisation: B = 0 scores 0, and A's random rows score
    the mean |cos| of random directions in d_in dimensions, ≈ √(2/(π d_in)); so the penalty is λ/2 times that
    (averaged over the layers' d_in), whatever R and the number of layers, and never above λ."""
    model, dims = lora_stack(n_layers, rank, (256, 512, 384))
    rm = RMLora(model, RMLoraConfig(method="r-lora"))
    got = float(rm.penalty().detach())
    expected = 0.001 / 2 * sum(math.sqrt(2 / (math.pi * d)) for d in dims[:-1]) / n_layers
    assert 0 < got <= 0.001
    # a mean of n_layers · R(R−1)/2 distinct |cos| values, each of relative spread √(π/2 − 1) ≈ 0.76: within 3σ
    rel = 3 * math.sqrt(math.pi / 2 - 1) / math.sqrt(n_layers * rank * (rank - 1) / 2)
    assert got == pytest.approx(expected, rel=rel)


def test_eq10_sum_grows_with_rank_and_layers_where_normalized_does_not():
    small = RMLora(lora_stack(2, 4, (64,))[0], RMLoraConfig.paper(method="r-lora"))
    big = RMLora(lora_stack(24, 64, (256,))[0], RMLoraConfig.paper(method="r-lora"))
    # Eq. 10 summed: 2 pairs x 4 x (1 + c) ≈ 11.6 vs 24 x 64 x (1 + c) ≈ 2,300 (times λ)
    assert float(big.penalty().detach()) / float(small.penalty().detach()) > 100
