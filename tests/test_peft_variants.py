"""PEFT's LoRA variants (init_lora_weights, DoRA, rsLoRA, LoRA+) under lora and rm-lora.

Each variant is trained a few steps through the project's API (prepare_model, create_rmlora_optimizer); then

(a) the merged model (PEFT's merge_and_unload) equals the *original* pre-trained model with the project's ΔW
    (LoraPair.delta_weight, what the diagnostics measure) added to its weights;
(b) the adapter the project exports, loaded on a fresh *original* base model, reproduces the trained model;
(c) LoRA+: B's learning rate is ratio × A's, and strict masking still leaves the unselected rows untouched;
(d) DoRA's magnitudes count as trainable, as PEFT counts them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import typing
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel

from helpers import run_train, save_text_model, tiny_bert, tiny_gpt2, tmp_env, token_batch
from rmlora.analysis.diagnostics import diagnose, diagnose_model
from rmlora.config import RMLoraConfig
from rmlora.errors import ConfigError
from rmlora.harness.arguments import parse_args
from rmlora.harness.labels import variant_name
from rmlora.io.adapters import load_adapter, relative_module_name
from rmlora.methods import LoraArguments, build_training_method, prepare_model
from rmlora.methods.lora import LORA_INITS, LORA_INITS_REFUSED
from rmlora.methods.pairs import delta_weight_pairs
from rmlora.training.optimizer import create_rmlora_optimizer

R = 4
VARIANTS = {
    "gaussian": {"init_lora_weights": "gaussian"},
    "orthogonal": {"init_lora_weights": "orthogonal"},
    "olora": {"init_lora_weights": "olora"},
    "pissa": {"init_lora_weights": "pissa"},
    "pissa_niter_2": {"init_lora_weights": "pissa_niter_2"},
    "dora": {"use_dora": True},
    "rslora": {"use_rslora": True},
    "loraplus": {},
    "pissa+dora": {"init_lora_weights": "pissa", "use_dora": True},
}
LORAPLUS_RATIO = 16.0


def _model(variant: str, method: str, seed: int = 0):
    base = tiny_bert(seed=seed)
    for m in base.modules():  # no dropout: outputs must be comparable across models
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    original = copy.deepcopy(base.state_dict())
    lora = LoraArguments(lora_r=R, target_modules="query,value", modules_to_save="classifier", **VARIANTS[variant])
    model = prepare_model(base, RMLoraConfig(method=method, r_hat=2), lora, task_type="SEQ_CLS")
    return model, original


def _fresh_original(original: dict):
    base = tiny_bert(seed=123)  # other random weights, replaced by the original ones
    base.load_state_dict(original)
    return base.eval()


def _train(model, method: str, variant: str, steps: int = 3):
    ratio = LORAPLUS_RATIO if variant == "loraplus" else None
    optimizer = create_rmlora_optimizer(
        model, torch.optim.AdamW, RMLoraConfig(method=method, r_hat=2), loraplus_lr_ratio=ratio, lr=2e-2
    )
    model.train()
    for step in range(steps):
        loss = model(**token_batch(seed=step)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


def _logits(model, seed: int = 99):
    batch = token_batch(seed=seed)
    with torch.no_grad():
        return model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("method", ["lora", "rm-lora"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_merged_model_is_the_original_plus_delta_w_and_the_adapter_reloads_on_the_original(variant, method, tmp_path):
    torch.manual_seed(0)
    model, original = _model(variant, method)
    _train(model, method, variant)
    trained = _logits(model)

    # (a) ΔW as the project measures it, added to the original weights, is PEFT's merged model
    expected = _fresh_original(original)
    modules = dict(expected.named_modules())
    with torch.no_grad():
        for pair in delta_weight_pairs(model):
            modules[relative_module_name(pair.name)].weight += pair.delta_weight()
        head = model.base_model.model.classifier.modules_to_save["default"]
        expected.classifier.load_state_dict(head.state_dict())
    merged = copy.deepcopy(model).merge_and_unload()
    torch.testing.assert_close(_logits(merged), trained, atol=1e-5, rtol=0)
    torch.testing.assert_close(_logits(expected), trained, atol=1e-5, rtol=0)

    # (b) the exported adapter on a fresh original base model gives the trained model's outputs
    method_obj = build_training_method(model, RMLoraConfig(method=method, r_hat=2))
    method_obj.export(str(tmp_path / "adapter"))
    reloaded = load_adapter(_fresh_original(original), str(tmp_path / "adapter"))
    torch.testing.assert_close(_logits(reloaded), trained, atol=1e-5, rtol=0)
    # and the folder's own ΔW diagnostics agree with the trained model's (DoRA's ΔW needs the base weight)
    if not VARIANTS[variant].get("use_dora"):
        from_folder = diagnose(str(tmp_path / "adapter")).modules
        from_model = diagnose_model(model).modules
        for f, m in zip(from_folder, from_model, strict=True):
            torch.testing.assert_close(
                torch.tensor(f.singular_values[: len(m.singular_values)]),
                torch.tensor(m.singular_values),
                atol=1e-5,
                rtol=1e-4,
            )


@pytest.mark.parametrize("variant", ["olora", "pissa", "pissa_niter_2", "pissa+dora"])
def test_a_base_rewriting_init_starts_at_delta_w_zero_though_ba_is_not(variant):
    model, _ = _model(variant, "lora")
    pairs = delta_weight_pairs(model)
    assert all(float((p.B @ p.A).detach().abs().max()) > 1e-3 for p in pairs)  # PiSSA / OLoRA: BA ≠ 0 at step 0
    for p in pairs:
        assert float(p.delta_weight().abs().max()) < 1e-5
    assert diagnose_model(model).summary["mean_rank"] == 0


def test_loraplus_gives_b_ratio_times_a_lr_and_strict_masks_still_hold():
    torch.manual_seed(0)
    model, _ = _model("loraplus", "rm-lora")
    pairs = delta_weight_pairs(model)
    a_ids, b_ids = {id(p.A) for p in pairs}, {id(p.B) for p in pairs}
    before = {p.name: (p.A.detach().clone(), p.B.detach().clone()) for p in pairs}
    optimizer = _train(model, "rm-lora", "loraplus", steps=1)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert {lr_of[i] for i in a_ids} == {2e-2}
    assert {lr_of[i] for i in b_ids} == {2e-2 * LORAPLUS_RATIO}
    for p in pairs:
        a_rows, b_cols = optimizer.rmlora.directions(0)[p.name]
        A0, B0 = before[p.name]
        kept_a = [i for i in range(R) if i not in a_rows.tolist()]
        kept_b = [i for i in range(R) if i not in b_cols.tolist()]
        assert len(kept_a) == R - 2 and torch.equal(p.A[kept_a], A0[kept_a])
        assert torch.equal(p.B[:, kept_b], B0[:, kept_b])
        assert not torch.equal(p.A[a_rows], A0[a_rows])  # the selected ones did move


@pytest.mark.parametrize("optimizer_cls, expected", [(torch.optim.AdamW, 0.01), (torch.optim.SGD, 0.0)])
def test_loraplus_keeps_the_optimizers_own_weight_decay(optimizer_cls, expected):
    """Without weight_decay, LoRA+ decays the LoRA matrices as the optimizer would alone (AdamW: 0.01), not by PEFT's
    factory default of 0."""
    model, _ = _model("loraplus", "rm-lora")
    optimizer = create_rmlora_optimizer(model, optimizer_cls, loraplus_lr_ratio=4.0, lr=1e-3)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    pairs = delta_weight_pairs(model)
    assert {decay_of[id(m)] for p in pairs for m in (p.A, p.B)} == {expected}
    plain = optimizer_cls([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    assert plain.param_groups[0]["weight_decay"] == expected  # the optimizer's own default, independently


@pytest.mark.parametrize("variant", ["olora", "pissa"])
def test_exporting_a_base_rewriting_init_leaves_the_model_in_training_mode(variant, tmp_path):
    """PEFT's weight conversion loads the initial adapter, which switches the model to eval mode (dropout off)."""
    model, _ = _model(variant, "lora")
    model.train()
    build_training_method(model, RMLoraConfig(method="lora")).export(str(tmp_path / "adapter"))
    assert model.training and all(m.training for m in model.modules())


def test_dora_magnitudes_count_as_trainable_as_peft_counts_them():
    model, _ = _model("dora", "rm-lora")
    method = build_training_method(model, RMLoraConfig(method="rm-lora", r_hat=2))
    magnitudes = [p for n, p in model.named_parameters() if "lora_magnitude_vector" in n]
    assert magnitudes and all(p.requires_grad for p in magnitudes)
    expected = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert method.param_counts() == {"trainable": expected, "inference": expected}
    assert method.param_counts()["trainable"] == PeftModel.get_nb_trainable_parameters(model)[0]
    plain = build_training_method(_model("gaussian", "rm-lora")[0], RMLoraConfig(method="rm-lora", r_hat=2))
    assert expected - plain.param_counts()["trainable"] == sum(p.numel() for p in magnitudes)
    assert all(not (p.A is m or p.B is m) for p in method.pairs for m in magnitudes)  # never masked


# -- flags, refusals ------------------------------------------------------------------------------------


def test_every_init_peft_accepts_is_a_flag_or_refused_with_its_reason():
    hint = typing.get_type_hints(LoraConfig)["init_lora_weights"]
    names = {a for arg in typing.get_args(hint) for a in typing.get_args(arg) if isinstance(a, str)}
    assert names, hint
    for name in names:
        if name.startswith("pissa_niter_"):
            assert LoraArguments(init_lora_weights="pissa_niter_3").init == "pissa_niter_3"
        elif name in LORA_INITS_REFUSED:
            with pytest.raises(ConfigError, match=f"init_lora_weights='{name}' is not available as a flag"):
                LoraArguments(init_lora_weights=name)
        else:
            assert name in LORA_INITS and LoraArguments(init_lora_weights=name).init == name
    assert LoraArguments(init_lora_weights="True").init is True
    assert LoraArguments(init_lora_weights=False).init is False
    with pytest.raises(ConfigError, match="unknown init_lora_weights 'pisa'"):
        LoraArguments(init_lora_weights="pisa")
    with pytest.raises(ConfigError, match="needs an even lora_r"):
        LoraArguments(lora_r=3, init_lora_weights="orthogonal")
    with pytest.raises(ConfigError, match="loraplus_lr_ratio must be a positive number"):
        LoraArguments(loraplus_lr_ratio=0.0)


@pytest.mark.parametrize(
    "method, flags, message",
    [
        ("adalora", ["--use_dora"], "--use_dora True: AdaLoRA trains its own SVD triplets"),
        ("adalora", ["--init_lora_weights", "pissa"], "--init_lora_weights pissa: AdaLoRA"),
        ("sora", ["--loraplus_lr_ratio", "16"], "--loraplus_lr_ratio 16.0: SoRA gates B's columns"),
        ("full", ["--use_dora"], "full fine-tuning has no adapter"),
        ("rm-lora", ["--init_lora_weights", "mica"], "mica freezes B (only A trains), so rm-lora's penalty"),
        ("lora", ["--init_lora_weights", "eva"], "EVA initialises from the SVD of layer activations"),
    ],
)
def test_a_variant_a_method_cannot_take_is_refused_in_one_line(method, flags, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--method", method, *flags])
    assert "\n" not in str(info.value)


def test_rm_lora_takes_every_variant_flag():
    argv = ["--model_name_or_path", "m", "--output_dir", "o", "--method", "rm-lora", "--use_dora"]
    args = parse_args(argv + ["--init_lora_weights", "pissa_niter_4", "--loraplus_lr_ratio", "16"])
    assert args[3].variant() == {"init_lora_weights": "pissa_niter_4", "use_dora": True, "loraplus_lr_ratio": 16.0}
    assert parse_args(argv[:-1])[3].variant() == {}


@pytest.mark.parametrize("method", ["lora", "adalora", "sora"])
def test_a_gpt2_adapter_sets_fan_in_fan_out_itself_so_peft_never_warns(method):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        model = prepare_model(
            tiny_gpt2(), RMLoraConfig(method=method), LoraArguments(lora_r=R), task_type="SEQ_CLS", total_steps=10
        )
    assert model.peft_config["default"].fan_in_fan_out is True
    assert model.peft_config["default"].target_modules == {"c_attn"}


# -- through the CLI and a grid ---------------------------------------------------------------------------


def test_rmlora_train_with_pissa_and_dora_writes_an_adapter_for_the_original_model(tmp_path, monkeypatch):
    tmp_env(monkeypatch, tmp_path)
    model_dir = save_text_model(str(tmp_path / "tiny-bert"))
    text = os.path.join(os.path.dirname(__file__), "fixtures", "text", "tweets.csv")
    out = tmp_path / "run"
    flags = ["--model_name_or_path", model_dir, "--task_name", "text", "--train_file", text]
    flags += ["--text_column", "text", "--label_column", "sentiment", "--file_encoding", "latin-1"]
    flags += ["--max_train_samples", "16"]
    flags += ["--validation_split_percentage", "25", "--num_train_epochs", "1", "--learning_rate", "1e-2"]
    flags += ["--method", "rm-lora", "--init_lora_weights", "pissa_niter_2", "--use_dora", "--loraplus_lr_ratio", "4"]
    record = run_train(flags, out)
    assert record["variant"] == {"init_lora_weights": "pissa_niter_2", "use_dora": True, "loraplus_lr_ratio": 4.0}
    adapter_config = json.load(open(out / "adapter_config.json", encoding="utf-8"))
    assert adapter_config["init_lora_weights"] is True and adapter_config["r"] == 2 * R  # PEFT's conversion
    assert adapter_config["use_dora"] is True
    # the diagnostics measured ΔW from the original weight: DoRA's rescaling makes it full-rank, never 0
    assert record["diagnostics"]["mean_rank"] > 0


def test_compare_grid_over_init_lora_weights_gives_each_variant_its_own_row(tmp_path, monkeypatch):
    """`rmlora compare --grid init_lora_weights=true,pissa_niter_2 --grid learning_rate=...`: the learning rate is
    chosen on validation per variant, and the report has one row per variant, named after it where not default."""
    from helpers import tiny_rte_flags
    from rmlora.cli.main import main
    from rmlora.io.run_files import read_results

    tmp_env(monkeypatch, tmp_path)
    model_dir = save_text_model(str(tmp_path / "tiny-bert"))
    out = str(tmp_path / "cmp")
    argv = ["compare", "--output_dir", out, "--methods", "rm-lora", "--ranks", "4", "--seeds", "0", "--no_progress"]
    argv += ["--grid", "init_lora_weights=true,pissa_niter_2", "--grid", "learning_rate=1e-2,2e-2"]
    assert main(argv + tiny_rte_flags(model_dir, learning_rate=None) + ["--num_train_epochs", "1"]) == 0
    records = read_results(os.path.join(out, "results.jsonl")).records
    assert sorted(r["cell"] for r in records) == [
        "rm-lora_r4_init_lora_weights=pissa_niter_2_learning_rate=1e-2_s0",
        "rm-lora_r4_init_lora_weights=pissa_niter_2_learning_rate=2e-2_s0",
        "rm-lora_r4_init_lora_weights=true_learning_rate=1e-2_s0",
        "rm-lora_r4_init_lora_weights=true_learning_rate=2e-2_s0",
    ]
    assert {r["variant_name"] for r in records} == {None, "PiSSA (2 iter.)"}
    lines = open(os.path.join(out, "report.md"), encoding="utf-8").read().splitlines()
    rows = [line.split("|")[1].strip() for line in lines if line.startswith("| RM-LoRA")]
    assert len(rows) == 4  # Table 1 and Table 5, two rows each
    assert {re.sub(r"\(learning_rate=[0-9e.-]+\)", "(lr)", r) for r in rows} == {
        "RM-LoRA R=4 (lr)",
        "RM-LoRA R=4 + PiSSA (2 iter.) (lr)",
    }


def test_variant_names():
    assert variant_name(None) == variant_name({}) == ""
    assert variant_name({"init_lora_weights": "olora", "use_dora": True}) == "OLoRA + DoRA"
    assert variant_name({"use_rslora": True, "loraplus_lr_ratio": 16.0}) == "rsLoRA + LoRA+ ×16"
    assert variant_name(LoraArguments(init_lora_weights="gaussian").variant()) == "Gaussian init"


def test_help_documents_the_variant_flags(capsys):
    from rmlora.cli.main import main

    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag, words in (
        ("--init_lora_weights", "pissa_niter_K"),
        ("--use_dora", "magnitude"),
        ("--loraplus_lr_ratio", "create_loraplus_optimizer"),
    ):
        assert flag in text and words in text, flag


def test_dora_on_an_embedding_is_refused_before_training(monkeypatch):
    """DoRA's ΔW is measured on Linear / Conv1D layers: an Embedding target is a one-line error up front, not a
    failure in the diagnostics after training."""
    import rmlora.methods.lora as lora_module

    lora = LoraArguments(lora_r=R, target_modules="word_embeddings,query", use_dora=True)
    config = RMLoraConfig(method="rm-lora", r_hat=2)
    with pytest.raises(
        ConfigError,
        match=r"--use_dora on bert\.embeddings\.word_embeddings, a Embedding: .* Linear and Conv1D layers only",
    ):
        prepare_model(tiny_bert(), config, lora, task_type="SEQ_CLS")
    # without the check PEFT builds the model, and the diagnostics that end every run fail on it
    monkeypatch.setattr(lora_module, "_refuse_dora_beyond_linear", lambda model: None)
    model = prepare_model(tiny_bert(), config, lora, task_type="SEQ_CLS")
    with pytest.raises((NotImplementedError, KeyError)):
        diagnose_model(model)
