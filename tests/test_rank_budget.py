"""rank-budget: σ(E), e(R) = σ_{R+1}(E) and the Eckart–Young error against dense numpy SVDs, on planted
discrepancies between tiny saved checkpoints, and the adapter's budget on a LoRA of planted intrinsic rank."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

import rmlora.analysis.checkpoints
from helpers import tiny_bert, tiny_gpt2
from rmlora.analysis.discrepancy import bound_term, discrepancy_singular_values, rank_for_error, relative_error
from rmlora.analysis.module_names import layer_type, match_names, matches_target_modules
from rmlora.analysis.rank_budget import rank_budget
from rmlora.cli.main import main as cli_main
from rmlora.errors import AdapterError, ConfigError


def truncated(E: np.ndarray, R: int) -> np.ndarray:
    U, s, Vt = np.linalg.svd(E, full_matrices=False)
    return (U[:, :R] * s[:R]) @ Vt[:R]


def planted(d_out: int, d_in: int, spectrum, rng) -> np.ndarray:
    """U diag(spectrum) Vᵀ with random orthonormal U (d_out x k), V (d_in x k)."""
    k = len(spectrum)
    U, _ = np.linalg.qr(rng.standard_normal((d_out, k)))
    V, _ = np.linalg.qr(rng.standard_normal((d_in, k)))
    return (U * np.asarray(spectrum)) @ V.T


# -- the analysis of one matrix ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 5), (5, 9), (6, 6)])
def test_singular_values_bound_terms_and_eckart_young_match_dense_svd(shape):
    rng = np.random.default_rng(0)
    W_base, W_target = rng.standard_normal(shape), rng.standard_normal(shape)
    E = W_target - W_base
    s = np.linalg.svd(E, compute_uv=False)
    sv = discrepancy_singular_values(torch.tensor(W_target) - torch.tensor(W_base))
    np.testing.assert_allclose(sv.numpy(), s, rtol=1e-12)
    for R in range(0, min(shape) + 3):
        expected_e = s[R] if R < len(s) else 0.0
        assert bound_term(sv, R) == pytest.approx(expected_e, abs=1e-12)
        # the best rank-R error is the error of the truncated SVD (Eckart–Young), computed here by numpy
        expected_err = np.linalg.norm(E - truncated(E, R)) / np.linalg.norm(E)
        assert relative_error(sv, R) == pytest.approx(expected_err, abs=1e-10)
    errors = [np.linalg.norm(E - truncated(E, R)) / np.linalg.norm(E) for R in range(min(shape) + 1)]
    for max_error in (0.9, 0.5, 0.2, 0.05):
        assert rank_for_error(sv, max_error) == next(R for R, e in enumerate(errors) if e <= max_error + 1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_planted_low_rank_discrepancy_has_zero_bound_from_rank_k(k):
    rng = np.random.default_rng(k)
    E = planted(12, 8, rng.uniform(0.5, 2.0, size=k), rng)
    sv = discrepancy_singular_values(torch.tensor(E))
    for R in range(k):
        assert bound_term(sv, R) > 0.4 and relative_error(sv, R) > 0.1
    for R in range(k, 10):
        assert bound_term(sv, R) < 1e-12 and relative_error(sv, R) < 1e-12
    assert rank_for_error(sv, 1e-9) == k


def test_zero_discrepancy_needs_rank_zero():
    sv = discrepancy_singular_values(torch.zeros(4, 3))
    assert relative_error(sv, 0) == 0.0 and rank_for_error(sv, 0.1) == 0 and bound_term(sv, 0) == 0.0


def test_names_match_across_prefixes_and_layer_types():
    base = ["encoder.layer.0.attention.self.query.weight", "encoder.layer.1.attention.self.query.weight"]
    target = ["bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.1.attention.self.query.weight"]
    assert match_names(base, target) == dict(zip(base, target))
    assert match_names(target, base) == dict(zip(target, base))
    # a suffix shared by several names is ambiguous and matches nothing
    assert match_names(["attention.self.query.weight"], target) == {}
    assert layer_type("bert.encoder.layer.3.attention.self.query") == "attention.self.query"
    assert layer_type("transformer.h.11.mlp.c_fc") == "mlp.c_fc"
    assert layer_type("classifier") == "classifier"


@pytest.mark.parametrize(
    "build, targets",
    [
        (tiny_bert, ["query", "output.dense"]),
        (tiny_bert, ["dense", "classifier"]),
        (tiny_gpt2, ["c_attn", "mlp.c_proj"]),
    ],
)
def test_target_modules_rule_is_the_one_peft_applies(build, targets):
    """The modules PEFT itself wraps with LoRA for these target_modules are the ones matches_target_modules picks."""
    model = build(seed=0)
    names = [name for name, _ in model.named_modules() if name]
    peft_model = get_peft_model(build(seed=0), LoraConfig(r=2, target_modules=targets))
    wrapped = {name.removeprefix("base_model.model.") for name in peft_model.targeted_module_names}
    assert wrapped and {n for n in names if matches_target_modules(n, targets)} == wrapped
    # suffixes match at a dot only; a whole name matches itself
    assert matches_target_modules("bert.encoder.layer.0.attention.self.query", ["query"])
    assert not matches_target_modules("bert.encoder.layer.0.attention.self.xquery", ["query"])
    assert not matches_target_modules("bert.encoder.layer.0.attention.self.query", ["self"])
    assert matches_target_modules("classifier", ["classifier"])


# -- two saved checkpoints with planted discrepancies ----------------------------------------------------------


def _plant(model, modules, k: int, seed: int, scale: float = 0.05) -> dict[str, np.ndarray]:
    """Add a rank-k E (d_out x d_in) to each named Linear/Conv1D; returns E per module path."""
    from transformers.pytorch_utils import Conv1D

    rng = np.random.default_rng(seed)
    planted_E = {}
    with torch.no_grad():
        for name in modules:
            mod = model.get_submodule(name)
            conv = isinstance(mod, Conv1D)
            d_out, d_in = (mod.weight.shape[1], mod.weight.shape[0]) if conv else tuple(mod.weight.shape)
            E = planted(d_out, d_in, scale * np.linspace(2.0, 1.0, k), rng).astype(np.float32)
            mod.weight.add_(torch.from_numpy(E.T.copy() if conv else E))
            planted_E[name] = E.astype(np.float64)
    return planted_E


def _block_modules(model):
    from transformers.pytorch_utils import Conv1D

    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, (torch.nn.Linear, Conv1D)) and (".layer." in n or ".h." in n)
    ]


@pytest.fixture(scope="module")
def bert_pair(tmp_path_factory):
    """A base saved as BertModel (keys encoder.layer...) and a fine-tune saved as BertForSequenceClassification
    (keys bert.encoder.layer...), differing by a rank-2 E in every block Linear."""
    root = tmp_path_factory.mktemp("bert")
    model = tiny_bert(seed=0)
    model.bert.save_pretrained(root / "base")
    E = _plant(model, _block_modules(model), k=2, seed=1)
    model.save_pretrained(root / "target")
    return str(root / "base"), str(root / "target"), E


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    """GPT-2 (Conv1D, stored d_in x d_out), the target sharded so that it is read through the index."""
    root = tmp_path_factory.mktemp("gpt2")
    model = tiny_gpt2(seed=0)
    model.save_pretrained(root / "base")
    E = _plant(model, _block_modules(model), k=3, seed=2)
    model.save_pretrained(root / "target", max_shard_size="20KB")
    assert os.path.exists(root / "target" / "model.safetensors.index.json")
    return str(root / "base"), str(root / "target"), E


def _same(a: str, b: str) -> bool:
    """One module path with or without a model prefix (bert., transformer.)."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def _check_against_planted(budget, E_by_module, k):
    assert len(budget.modules) == len(E_by_module)
    for m in budget.modules:
        E = next(v for name, v in E_by_module.items() if _same(name, m.module))
        assert (m.d_out, m.d_in) == E.shape
        s = np.linalg.svd(E, compute_uv=False)
        np.testing.assert_allclose(m.singular_values[:k], s[:k], rtol=1e-4)  # float32 round-off of W + E − W
        assert m.norm == pytest.approx(np.linalg.norm(E), rel=1e-4)
        for R, e, err in zip(m.ranks, m.bound_terms, m.relative_errors):
            if R >= k:
                assert e < 1e-4 * s[0] and err < 1e-3
            else:
                assert e == pytest.approx(s[R], rel=1e-4)
                assert err == pytest.approx(np.linalg.norm(E - truncated(E, R)) / np.linalg.norm(E), rel=1e-4)
        assert m.rank_for_error == k


def test_bert_base_vs_classifier_fine_tune(bert_pair):
    base, target, E = bert_pair
    budget = rank_budget(base, target, ranks=[1, 2, 4], max_error=0.1, progress=False)
    assert len(budget.modules) == 12  # q, k, v, attention.output, intermediate, output in each of 2 layers
    _check_against_planted(budget, E, k=2)
    s = budget.summary
    # Eq. 9's terms summed over layers: Σ_l σ_{R+1}(E_l), from numpy
    expected = sum(np.linalg.svd(e, compute_uv=False)[1] for e in E.values())
    assert s["per_rank"][0]["sum_bound_terms"] == pytest.approx(expected, rel=1e-4)
    assert s["uniform_rank_for_error"] == 2 and s["per_rank"][1]["modules_within_max_error"] == 12


def test_gpt2_conv1d_shapes_and_sharded_target(gpt2_pair):
    base, target, E = gpt2_pair
    budget = rank_budget(base, target, ranks=[1, 3, 8], progress=False)
    _check_against_planted(budget, E, k=3)
    shapes = {m.layer_type: (m.d_out, m.d_in) for m in budget.modules}
    # GPT-2's Conv1D stores d_in x d_out; the report is d_out x d_in (n_embd = 32)
    assert shapes == {"attn.c_attn": (96, 32), "attn.c_proj": (32, 32), "mlp.c_fc": (128, 32), "mlp.c_proj": (32, 128)}


def test_target_modules_filter(bert_pair):
    base, target, E = bert_pair
    budget = rank_budget(base, target, ranks=[1], target_modules="query,value", progress=False)
    assert sorted(m.module.split(".")[-1] for m in budget.modules) == ["query", "query", "value", "value"]
    with pytest.raises(ConfigError, match="target_modules"):
        rank_budget(base, target, target_modules="no_such_layer", progress=False)


def test_from_pretrained_fallback_reads_the_same_weights(bert_pair, monkeypatch):
    base, target, E = bert_pair
    monkeypatch.setattr(rmlora.analysis.checkpoints, "_safetensors_files", lambda path: None)
    _check_against_planted(rank_budget(base, target, ranks=[1, 2], progress=False), E, k=2)


def test_mismatched_checkpoints_raise(bert_pair, tmp_path):
    from transformers import BertConfig, BertModel

    base, target, _ = bert_pair
    other = BertModel(
        BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24)
    )
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ConfigError, match="same architecture"):
        rank_budget(base, str(tmp_path / "other"), progress=False)
    with pytest.raises(ConfigError, match="ranks"):
        rank_budget(base, target, ranks=[0, 2], progress=False)
    with pytest.raises(ConfigError, match="max_error"):
        rank_budget(base, target, max_error=1.5, progress=False)
    with pytest.raises(ConfigError, match="cannot load"):
        rank_budget(str(tmp_path / "missing"), target, progress=False)


# -- an adapter of planted intrinsic rank r < R (Section 4.1) --------------------------------------------------

R_NOMINAL, R_INTRINSIC = 4, 2
SPECTRUM = [1.0, 0.6, 0.35, 0.2, 0.1, 0.05]  # σ(E) of every targeted module, full enough to have σ_{R+1} > 0


@pytest.fixture(scope="module", params=["bert", "gpt2"])
def adapter_case(request, tmp_path_factory):
    """Base, target = base + E (known spectrum), and a LoRA adapter of R = 4 whose ΔW has rank 2."""
    root = tmp_path_factory.mktemp(request.param)
    build, targets = (tiny_bert, ["query", "value"]) if request.param == "bert" else (tiny_gpt2, ["c_attn", "c_fc"])
    model = build(seed=0)
    model.save_pretrained(root / "base")
    peft_model = get_peft_model(
        build(seed=0), LoraConfig(r=R_NOMINAL, lora_alpha=2 * R_NOMINAL, target_modules=targets)
    )
    rng = np.random.default_rng(5)
    deltas = {}
    with torch.no_grad():
        for name, mod in peft_model.named_modules():
            if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                A.copy_(torch.from_numpy(rng.standard_normal(tuple(A.shape)).astype(np.float32)))
                b = rng.standard_normal(tuple(B.shape)).astype(np.float32)
                b[:, R_INTRINSIC:] = 0.0  # ΔW = s·BA has rank exactly 2 of the nominal 4
                B.copy_(torch.from_numpy(b))
                path = name.replace("base_model.model.", "")
                deltas[path] = mod.scaling["default"] * (b.astype(np.float64) @ A.numpy().astype(np.float64))
    peft_model.save_pretrained(root / "adapter")
    E_by_module = {}
    from transformers.pytorch_utils import Conv1D

    with torch.no_grad():
        for path, delta in deltas.items():
            mod = model.get_submodule(path)
            E = planted(delta.shape[0], delta.shape[1], SPECTRUM, rng).astype(np.float32)
            mod.weight.add_(torch.from_numpy(E.T.copy() if isinstance(mod, Conv1D) else E))
            E_by_module[path] = E.astype(np.float64)
    model.save_pretrained(root / "target")
    return str(root / "base"), str(root / "target"), str(root / "adapter"), E_by_module, deltas


def test_adapter_budget_on_planted_intrinsic_rank(adapter_case):
    base, target, adapter, E_by_module, deltas = adapter_case
    budget = rank_budget(base, target, ranks=[1, 2, 4, 8], adapter=adapter, progress=False)
    assert len(budget.modules) == len(deltas) == 4
    for m in budget.modules:
        a = m.adapter
        path = next(p for p in deltas if _same(p, m.module))
        E, delta = E_by_module[path], deltas[path]
        assert (a.lora_rank, a.intrinsic_rank) == (R_NOMINAL, np.linalg.matrix_rank(delta)) == (R_NOMINAL, R_INTRINSIC)
        s = np.linalg.svd(E, compute_uv=False)
        assert a.sigma_r1 == pytest.approx(s[R_INTRINSIC], rel=1e-4)
        assert a.sigma_R1 == pytest.approx(s[R_NOMINAL], rel=1e-4)
        assert a.gap == pytest.approx(s[R_INTRINSIC] - s[R_NOMINAL], rel=1e-3)
        assert a.budget_used == pytest.approx(R_INTRINSIC / R_NOMINAL)
        assert a.error_r == pytest.approx(np.linalg.norm(E - truncated(E, R_INTRINSIC)) / np.linalg.norm(E), rel=1e-4)
        # the adapter's own ΔW (d_out x d_in) against E: catches a transposed Conv1D
        assert a.delta_error == pytest.approx(np.linalg.norm(E - delta) / np.linalg.norm(E), rel=1e-4)
    s = budget.summary["adapter"]
    assert s["mean_intrinsic_rank"] == R_INTRINSIC and s["sum_gap"] == pytest.approx(
        4 * (SPECTRUM[2] - SPECTRUM[4]), rel=1e-3
    )


def test_adapter_on_another_base_raises(adapter_case, bert_pair, gpt2_pair):
    _, _, adapter, _, _ = adapter_case
    is_bert = "bert" in adapter
    base, target, _ = gpt2_pair if is_bert else bert_pair
    with pytest.raises(AdapterError, match="base"):
        rank_budget(base, target, adapter=adapter, progress=False)


def test_adapter_with_mismatched_shapes_raises(adapter_case, tmp_path):
    from safetensors.torch import load_file, save_file

    base, target, adapter, _, _ = adapter_case
    tensors = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    key = next(k for k in tensors if "lora_A" in k)
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 1)
    os.makedirs(tmp_path / "bad")
    save_file(tensors, str(tmp_path / "bad" / "adapter_model.safetensors"))
    with (
        open(os.path.join(adapter, "adapter_config.json")) as f,
        open(tmp_path / "bad" / "adapter_config.json", "w") as g,
    ):
        g.write(f.read())
    with pytest.raises(AdapterError, match="another base"):
        rank_budget(base, target, adapter=str(tmp_path / "bad"), progress=False)


# -- the command ------------------------------------------------------------------------------------------------


def test_cli_json_table_figure_and_errors(adapter_case, tmp_path, capsys):
    import matplotlib

    base, target, adapter, _, deltas = adapter_case
    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a notebook's backend: writing the figure must not switch it
    assert (
        cli_main(
            [
                "rank-budget",
                "--base",
                base,
                "--target",
                target,
                "--ranks",
                "1,2,4",
                "--json",
                "--adapter",
                adapter,
                "--output_dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["ranks"] == [1, 2, 4] and len(out["modules"]) == len(deltas)
    assert all(m["adapter"]["intrinsic_rank"] == R_INTRINSIC for m in out["modules"])
    assert matplotlib.get_backend() == "svg"
    matplotlib.use(backend)
    assert os.path.getsize(tmp_path / "rank_budget.png") > 0
    with open(tmp_path / "rank_budget.json") as f:
        assert json.load(f)["summary"] == out["summary"]

    assert cli_main(["rank-budget", "--base", base, "--target", target, "--ranks", "2,4"]) == 0
    text = capsys.readouterr().out
    assert "model summary" in text and "e_F(4)" in text

    assert cli_main(["rank-budget", "--base", base, "--target", target, "--ranks", "two"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rmlora rank-budget: error:") and "\n" not in err


def test_adalora_adapter_is_refused(adapter_case, tmp_path):
    import shutil

    base, target, adapter, _, _ = adapter_case
    shutil.copytree(adapter, tmp_path / "ada")
    with open(tmp_path / "ada" / "adapter_config.json") as f:
        config = json.load(f)
    config["peft_type"] = "ADALORA"
    with open(tmp_path / "ada" / "adapter_config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(AdapterError, match="ADALORA adapter"):
        rank_budget(base, target, adapter=str(tmp_path / "ada"), progress=False)
