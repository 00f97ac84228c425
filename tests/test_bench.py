"""The benchmark runs on tiny models, and every fast path gives the numbers of a simple reference path.

Fast paths checked here: the group-batched masks and strict snapshots (against a per-parameter Python
loop over the drawn directions), directions drawn for several groups in one call (against one call per
module), the closed-form penalty gradient added with foreach (against autograd of a per-pair loop),
the selected-directions-only LoRA backward (against autograd + masking), and the CPU peak-memory
measurement (against allocations of known size).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import peft_bert, tiny_gpt2, token_batch
from rmlora import RMLora, RMLoraConfig
from rmlora.bench.arguments import ANCHOR, METHODS, BenchArguments
from rmlora.bench.memory import cpu_peak_extra_bytes
from rmlora.bench.report import format_report
from rmlora.bench.run import run_benchmark
from rmlora.bench.selective import SelectiveLoraBranch, lora_branch
from rmlora.bench.timing import hooks_on_synthetic
from rmlora.cli.bench import main
from rmlora.cli.main import main as cli_main
from rmlora.core.directions import STREAM_A, STREAM_B, module_key, select_directions


def tiny_args(**kw):
    values = dict(model="gpt2-tiny", layers=1, batch_size=2, seq_len=8, warmup=1, repeats=2, hook_iters=2, quiet=True)
    values.update(kw)
    return BenchArguments(**values)


# -- the benchmark runs ------------------------------------------------------------------------------------------
def test_benchmark_runs_every_method_on_a_tiny_model():
    result = run_benchmark(tiny_args(selective=True))
    rows = {r["method"]: r for r in result["methods"]}
    assert list(rows) == list(METHODS)
    for name, r in rows.items():
        if not r["available"]:  # a baseline that cannot be built is reported, not fatal
            assert name in ("adalora", "sora") and r["reason"]
            continue
        assert r["median_step_s"] > 0 and r["median_cpu_s"] >= 0 and len(r["step_s"]) == 2
        assert r["peak_mem_bytes"] >= r["persistent_bytes"] > 0 and r["step_extra_bytes"] > 0
        assert r["ratio_to_peft_lora"] > 0 and r["mem_ratio_to_peft_lora"] > 0
    assert rows[ANCHOR]["ratio_to_peft_lora"] == 1.0 and rows[ANCHOR]["hooks_us"]["total"] == 0
    # the same adapter: rmlora's LoRA variants train exactly PEFT LoRA's parameters
    for name in ("lora", "r-lora", "gm-lora/grad", "rm-lora/strict"):
        assert rows[name]["trainable_params"] == rows[ANCHOR]["trainable_params"]
    assert rows["full"]["trainable_params"] > rows[ANCHOR]["trainable_params"]
    # masks and penalty run only where the method has them
    assert rows["rm-lora/strict"]["hooks_us"]["after"] > 0
    assert result["environment"]["torch_threads"] == 1 and result["load_average_start"] is not None
    assert result["selective"]["shapes"]
    assert "rm-lora/strict" in format_report(result)
    json.dumps(result)


@pytest.mark.parametrize("model", ["bert-tiny", "llama-tiny"])
def test_benchmark_runs_on_bert_and_llama_shapes(model):
    result = run_benchmark(tiny_args(model=model, methods="rm-lora/strict,gm-lora/grad"))
    assert [r["method"] for r in result["methods"]] == [ANCHOR, "gm-lora/grad", "rm-lora/strict"]
    assert all(r["available"] for r in result["methods"])


def test_json_flag_prints_one_object_with_the_required_fields(capsys, tmp_path):
    saved = tmp_path / "run.json"
    main(
        [
            "--model",
            "gpt2-tiny",
            "--layers",
            "1",
            "--batch_size",
            "2",
            "--seq_len",
            "8",
            "--repeats",
            "3",
            "--hook_iters",
            "1",
            "--methods",
            "rm-lora/grad",
            "--json",
            "--quiet",
            "--output",
            str(saved),
        ]
    )
    result = json.loads(capsys.readouterr().out)
    for row in result["methods"]:
        assert {"method", "median_step_s", "peak_mem_bytes", "ratio_to_peft_lora"} <= set(row)
        lo, hi = row["ratio_ci95"]
        assert lo <= row["ratio_to_peft_lora"] <= hi
    # a saved run prints its tables again without running
    main(["--report", str(saved)])
    assert "rm-lora/grad" in capsys.readouterr().out


def test_hooks_on_a_synthetic_model_of_any_width():
    out = hooks_on_synthetic(num_pairs=3, d=16, rank=4, mask_mode="strict", device="cpu", iters=2)
    assert out["penalty"] > 0 and out["before"] > 0 and out["after"] > 0


# -- masks and snapshots: group-batched vs a per-parameter loop ------------------------------------------------------
def naive_directions(rm, name, rank, r_hat, step):
    """One module at a time, straight from select_directions (no buckets of groups)."""
    key = torch.tensor([module_key(name)], dtype=torch.int64)
    cfg = rm.config
    a = select_directions(key, rank, r_hat, cfg.seed, step, STREAM_A)[0]
    b = a if cfg.mask_sampling == "shared" else select_directions(key, rank, r_hat, cfg.seed, step, STREAM_B)[0]
    return a, b


def multi_group_model(seed=0):
    """GPT-2 with four LoRA shape groups of R=8 (one bucket) and a fifth of R=4 (another bucket)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["c_attn", "c_proj", "c_fc"],
        rank_pattern={"h.1.mlp.c_fc": 4},
        fan_in_fan_out=True,
    )
    model = get_peft_model(tiny_gpt2(seed=seed), cfg)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_directions_drawn_in_buckets_equal_one_draw_per_module():
    model = multi_group_model()
    rm = RMLora(model, RMLoraConfig(method="gm-lora", r_hat=3, mask_sampling="independent", seed=9))
    assert len(rm.groups) == 5 and len(rm._buckets) == 2
    for step in (0, 1, 17):
        got = rm.directions(step)
        assert list(got) == [p.name for g in rm.groups for p in g.pairs]
        for pair in rm.pairs:
            a, b = naive_directions(rm, pair.name, pair.rank, 3, step)
            assert torch.equal(got[pair.name][0], a) and torch.equal(got[pair.name][1], b)


def naive_step(model, rm, opt, step, strict):
    """Algorithm 1 with Python loops: mask each matrix's rows/columns, snapshot and restore one by one."""
    pairs = {p.name: p for p in rm.pairs}
    saved = []
    for name, pair in pairs.items():
        a_idx, b_idx = naive_directions(rm, name, pair.rank, rm.config.r_hat_for(pair.rank), step)
        for param, idx, dim in ((pair.A, a_idx, 0), (pair.B, b_idx, 1)):
            keep = torch.zeros(pair.rank, dtype=torch.bool)
            keep[idx] = True
            with torch.no_grad():
                for j in range(pair.rank):
                    if not keep[j]:
                        param.grad.select(dim, j).mul_(0)
            if strict:
                state = {k: v.clone() for k, v in opt.state.get(param, {}).items() if torch.is_tensor(v) and v.dim()}
                saved.append((param, keep, dim, param.detach().clone(), state))
    opt.step()
    with torch.no_grad():
        for param, keep, dim, w, state in saved:
            for j in range(len(keep)):
                if keep[j]:
                    continue
                param.select(dim, j).copy_(w.select(dim, j))
                for k, v in opt.state[param].items():
                    if torch.is_tensor(v) and v.dim():
                        before = state[k] if k in state else torch.zeros_like(v)
                        v.select(dim, j).copy_(before.select(dim, j))


@pytest.mark.parametrize("mask_mode", ["grad", "strict"])
@pytest.mark.parametrize("sampling", ["shared", "independent"])
def test_batched_masking_matches_a_per_parameter_loop(mask_mode, sampling):
    """Several steps of AdamW: weights, gradients' effect and optimizer state bitwise equal to the loop."""
    cfg = RMLoraConfig(method="gm-lora", r_hat=3, mask_mode=mask_mode, mask_sampling=sampling, seed=3)
    models = [multi_group_model(), multi_group_model()]
    rms = [RMLora(m, cfg) for m in models]
    opts = [
        torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1) for m in models
    ]
    for step in range(3):
        for model in models:
            model(**token_batch(seed=step)).loss.backward()
        rms[0].before_optimizer_step(opts[0], step)
        opts[0].step()
        rms[0].after_optimizer_step(opts[0], step)
        naive_step(models[1], rms[1], opts[1], step, mask_mode == "strict")
        for opt in opts:
            opt.zero_grad()
        for (n, p), (_, q) in zip(models[0].named_parameters(), models[1].named_parameters()):
            assert torch.equal(p, q), f"{n} differs at step {step}"
            for k, v in opts[0].state.get(p, {}).items():
                assert torch.equal(v, opts[1].state[q][k]), f"{n} {k} differs at step {step}"


def test_strict_mode_with_a_pair_that_got_no_gradient():
    """A matrix without .grad this step (AdamW skips it) stays whole; the others are masked as usual."""
    model = peft_bert(r=8)
    rm = RMLora(model, RMLoraConfig(method="gm-lora", r_hat=2, mask_mode="strict"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        model(**token_batch(seed=step)).loss.backward()
        skipped = rm.pairs[0].A
        if step == 1:
            skipped.grad = None
            before = skipped.detach().clone()
            state_before = {k: v.clone() for k, v in opt.state[skipped].items()}
        rm.before_optimizer_step(opt, step)
        opt.step()
        rm.after_optimizer_step(opt, step)
        opt.zero_grad()
    assert torch.equal(skipped.detach(), before)
    assert all(torch.equal(v, state_before[k]) for k, v in opt.state[skipped].items())


# -- penalty: closed form with foreach vs autograd of a per-pair loop
def test_closed_form_penalty_gradient_adds_to_existing_gradients():
    model = multi_group_model()
    rm = RMLora(model, RMLoraConfig(method="r-lora", reg_form="squared", reg_weight=0.3, reg_reduction="sum"))
    params = [p for pair in rm.pairs for p in (pair.A, pair.B)]
    loop = sum(
        ((pair.A @ pair.A.T - torch.eye(pair.rank)) ** 2).sum()
        + ((pair.B.T @ pair.B - torch.eye(pair.rank)) ** 2).sum()
        for pair in rm.pairs
    )
    want = torch.autograd.grad(0.3 * loop, params)
    start = [torch.randn_like(p) for p in params]
    for i, p in enumerate(params):
        p.grad = start[i].clone() if i % 2 == 0 else None  # some with a gradient already, some without
    rm.add_penalty_gradient()
    for i, (p, w) in enumerate(zip(params, want)):
        expected = w + start[i] if i % 2 == 0 else w
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-6)


# -- GM-LoRA: selected directions only vs autograd + masking
@pytest.mark.parametrize("leading", [(24,), (3, 8)])
def test_selective_lora_backward_matches_autograd_then_masking(leading):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*leading, 20, generator=g, requires_grad=True)
    A = torch.randn(6, 20, generator=g, requires_grad=True)
    B = torch.randn(12, 6, generator=g, requires_grad=True)
    gy = torch.randn(*leading, 12, generator=g)
    idx = torch.tensor([1, 4, 5])
    y_ref = lora_branch(x, A, B, 0.5)
    gx_ref, gA_ref, gB_ref = torch.autograd.grad(y_ref, (x, A, B), gy)
    keep = torch.zeros(6, dtype=torch.bool)
    keep[idx] = True
    gA_ref[~keep] = 0
    gB_ref[:, ~keep] = 0
    y = SelectiveLoraBranch.apply(x, A, B, idx, 0.5)
    gx, gA, gB = torch.autograd.grad(y, (x, A, B), gy)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gA, gA_ref)
    torch.testing.assert_close(gB, gB_ref)
    assert torch.all(gA[~keep] == 0) and torch.all(gB[:, ~keep] == 0)


# -- CPU peak memory against allocations of known size
def test_cpu_peak_extra_bytes_sees_the_largest_live_set():
    mib = 2**20

    def fn():
        a = torch.empty(mib, dtype=torch.uint8)
        b = torch.empty(2 * mib, dtype=torch.uint8)  # 3 MiB live here
        del a, b
        c = torch.empty(mib, dtype=torch.uint8)  # 1 MiB: below the earlier peak
        del c

    peak = cpu_peak_extra_bytes(fn)
    assert 3 * mib <= peak < 3 * mib + 64 * 1024


# -- the command and the scripts ------------------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bad_flags_are_one_line_errors(capsys):
    assert cli_main(["bench", "--methods", "rm-lora/grad,no-such-method", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rmlora bench: error: unknown methods ['no-such-method']") and "\n" not in err
    assert cli_main(["bench", "--model", "gpt5", "--quiet"]) == 2
    assert "unknown model shape" in capsys.readouterr().err


def test_step_time_script_is_the_rmlora_bench_command(capsys):
    saved = os.path.join(ROOT, "bench", "results", "cpu-llama.json")
    assert cli_main(["bench", "--report", saved]) == 0
    expected = capsys.readouterr().out
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")}
    script = os.path.join(ROOT, "bench", "step_time.py")
    out = subprocess.run([sys.executable, script, "--report", saved], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout == expected and "rm-lora/strict" in expected


def test_hooks_ab_loads_the_other_copy_as_its_own_module_tree(tmp_path):
    """The other copy's modules import `rmlora.…`: they must get the other copy's modules, not this checkout's."""
    shutil.copytree(os.path.join(ROOT, "src", "rmlora"), tmp_path / "rmlora")
    spec = importlib.util.spec_from_file_location("hooks_ab", os.path.join(ROOT, "bench", "hooks_ab.py"))
    hooks_ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks_ab)
    other = hooks_ab.load_package(str(tmp_path))
    assert other.RMLora is not RMLora and other.RMLoraConfig is not RMLoraConfig
    # where the code runs from (inspect.getfile of a class would look its module name up in sys.modules)
    assert other.RMLora.before_optimizer_step.__code__.co_filename.startswith(str(tmp_path))
    assert sys.modules["rmlora.core.rm_lora"].__file__.startswith(os.path.join(ROOT, "src"))
    assert sys.modules["rmlora"].RMLora is RMLora
