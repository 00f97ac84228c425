"""RMLoraTrainer: a transformers Trainer that trains with RM-LoRA (or any of its ablations).

- the penalty joins the loss in `compute_loss` (once per optimizer step under gradient accumulation);
- the masks run once per optimizer step: inside `_clip_grad_norm` when `mask_before_clipping` (so the
  clip norm is that of the masked gradient), else in `on_pre_optimizer_step`, after clipping;
- strict mode restores the unselected directions in `on_optimizer_step`;
- the penalty is logged as `rmlora_penalty` at logging steps (summed on device, one sync per log);
- checkpoints carry `rmlora_config.json` beside PEFT's adapter files, and a resume checks it.
"""

from __future__ import annotations

import json
import os

import torch
from transformers import Trainer, TrainerCallback

from .config import RMLoraConfig
from .errors import ConfigError
from .methods import build_training_method
from .saving import RMLORA_CONFIG_NAME, read_rmlora_state, write_rmlora_state


class _StepHooks(TrainerCallback):
    """Calls the RMLora hooks around the optimizer step of the Trainer that owns it."""

    def __init__(self, trainer: "RMLoraTrainer"):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.trainer.rmlora.before_optimizer_step(optimizer, state.global_step)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.trainer.rmlora.after_optimizer_step(optimizer, state.global_step)


class RMLoraTrainer(Trainer):
    """`RMLoraTrainer(model=peft_model, ..., rmlora_config=RMLoraConfig(...))`.

    The model comes from `rmlora.methods.prepare_model` (or `peft.get_peft_model` for the LoRA
    variants); `method_settings` carries a baseline's own knobs (AdaLoRA, SoRA).
    """

    def __init__(self, *args, rmlora_config: RMLoraConfig | None = None, method_settings: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rmlora = build_training_method(self.model, rmlora_config, **(method_settings or {}))
        self.add_callback(_StepHooks(self))
        self._penalty_sum: torch.Tensor | None = None
        self._penalty_count = 0

    @property
    def rmlora_config(self) -> RMLoraConfig:
        return self.rmlora.config

    # -- loss ------------------------------------------------------------------------------------------
    def _loss_already_scaled_for_ga(self, num_items_in_batch) -> bool:
        # mirrors Trainer.training_step: a loss that is not scaled there gets divided by the GA steps
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool(
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not (model.training and torch.is_grad_enabled() and self.rmlora.config.uses_penalty):
            return result
        loss, outputs = result if return_outputs else (result, None)
        penalty = self.rmlora.penalty()
        # The penalty must enter the gradient once per optimizer step, not once per micro-batch.
        if self._loss_already_scaled_for_ga(num_items_in_batch):
            steps = max(1, int(getattr(self, "current_gradient_accumulation_steps", 1) or 1))
            loss = loss + penalty / steps
        else:
            loss = loss + penalty
        detached = penalty.detach()
        self._penalty_sum = detached if self._penalty_sum is None else self._penalty_sum + detached
        self._penalty_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if self._penalty_sum is not None and "loss" in logs:
            logs["rmlora_penalty"] = round((self._penalty_sum / self._penalty_count).item(), 6)
            self._penalty_sum, self._penalty_count = None, 0
        return super().log(logs, *args, **kwargs)

    def create_optimizer(self, model=None):
        # parameters with an optimizer of their own (SoRA's gates) stay out of the main one
        excluded = [p for p in self.rmlora.excluded_parameters() if p.requires_grad]
        for p in excluded:
            p.requires_grad_(False)
        try:
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        finally:
            for p in excluded:
                p.requires_grad_(True)

    # -- masking before clipping -------------------------------------------------------------------------
    def _clip_grad_norm(self, model):
        if self.rmlora.config.mask_before_clipping:
            self.rmlora.before_optimizer_step(self.optimizer, self.state.global_step)
        return super()._clip_grad_norm(model)

    # -- checkpoints -------------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            write_rmlora_state(output_dir or self.args.output_dir, self.rmlora)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        if os.path.exists(os.path.join(resume_from_checkpoint, RMLORA_CONFIG_NAME)):
            saved = read_rmlora_state(resume_from_checkpoint)
            if saved["config"] != self.rmlora.config.to_dict():
                diff = {
                    k: (v, self.rmlora.config.to_dict().get(k))
                    for k, v in saved["config"].items()
                    if self.rmlora.config.to_dict().get(k) != v
                }
                raise ConfigError(
                    f"the checkpoint {resume_from_checkpoint} was trained with other RM-LoRA settings "
                    f"(checkpoint, now): {json.dumps(diff)}; resume with the same settings"
                )
            self.rmlora.load_state_dict(saved)
