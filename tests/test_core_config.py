import dataclasses

import pytest
import torch

from helpers import peft_bert, token_batch
from rmlora import ConfigError, RMLora, RMLoraConfig


def test_defaults_are_the_validated_settings_of_the_readme():
    # README, "Choosing the settings": chosen on docs/RESULTS.md's experiment 7
    c = RMLoraConfig()
    assert (c.method, c.reg_form, c.reg_reduction, c.mask_sampling) == ("rm-lora", "frd", "normalized", "shared")
    assert (c.reg_weight, c.r_hat, c.step_compensation, c.mask_mode) == (0.001, 0.75, "none", "strict")
    assert c.mask_first_step and c.mask_before_clipping


def test_paper_preset_is_eq10_summed():
    c = RMLoraConfig.paper()
    assert (c.reg_form, c.reg_reduction, c.mask_sampling, c.mask_mode) == ("squared", "sum", "shared", "strict")
    assert (c.reg_weight, c.r_hat) == (0.001, 0.5)
    assert RMLoraConfig.paper(reg_weight=1e-3, reg_reduction="mean").reg_reduction == "mean"
    assert RMLoraConfig(reg_form="frd").reg_form == "frd"


def test_released_code_preset():
    c = RMLoraConfig.released_code()
    assert (c.reg_form, c.reg_reduction, c.reg_weight) == ("frobenius", "mean", 0.1)
    assert (c.mask_sampling, c.mask_mode) == ("independent", "grad")
    assert not c.mask_first_step and not c.mask_before_clipping
    assert RMLoraConfig.released_code(r_hat=2).r_hat == 2
    assert RMLoraConfig.released_code() == RMLoraConfig.released_code("v2")


def test_released_code_variants_differ_only_in_shared_or_independent_b_directions():
    # the release's lora_type v1 (its README) reuses A's sampled rows for B's columns, v2 (run_glue.sh) draws anew
    v1, v2 = RMLoraConfig.released_code("v1"), RMLoraConfig.released_code(variant="v2")
    differing = {f.name for f in dataclasses.fields(RMLoraConfig) if getattr(v1, f.name) != getattr(v2, f.name)}
    assert differing == {"mask_sampling"}
    assert (v1.mask_sampling, v2.mask_sampling) == ("shared", "independent")
    with pytest.raises(ConfigError, match="unknown released-code variant 'frd'"):
        RMLoraConfig.released_code("frd")


def surviving_directions(model, rm, step):
    """{module: (rows of A, columns of B) whose gradient survives the masks of `step`}, read off the gradients."""
    model.zero_grad()
    (model(**token_batch(seed=step)).loss + rm.penalty()).backward()
    rm.before_optimizer_step(None, step)
    found = {}
    for name, p in model.named_parameters():
        if "lora_A" in name:
            found.setdefault(name.split(".lora_")[0], {})["A"] = set(
                torch.nonzero(p.grad.abs().sum(1)).flatten().tolist()
            )
        elif "lora_B" in name:
            found.setdefault(name.split(".lora_")[0], {})["B"] = set(
                torch.nonzero(p.grad.abs().sum(0)).flatten().tolist()
            )
    return found


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_released_code_variants_mask_shared_resp_independent_directions(variant):
    model = peft_bert(r=8)
    rm = RMLora(model, RMLoraConfig.released_code(variant))
    seen_different = False
    for step in (1, 2, 3):  # step 0 is not masked by either variant
        found = surviving_directions(model, rm, step)
        assert len(found) == 4  # query and value of two layers
        for dirs in found.values():
            assert len(dirs["A"]) == 4 and len(dirs["B"]) == 4  # r̂ = R/2 of each, the rest masked to 0
            if variant == "v1":
                assert dirs["A"] == dirs["B"]
            seen_different |= dirs["A"] != dirs["B"]
    assert seen_different == (variant == "v2")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"method": "dora"}, "unknown method"),
        ({"reg_form": "l1"}, "unknown reg_form"),
        ({"reg_reduction": "max"}, "unknown reg_reduction"),
        ({"mask_sampling": "x"}, "unknown mask_sampling"),
        ({"mask_mode": "soft"}, "unknown mask_mode"),
        ({"r_hat": 0}, "at least 1"),
        ({"r_hat": -2}, "at least 1"),
        ({"r_hat": 1.5}, "(0, 1]"),
        ({"r_hat": 0.0}, "(0, 1]"),
        ({"reg_weight": -0.1}, "≥ 0"),
    ],
)
def test_bad_values_raise_typed_errors(kwargs, fragment):
    with pytest.raises(ConfigError, match=None) as e:
        RMLoraConfig(**kwargs)
    assert fragment in str(e.value)


def test_r_hat_fraction_and_bounds():
    c = RMLoraConfig(r_hat=0.5)
    assert [c.r_hat_for(r) for r in (1, 2, 3, 8, 16)] == [1, 1, 2, 4, 8]  # round-half-even: 0.5→0 → at least 1, 1.5→2
    assert RMLoraConfig(r_hat=0.01).r_hat_for(8) == 1
    assert RMLoraConfig(r_hat=1.0).r_hat_for(8) == 8
    with pytest.raises(ConfigError, match="exceeds the LoRA rank"):
        RMLoraConfig(r_hat=9).r_hat_for(8, "layer.0.query")


def test_method_switches():
    on = {
        m: (RMLoraConfig(method=m).uses_penalty, RMLoraConfig(method=m).uses_masking)
        for m in ("lora", "r-lora", "gm-lora", "rm-lora")
    }
    assert on == {"lora": (False, False), "r-lora": (True, False), "gm-lora": (False, True), "rm-lora": (True, True)}
    assert not RMLoraConfig(method="rm-lora", reg_weight=0).uses_penalty


def test_roundtrip_and_unknown_fields():
    c = RMLoraConfig.released_code(seed=7)
    assert RMLoraConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown RMLoraConfig fields"):
        RMLoraConfig.from_dict({"methd": "lora"})
