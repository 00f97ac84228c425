"""The methods layer: typed settings, the TrainingMethod defaults and versioned state, each method's ΔW pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import randomize_lora_b, tiny_bert
from rmlora import ConfigError, RMLoraConfig, find_lora_pairs
from rmlora.config import METHODS
from rmlora.methods import (
    AdaLoraArguments,
    LoraArguments,
    MethodSettings,
    SoraArguments,
    TrainingMethod,
    build_training_method,
    delta_weight_pairs,
    prepare_model,
)

LORA = LoraArguments(lora_r=4, lora_alpha=8, target_modules="query,value")
SETTINGS = {"adalora": AdaLoraArguments(adalora_init_r=4, adalora_target_r=2), "sora": SoraArguments()}


def make(method: str):
    config = RMLoraConfig(method=method)
    model = prepare_model(tiny_bert(), config, LORA, task_type="SEQ_CLS", total_steps=6, **SETTINGS)
    return model, config


# -- settings ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lora", "sora"])
def test_a_misspelt_setting_is_an_error_naming_the_valid_ones(method):
    config = RMLoraConfig(method=method)
    with pytest.raises(ConfigError, match="unknown method setting 'total_step'") as e:
        prepare_model(tiny_bert(), config, LORA, total_step=10)
    assert "did you mean 'total_steps'" in str(e.value)
    for name in ("total_steps", "learning_rate", "adalora", "sora"):
        assert name in str(e.value)
    model = prepare_model(tiny_bert(), config, LORA)
    with pytest.raises(ConfigError, match="unknown method setting 'sora_lambda'"):
        build_training_method(model, config, sora_lambda=0.1)  # a SoRA knob belongs inside SoraArguments


def test_a_misspelt_field_of_a_method_arguments_dict_is_an_error():
    with pytest.raises(ConfigError, match="unknown SoraArguments field 'sora_lamda'") as e:
        MethodSettings.from_mapping({"sora": {"sora_lamda": 0.1}})
    assert "did you mean 'sora_lambda'" in str(e.value) and "sora_xi" in str(e.value)
    parsed = MethodSettings.from_mapping({"sora": {"sora_lambda": 0.1}, "total_steps": 7.0})
    assert parsed.sora == SoraArguments(sora_lambda=0.1) and parsed.total_steps == 7
    with pytest.raises(ConfigError, match="must be a AdaLoraArguments"):
        MethodSettings.from_mapping({"adalora": SoraArguments()})
    with pytest.raises(ConfigError, match="must be a number"):
        MethodSettings.from_mapping({"learning_rate": "fast"})


def test_the_trainer_rejects_a_misspelt_method_setting(tmp_path):
    from transformers import TrainingArguments

    from rmlora import RMLoraTrainer

    model, config = make("sora")
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1)
    with pytest.raises(ConfigError, match="unknown method setting 'sora_args'"):
        RMLoraTrainer(model=model, args=args, rmlora_config=config, method_settings={"sora_args": SoraArguments()})


# -- the base class ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_a_training_method_with_a_checked_state_version(method):
    model, config = make(method)
    m = build_training_method(model, config, **SETTINGS)
    assert isinstance(m, TrainingMethod)
    state = m.state_dict()
    assert state["version"] == type(m).state_version and state["config"] == config.to_dict()
    m.load_state_dict(state)  # its own state loads back
    with pytest.raises(ConfigError, match="unsupported .* state version 99"):
        m.load_state_dict({**state, "version": 99})
    m.set_total_steps(6)  # every method takes the hooks the Trainer calls, with or without a use for them
    with m.checkpoint_save():
        pass
    assert isinstance(m.uses_penalty, bool) and isinstance(m.export_on_save, bool)


def test_the_defaults_are_no_ops():
    model, config = make("full")
    m = build_training_method(model, config)
    assert type(m).penalty is TrainingMethod.penalty  # full fine-tuning overrides no hook
    assert float(m.penalty()) == 0.0 and m.excluded_parameters() == [] and not m.uses_penalty


# -- each method's ΔW pairs -------------------------------------------------------------------------------------
def test_core_finds_plain_lora_only_and_adalora_reads_its_own_pairs():
    model, _ = make("adalora")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "lora_E" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    assert find_lora_pairs(model) == []
    layers = dict(model.named_modules())
    pairs = delta_weight_pairs(model)
    assert len(pairs) == 4
    for pair in pairs:
        # PEFT's own ΔW: B (A ⊙ E) · scaling / (ranknum + 1e-5)
        expected = layers[pair.name].get_delta_weight("default").detach().double()
        torch.testing.assert_close(pair.delta_weight().double(), expected, rtol=1e-5, atol=1e-7)


def test_sora_pairs_carry_the_gate_that_the_forward_applies():
    model, _ = make("sora")
    randomize_lora_b(model)
    plain = {p.name: p for p in find_lora_pairs(model)}
    gated = delta_weight_pairs(model)
    assert [p.name for p in gated] == list(plain)
    layers = dict(model.named_modules())
    x = torch.randn(5, model.config.hidden_size)
    for pair in gated:
        layer = layers[pair.name]
        # the gated layer's forward minus the frozen layer's is x ΔWᵀ
        with torch.no_grad():
            applied = (layer(x) - layer.base_layer(x)).double().numpy()
        np.testing.assert_allclose(applied, (x.double() @ pair.delta_weight().double().T).numpy(), atol=1e-5)
        g = layer.sora_gate["default"].detach().double()
        core = plain[pair.name]
        naive = core.scaling * core.B.detach().double() @ torch.diag(g) @ core.A.detach().double()
        np.testing.assert_allclose(pair.delta_weight().double().numpy(), naive.numpy(), rtol=1e-5, atol=1e-8)
