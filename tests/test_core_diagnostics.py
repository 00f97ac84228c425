"""ΔW diagnostics against dense SVD of PEFT's own delta weight."""

import json

import numpy as np
import pytest
import torch

from helpers import peft_bert, tiny_bert, tiny_gpt2
from rmlora import AdapterError, diagnose, diagnose_adapter, diagnose_model
from rmlora.cli.main import main as cli


def dense_reference(layer, adapter="default"):
    """Numbers from the dense ΔW = scaling·BA in float64 (checked against PEFT's get_delta_weight), via numpy."""
    A = layer.lora_A[adapter].weight.detach().double()
    B = layer.lora_B[adapter].weight.detach().double()
    dw = (layer.scaling[adapter] * B @ A).numpy()
    peft_dw = layer.get_delta_weight(adapter).detach().double().numpy()
    if getattr(layer, "fan_in_fan_out", False):
        peft_dw = peft_dw.T  # Conv1D stores the weight as d_in x d_out
    np.testing.assert_allclose(dw, peft_dw, atol=1e-6)
    d_out = dw.shape[0]
    sv = np.linalg.svd(dw, compute_uv=False)
    orth = float(((dw @ dw.T - np.eye(d_out)) ** 2).sum())
    return dw, sv, orth


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_matches_dense_svd(kind):
    if kind == "bert":
        model = peft_bert(r=4, rank_pattern={"value": 2})
    else:
        from peft import LoraConfig, get_peft_model

        from helpers import randomize_lora_b

        model = get_peft_model(tiny_gpt2(), LoraConfig(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True))
        randomize_lora_b(model)
    diag = diagnose_model(model)
    layers = lora_layers(model)
    assert len(diag.modules) == len(layers)
    for m in diag.modules:
        dw, sv, orth = dense_reference(layers[m.module])
        assert (m.d_out, m.d_in) == dw.shape
        k = len(m.singular_values)
        np.testing.assert_allclose(m.singular_values, sv[:k], rtol=1e-6, atol=1e-9)
        assert np.all(sv[k:] < 1e-9 * sv[0])  # the rest of the dense spectrum is zero
        assert m.rank == np.linalg.matrix_rank(dw, tol=sv[0] * max(dw.shape) * np.finfo(np.float32).eps)
        np.testing.assert_allclose(m.orthogonality_loss, orth, rtol=1e-8)
        assert m.orthogonality_loss >= m.d_out - m.rank  # the Table-5 lower bound
        p = sv / sv.sum()
        p = p[p > 0]
        np.testing.assert_allclose(m.effective_rank, np.exp(-(p * np.log(p)).sum()), rtol=1e-6)
        np.testing.assert_allclose(m.stable_rank, (sv**2).sum() / sv[0] ** 2, rtol=1e-6)


def test_planted_low_rank_and_tolerance():
    model = peft_bert(r=4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p[:, 2:] = 0  # rank(ΔW) = 2 of R = 4
    diag = diagnose_model(model)
    assert [m.rank for m in diag.modules] == [2] * 4
    assert all(m.orthogonality_loss >= m.d_out - 2 for m in diag.modules)
    # a tolerance just below 1 keeps only σ_max
    assert all(m.rank == 1 for m in diagnose_model(model, rtol=0.999999).modules)
    assert diag.summary["mean_rank_ratio"] == 0.5


def test_penalty_terms_match_naive():
    model = peft_bert(r=4)
    diag = {m.module: m for m in diagnose_model(model).modules}
    for name, layer in lora_layers(model).items():
        A = layer.lora_A["default"].weight.detach().double()
        B = layer.lora_B["default"].weight.detach().double()
        np.testing.assert_allclose(
            diag[name].penalty_a, float(((A @ A.T - torch.eye(4, dtype=torch.float64)) ** 2).sum()), rtol=1e-9
        )
        np.testing.assert_allclose(
            diag[name].penalty_b, float(((B.T @ B - torch.eye(4, dtype=torch.float64)) ** 2).sum()), rtol=1e-9
        )


def test_adapter_dir_equals_model_and_inspect_cli(tmp_path, capsys):
    model = peft_bert(r=4, rank_pattern={"value": 2}, lora_alpha=12, alpha_pattern={"query": 3})
    model.save_pretrained(tmp_path)
    from_model = diagnose(model).to_dict()
    from_dir = diagnose(str(tmp_path)).to_dict()

    def strip(name):
        return name.replace("base_model.model.", "")

    for a, b in zip(from_model["modules"], from_dir["modules"]):
        assert strip(a["module"]) == strip(b["module"])
        np.testing.assert_allclose(a["singular_values"], b["singular_values"], rtol=1e-9)
    assert cli(["inspect", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["modules"]) == 4 and "summary" in out
    assert {"module", "rank", "orthogonality_loss", "effective_rank", "stable_rank", "singular_values"} <= set(
        out["modules"][0]
    )
    assert cli(["inspect", str(tmp_path)]) == 0
    assert "mean orthogonality loss" in capsys.readouterr().out


def test_bad_adapter_dirs(tmp_path, capsys):
    with pytest.raises(AdapterError, match="does not exist"):
        diagnose_adapter(str(tmp_path / "nope"))
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterError, match="no adapter_model.safetensors"):
        diagnose_adapter(str(tmp_path))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(AdapterError, match="not a readable safetensors"):
        diagnose_adapter(str(tmp_path))
    # the CLI answers with one line and exit code 2, no traceback
    assert cli(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error" in err and "Traceback" not in err


def test_sora_gated_model_diagnostics_fold_the_gate(tmp_path):
    """A live SoRA model's ΔW is scaling·B·diag(g)·A: it must equal the exported (folded, pruned) adapter's."""
    from helpers import randomize_lora_b
    from rmlora import RMLoraConfig
    from rmlora.methods import LoraArguments, build_training_method, prepare_model
    from rmlora.methods.sora import SoraArguments

    cfg = RMLoraConfig(method="sora")
    settings = {"sora": SoraArguments(), "total_steps": 1, "learning_rate": 1e-3}
    model = prepare_model(
        tiny_bert(), cfg, LoraArguments(lora_r=4, target_modules="query,value"), task_type="SEQ_CLS", **settings
    )
    randomize_lora_b(model)
    method = build_training_method(model, cfg, **settings)
    with torch.no_grad():
        for g in method.gates:
            g.gate[1] = 0.0  # one pruned direction per module
    live = diagnose_model(model)
    method.export(str(tmp_path))
    exported = diagnose_adapter(str(tmp_path))

    def strip(name):
        return name.replace("base_model.model.", "")

    by_name = {strip(m.module): m for m in exported.modules}
    for m in live.modules:
        e = by_name[strip(m.module)]
        assert e.lora_rank == 3 and m.rank == 3
        np.testing.assert_allclose(m.singular_values[:3], e.singular_values, rtol=1e-5)


def test_adalora_model_diagnostics_match_peft_delta_weight():
    from peft import AdaLoraConfig, get_peft_model

    model = get_peft_model(
        tiny_bert(), AdaLoraConfig(init_r=4, target_r=2, target_modules=["query", "value"], total_step=10)
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "lora_E" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "lora_E")}
    diag = diagnose_model(model)
    assert len(diag.modules) == len(layers) == 4
    for m in diag.modules:
        dw = layers[m.module].get_delta_weight("default").detach().double().numpy()
        sv = np.linalg.svd(dw, compute_uv=False)
        np.testing.assert_allclose(m.singular_values, sv[: len(m.singular_values)], rtol=1e-4, atol=1e-7)
