import pytest

from rmlora import ConfigError, RMLoraConfig


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
