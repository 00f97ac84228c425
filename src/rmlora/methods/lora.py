"""The four LoRA variants (lora, r-lora, gm-lora, rm-lora): PEFT LoRA plus RMLora's penalty and masks.

`LoraArguments` is where an adapter goes, its size and PEFT's own LoRA variants (init_lora_weights, use_dora,
use_rslora, LoRA+'s loraplus_lr_ratio); every adapter-based method (these four, AdaLoRA, SoRA) reads its
placement from it, and `check_variants` refuses in one line what a method cannot combine with. `LoraMethod` is
rmlora.core.rm_lora.RMLora as a TrainingMethod: the algorithm from core, plus "# T / I params" (T = I = the
LoRA matrices, DoRA's magnitudes and heads), export and the versioned state. It is what `rmlora.RMLora` names.

PiSSA and OLoRA move s·B₀A₀ out of the pre-trained weight at initialisation: `prepare` keeps (A₀, B₀)
(rmlora.core.pairs.keep_initial_factors), so that ΔW is measured against the original weight and `export`
writes, with PEFT's own conversion, an adapter that loads on the original base model.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field

from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, get_peft_model_state_dict
from torch import nn

from rmlora.config import LORA_METHODS, MASKED, PENALIZED, RMLoraConfig
from rmlora.core.pairs import initial_factors, keep_initial_factors
from rmlora.core.rm_lora import RMLora
from rmlora.errors import ConfigError
from rmlora.io.adapters import relative_module_name, save_adapter, save_converted_adapter
from rmlora.methods.base import TrainingMethod

# init_lora_weights values that need no data and no extra config; "pissa_niter_K" (K ≥ 0) too
LORA_INITS = ("true", "false", "gaussian", "orthogonal", "olora", "pissa", "mica")
PISSA_NITER = re.compile(r"^pissa_niter_(\d+)$")
# values PEFT accepts that need what a flag cannot carry: refused with the reason
LORA_INITS_REFUSED = {
    "eva": "EVA initialises from the SVD of layer activations over a data loader (peft.initialize_lora_eva_weights)",
    "corda": "CorDA needs covariance statistics collected over data first (peft.tuners.lora.corda.preprocess_corda)",
    "loftq": "LoftQ needs a LoftQConfig and quantises the base model itself",
    "lora_ga": "LoRA-GA initialises from gradients estimated over data (a LoraGAConfig)",
}
# inits that move s·B₀A₀ out of the base weight, so that BA ≠ 0 at step 0 while the model is unchanged
BASE_REWRITING_INITS = ("olora", "pissa")


def normalized_init(value) -> bool | str:
    """True / False / PEFT's init name from a flag's text or a Python value; a one-line ConfigError otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    if text in LORA_INITS or PISSA_NITER.match(text):
        return text
    if text in LORA_INITS_REFUSED:
        raise ConfigError(
            f"init_lora_weights={text!r} is not available as a flag: {LORA_INITS_REFUSED[text]}; use PEFT directly "
            "(peft.get_peft_model) and train the model with RMLoraTrainer or create_rmlora_optimizer"
        )
    raise ConfigError(
        f"unknown init_lora_weights {value!r}: choose one of {', '.join(LORA_INITS)} or pissa_niter_K (K ≥ 0 "
        "subspace iterations)"
    )


# the flags of PEFT's LoRA variants (LoraArguments.variant): a row of their own in a report, not a setting to choose
VARIANT_FLAGS = ("init_lora_weights", "use_dora", "use_rslora", "loraplus_lr_ratio")


@dataclass
class LoraArguments:
    """Where the adapter goes and its size (PEFT's LoraConfig fields, under run_glue-style names)."""

    lora_r: int = field(default=8, metadata={"help": "LoRA rank R of every adapted module."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; ΔW is scaled by alpha / R."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input."})
    target_modules: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated module names (or suffixes) to adapt, or 'all-linear'. Default: PEFT's "
            "per-architecture default (attention projections)."
        },
    )
    modules_to_save: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated modules trained fully and saved with the adapter (e.g. the classifier head)."
        },
    )
    use_rslora: bool = field(
        default=False, metadata={"help": "Scale by alpha / sqrt(R) (rsLoRA) instead of alpha / R."}
    )
    init_lora_weights: str = field(
        default="true",
        metadata={
            "help": "PEFT's LoRA initialisation: true (A Kaiming-uniform, B = 0), false (both random), gaussian (A "
            "normal with std 1/R, B = 0), orthogonal (A, B orthogonal, BA ≠ 0; even R), olora (QR of the weight), "
            "pissa (its top-R SVD), pissa_niter_K (PiSSA by randomised SVD with K iterations), mica (B from the "
            "smallest singular vectors, frozen; lora only). olora and pissa move s·B₀A₀ out of the pre-trained "
            "weight: ΔW is measured from the original weight and the saved adapter loads on the original model. "
            "eva, corda, loftq and lora_ga need data or extra config and are refused."
        },
    )
    use_dora: bool = field(
        default=False,
        metadata={
            "help": "DoRA: a trained magnitude per output feature times the direction W + s·BA; the penalty and "
            "masks act on A and B, the magnitude trains normally (and counts in # T / I params)."
        },
    )
    loraplus_lr_ratio: float | None = field(
        default=None,
        metadata={
            "help": "LoRA+: B's learning rate is this ratio times A's (--learning_rate), through PEFT's "
            "create_loraplus_optimizer (also for 1-d parameters: biases, DoRA's magnitudes); the masks still apply. "
            "Default: off (one learning rate)."
        },
    )

    def __post_init__(self):
        if self.lora_r < 1:
            raise ConfigError(f"lora_r must be at least 1, got {self.lora_r}")
        init = normalized_init(self.init_lora_weights)
        self.init_lora_weights = init if isinstance(init, str) else str(init).lower()
        if self.init_lora_weights == "orthogonal" and self.lora_r % 2:
            raise ConfigError(f"init_lora_weights=orthogonal needs an even lora_r, got {self.lora_r}")
        ratio = self.loraplus_lr_ratio
        if ratio is not None and (not math.isfinite(ratio) or ratio <= 0):
            raise ConfigError(f"loraplus_lr_ratio must be a positive number (LoRA+ suggests 16), got {ratio}")

    @property
    def init(self) -> bool | str:
        """init_lora_weights as LoraConfig takes it (True, False or the name)."""
        return normalized_init(self.init_lora_weights)

    @property
    def rewrites_base_weight(self) -> bool:
        return str(self.init_lora_weights).startswith(BASE_REWRITING_INITS)

    def variant(self) -> dict:
        """The PEFT variant flags (VARIANT_FLAGS) that differ from plain LoRA ({} for plain LoRA), for records and
        row names."""
        out = {}
        if self.init_lora_weights != "true":
            out["init_lora_weights"] = self.init_lora_weights
        if self.use_dora:
            out["use_dora"] = True
        if self.use_rslora:
            out["use_rslora"] = True
        if self.loraplus_lr_ratio is not None:
            out["loraplus_lr_ratio"] = self.loraplus_lr_ratio
        return out

    @staticmethod
    def split(value: str | list[str] | None) -> list[str] | str | None:
        if value is None or isinstance(value, list):
            return value
        if value.strip() == "all-linear":
            return "all-linear"
        return [v.strip() for v in value.split(",") if v.strip()]

    def lora_config(self, task_type=None, **overrides) -> LoraConfig:
        kwargs = dict(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.split(self.target_modules),
            modules_to_save=self.split(self.modules_to_save),
            use_rslora=self.use_rslora,
            init_lora_weights=self.init,
            use_dora=self.use_dora,
            task_type=task_type,
        )
        kwargs.update(overrides)
        return LoraConfig(**kwargs)


def check_variants(method: str, lora: LoraArguments) -> None:
    """Refuse, in one line, a PEFT variant `method` cannot train (docs/BASELINES.md, "PEFT's LoRA variants").

    The LoRA variants take every one: the penalty and the masks act on A and B whatever their initialisation,
    DoRA's magnitude trains beside them, LoRA+ only changes B's learning rate. MiCA freezes B, so the penalty on
    B and the masks of B's columns would do nothing: lora only. The baselines have factors of their own.
    """
    variant = {k: v for k, v in lora.variant().items() if k != "use_rslora"}  # rsLoRA: checked by each baseline
    if method in LORA_METHODS:
        if lora.init_lora_weights == "mica" and method in PENALIZED + MASKED:
            raise ConfigError(
                f"init_lora_weights=mica freezes B (only A trains), so {method}'s penalty and masks on B would do "
                "nothing: use --method lora with mica, or another init"
            )
        return
    if not variant:
        return
    flags = ", ".join(f"--{k} {v}" for k, v in variant.items())
    reasons = {
        "full": "full fine-tuning has no adapter",
        "adalora": "AdaLoRA trains its own SVD triplets P Λ Q (initialised by PEFT's AdaLoRA, no DoRA form, no B A "
        "pair for LoRA+'s ratio)",
        "sora": "SoRA gates B's columns (ΔW = B diag(g) A), with its own gate optimizer; no DoRA, init or LoRA+ "
        "form of it is defined",
    }
    raise ConfigError(f"{flags}: {reasons.get(method, method)}; drop it or use a LoRA method (lora, rm-lora, ...)")


def linear_layer_names(model: nn.Module) -> list[str]:
    """Distinct last names of the layers LoRA can adapt (Linear, Conv1D, Conv2d, Embedding)."""
    kinds = (nn.Linear, nn.Conv2d, nn.Embedding)
    names = []
    for name, module in model.named_modules():
        if name and (isinstance(module, kinds) or type(module).__name__ == "Conv1D"):
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return names


def checked_peft_model(base_model: nn.Module, peft_config) -> nn.Module:
    """`get_peft_model`, after checking with PEFT's own matcher that `target_modules` names a layer of the model.

    A one-line ConfigError lists the choices instead of PEFT's multi-line ValueError. `fan_in_fan_out` is set
    from the targeted layers (GPT-2's Conv1D stores W transposed), so PEFT has nothing to correct and warn about.
    """
    conv1d = fan_in_fan_out(base_model, peft_config)
    if conv1d is not None and hasattr(peft_config, "fan_in_fan_out"):
        peft_config.fan_in_fan_out = conv1d
    targets = peft_config.target_modules
    if targets is not None and targets != "all-linear":
        if not any(check_target_module_exists(peft_config, name) for name, _ in base_model.named_modules()):
            choices = ", ".join(linear_layer_names(base_model)[:20])
            shown = targets if isinstance(targets, str) else ",".join(sorted(targets))
            raise ConfigError(
                f"target_modules {shown!r} match no layer of this model: choose among {choices} "
                "(comma-separated), or 'all-linear'"
            )
    model = get_peft_model(base_model, peft_config)
    if getattr(peft_config, "use_dora", False):
        _refuse_dora_beyond_linear(model)
    return model


def _refuse_dora_beyond_linear(model: nn.Module) -> None:
    # ΔW of DoRA (core.pairs.LoraPair.delta_weight) follows PEFT's merge for Linear / Conv1D only; on an Embedding or
    # a convolution the run would train and then fail in its final diagnostics, so it is refused before training
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            if not isinstance(base, nn.Linear) and type(base).__name__ != "Conv1D":
                raise ConfigError(
                    f"--use_dora on {relative_module_name(name)}, a {type(base).__name__}: rmlora measures "
                    "DoRA's ΔW on Linear and Conv1D layers only; target those (--target_modules) or drop --use_dora"
                )


def fan_in_fan_out(base_model: nn.Module, peft_config) -> bool | None:
    """Whether the layers `peft_config` targets are mostly Conv1D (weight stored d_in x d_out); None if none match.

    The targets are resolved by PEFT's own rules: its per-architecture default for None, its 'all-linear' expansion.
    """
    config = copy.copy(peft_config)
    if config.target_modules is None:
        model_type = getattr(getattr(base_model, "config", None), "model_type", None)
        config.target_modules = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        if config.target_modules is None:
            return None
    config = _maybe_include_all_linear_layers(config, base_model)
    kinds = [
        type(module).__name__ == "Conv1D"
        for name, module in base_model.named_modules()
        if name
        and (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D")
        and check_target_module_exists(config, name)
    ]
    return sum(kinds) * 2 > len(kinds) if kinds else None


class LoraMethod(RMLora, TrainingMethod):
    """lora, r-lora, gm-lora, rm-lora: RMLora's hooks (penalty and masks per config) as a TrainingMethod."""

    methods = LORA_METHODS

    def __init__(self, model: nn.Module, config: RMLoraConfig | None = None):
        RMLora.__init__(self, model, config)

    @classmethod
    def prepare(cls, base_model: nn.Module, lora: LoraArguments, task_type, settings) -> nn.Module:
        model = checked_peft_model(base_model, lora.lora_config(task_type=task_type))
        if lora.rewrites_base_weight:
            keep_initial_factors(model)
        return model

    @property
    def export_on_save(self) -> bool:
        """PiSSA / OLoRA: Trainer.save_model writes the converted adapter, the one that fits the original model."""
        return bool(initial_factors(self.model))

    def export(self, output_dir: str) -> None:
        """The adapter in PEFT's format; after PiSSA / OLoRA, converted by PEFT to load on the original model."""
        initial = initial_factors(self.model)
        if not initial:
            save_adapter(self.model, output_dir, self)
            return
        # the adapter as it was at initialisation: the trained state with every (A, B) replaced by (A₀, B₀)
        state = get_peft_model_state_dict(self.model)
        for name, (A0, B0) in initial.items():
            state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = A0, B0
        save_converted_adapter(self.model, output_dir, state, self)

    def extra_state(self) -> dict:
        """The directions are a pure function of (seed, step, module): the module names are all a resume needs."""
        return {"modules": [p.name for p in self.pairs]}

    def load_extra_state(self, state: dict) -> None:
        names = [p.name for p in self.pairs]
        if state.get("modules") and state["modules"] != names:
            raise ConfigError(
                "the checkpoint's LoRA modules differ from this model's: resume with the same model and target_modules"
            )
        self.refresh()
