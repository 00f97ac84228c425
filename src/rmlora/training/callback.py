"""RMLoraCallback: RM-LoRA for any Trainer subclass (TRL's SFTTrainer, DPOTrainer, custom ones).

A callback cannot change the loss, so the penalty enters as its closed-form gradient
(penalty.add_penalty_gradient), added to the LoRA gradients in `on_pre_optimizer_step`, i.e. after
the Trainer clipped the gradients. Compared with RMLoraTrainer:

- the penalty's gradient is not clipped (RMLoraTrainer clips task + penalty gradient together), so
  the two paths give the same update only when clipping is off (`max_grad_norm=0`) or not active;
- masking always happens after clipping (`mask_before_clipping` cannot be honoured here);
- with fp16 and a grad scaler, gradients are still scaled at that point unless clipping unscaled
  them: use `max_grad_norm > 0` with fp16, or RMLoraTrainer;
- the penalty value is not in the logged loss; it is logged beside it as `rmlora_penalty` (the mean over the
  optimizer steps since the last log, as RMLoraTrainer does), in `trainer.state.log_history` and in the
  callbacks that run after this one (the console printer). The Trainer runs its `report_to` integrations
  (TensorBoard, W&B, ...) before any callback you add, so they do not see it: for it there, train with
  RMLoraTrainer (`rmlora train` does).
"""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback

from rmlora.config import RMLoraConfig
from rmlora.io.state import write_rmlora_state
from rmlora.methods.lora import LoraMethod


class RMLoraCallback(TrainerCallback):
    """`trainer.add_callback(RMLoraCallback(RMLoraConfig(...)))`, or `callbacks=[...]` at construction."""

    def __init__(self, config: RMLoraConfig | None = None):
        self.config = config if config is not None else RMLoraConfig()
        self.rmlora: LoraMethod | None = None
        self._penalty_sum: torch.Tensor | None = None
        self._penalty_count = 0

    def _attach(self, model) -> LoraMethod:
        if self.rmlora is None or self.rmlora.model is not model:
            self.rmlora = LoraMethod(model, self.config)
        return self.rmlora

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._attach(model)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        rm = self._attach(model)
        if rm.config.uses_penalty:
            with torch.no_grad():  # summed on device: one host sync per log, not per step
                value = rm.penalty().detach()
            self._penalty_sum = value if self._penalty_sum is None else self._penalty_sum + value
            self._penalty_count += 1
        rm.add_penalty_gradient()
        rm.before_optimizer_step(optimizer, state.global_step)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.rmlora is not None:
            self.rmlora.after_optimizer_step(optimizer, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._penalty_sum is None or logs is None or "loss" not in logs:
            return
        value = round((self._penalty_sum / self._penalty_count).item(), 6)
        self._penalty_sum, self._penalty_count = None, 0
        logs["rmlora_penalty"] = value
        # the Trainer appended a copy of these logs to log_history before calling the callbacks
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1]["rmlora_penalty"] = value

    def on_save(self, args, state, control, **kwargs):
        if self.rmlora is not None and args.should_save:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                write_rmlora_state(folder, self.rmlora)
