"""The four LoRA variants (lora, r-lora, gm-lora, rm-lora): PEFT LoRA plus RMLora's penalty and masks.

`LoraArguments` is where an adapter goes and its size; every adapter-based method (these four, AdaLoRA,
SoRA) reads its placement from it. `LoraMethod` is rmlora.core.rm_lora.RMLora as a TrainingMethod: the
algorithm from core, plus "# T / I params" (T = I = the LoRA matrices and heads), export and the
versioned state. It is what `rmlora.RMLora` names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn

from rmlora.config import LORA_METHODS, RMLoraConfig
from rmlora.core.rm_lora import RMLora
from rmlora.errors import ConfigError
from rmlora.io.adapters import save_adapter
from rmlora.methods.base import TrainingMethod


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

    def __post_init__(self):
        if self.lora_r < 1:
            raise ConfigError(f"lora_r must be at least 1, got {self.lora_r}")

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
            task_type=task_type,
        )
        kwargs.update(overrides)
        return LoraConfig(**kwargs)


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

    A one-line ConfigError lists the choices instead of PEFT's multi-line ValueError.
    """
    targets = peft_config.target_modules
    if targets is not None and targets != "all-linear":
        if not any(check_target_module_exists(peft_config, name) for name, _ in base_model.named_modules()):
            choices = ", ".join(linear_layer_names(base_model)[:20])
            shown = targets if isinstance(targets, str) else ",".join(sorted(targets))
            raise ConfigError(
                f"target_modules {shown!r} match no layer of this model: choose among {choices} "
                "(comma-separated), or 'all-linear'"
            )
    return get_peft_model(base_model, peft_config)


class LoraMethod(RMLora, TrainingMethod):
    """lora, r-lora, gm-lora, rm-lora: RMLora's hooks (penalty and masks per config) as a TrainingMethod."""

    methods = LORA_METHODS

    def __init__(self, model: nn.Module, config: RMLoraConfig | None = None):
        RMLora.__init__(self, model, config)

    @classmethod
    def prepare(cls, base_model: nn.Module, lora: LoraArguments, task_type, settings) -> nn.Module:
        return checked_peft_model(base_model, lora.lora_config(task_type=task_type))

    def export(self, output_dir: str) -> None:
        save_adapter(self.model, output_dir, self)

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
