"""Full fine-tuning: every parameter trainable, no adapter, nothing around the step."""

from __future__ import annotations

from torch import nn

from rmlora.methods.base import TrainingMethod
from rmlora.methods.param_counts import parameter_counts


class FullFineTuning(TrainingMethod):
    methods = ("full",)

    @classmethod
    def prepare(cls, base_model: nn.Module, lora, task_type, settings) -> nn.Module:
        for p in base_model.parameters():
            p.requires_grad_(True)
        return base_model

    def param_counts(self) -> dict[str, int]:
        """T: every trainable parameter; I: every parameter of the model (Table 1's 184M / 184M)."""
        trainable, total = parameter_counts(self.model)
        return {"trainable": trainable, "inference": total}

    def export(self, output_dir: str) -> None:
        self.model.save_pretrained(output_dir, safe_serialization=True)
