"""RMLoraTrainer: a transformers Trainer that trains with RM-LoRA (or any of its ablations).

- the penalty joins the loss in `compute_loss` (once per optimizer step under gradient accumulation);
- the masks run once per optimizer step: inside `_clip_grad_norm` when `mask_before_clipping` (so the
  clip norm is that of the masked gradient), else in `on_pre_optimizer_step`, after clipping;
- strict mode restores the unselected directions in `on_optimizer_step`;
- the penalty is logged as `rmlora_penalty` at logging steps (summed on device, one sync per log);
- `loraplus_lr_ratio` builds the optimizer with PEFT's `create_loraplus_optimizer` (LoRA+: B at ratio × lr);
- checkpoints carry `rmlora_config.json` beside PEFT's adapter files, and a resume checks it.
"""

from __future__ import annotations

import contextlib
import json
import os

import torch
from peft.optimizers import create_loraplus_optimizer
from transformers import Trainer, TrainerCallback

from rmlora.config import RMLoraConfig
from rmlora.errors import ConfigError, NonFiniteLossError
from rmlora.io.state import RMLORA_CONFIG_NAME, read_rmlora_state, write_rmlora_state
from rmlora.methods import build_training_method


class _StepHooks(TrainerCallback):
    """Calls the RMLora hooks around the optimizer step of the Trainer that owns it."""

    def __init__(self, trainer: RMLoraTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # AdaLoRA's budget schedule and SoRA's ξ stages span the run's optimizer steps, known only now
        if state.max_steps > 0:
            self.trainer.rmlora.set_total_steps(state.max_steps)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.trainer._skip_this_step:
            # a non-finite loss in this accumulation window: drop every gradient, so that the optimizer
            # skips every parameter (no moment, no weight decay update); the LR schedule still advances
            for p in self.trainer.model.parameters():
                p.grad = None
            self.trainer._skip_this_step = False
            self.trainer.skipped_steps.append(state.global_step)
        self.trainer.rmlora.before_optimizer_step(optimizer, state.global_step)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.trainer.rmlora.after_optimizer_step(optimizer, state.global_step)


def refuse_deepspeed_masking(config: RMLoraConfig, deepspeed: bool) -> None:
    """Masking cannot act under DeepSpeed: accelerate runs engine.step() inside backward, before the Trainer's
    on_pre_optimizer_step, and the gradients live in DeepSpeed's partitioned buffers (docs/RELIABILITY.md)."""
    if deepspeed and config.uses_masking:
        raise ConfigError(
            f"method {config.method!r} masks the LoRA updates, which DeepSpeed steps past (the optimizer has stepped "
            "before the masks could act, so they would silently do nothing): train it with DDP or FSDP2 "
            "(accelerate launch / torchrun), or use r-lora (the penalty alone) under DeepSpeed"
        )


class RMLoraTrainer(Trainer):
    """`RMLoraTrainer(model=peft_model, ..., rmlora_config=RMLoraConfig(...))`.

    The model comes from `rmlora.methods.prepare_model` (or `peft.get_peft_model` for the LoRA
    variants); `method_settings` carries a baseline's own knobs (AdaLoRA, SoRA); `loraplus_lr_ratio` turns on
    LoRA+ (the LoRA variants only).
    """

    def __init__(
        self,
        *args,
        rmlora_config: RMLoraConfig | None = None,
        method_settings: dict | None = None,
        nonfinite_loss: str = "raise",
        loraplus_lr_ratio: float | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if self.args.dataloader_pin_memory and not torch.accelerator.is_available():
            # torch pins nothing without an accelerator and warns so at every DataLoader iterator (each epoch's
            # train and eval loops); the setting has no effect there, so it is turned off instead of warned about
            self.args.dataloader_pin_memory = False
        if nonfinite_loss not in ("raise", "skip"):
            raise ConfigError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
        self.rmlora = build_training_method(self.model, rmlora_config, **(method_settings or {}))
        refuse_deepspeed_masking(self.rmlora.config, self.is_deepspeed_enabled)
        if loraplus_lr_ratio is not None and not self.rmlora.config.is_lora_variant:
            raise ConfigError(
                f"loraplus_lr_ratio: LoRA+ sets B's learning rate in B A; method {self.rmlora.config.method!r} has "
                "no such pair: drop it or use a LoRA method"
            )
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.nonfinite_loss = nonfinite_loss
        self.skipped_steps: list[int] = []
        self._skip_this_step = False
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

    def _uses_penalty(self) -> bool:
        # a baseline says so itself (SoRA's L1 term; AdaLoRA's regularizer is already in the model's loss)
        return bool(self.rmlora.uses_penalty)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if not (model.training and torch.is_grad_enabled() and self._uses_penalty()):
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

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # one host sync per micro-batch; the Trainer's own logging_nan_inf_filter (on by default) makes it too
        if not bool(torch.isfinite(loss)):
            if self.nonfinite_loss == "raise":
                raise NonFiniteLossError(
                    f"the training loss is {float(loss)} at optimizer step {self.state.global_step}: lower the "
                    "learning rate, set max_grad_norm, check the data for bad values, or skip such steps "
                    "(nonfinite_loss='skip', --nonfinite_loss skip)"
                )
            self._skip_this_step = True
        return loss

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
            if self.loraplus_lr_ratio is not None and self.optimizer is None:
                return self._create_loraplus_optimizer(self.model if model is None else model)
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        finally:
            for p in excluded:
                p.requires_grad_(True)

    def _create_loraplus_optimizer(self, model):
        # the Trainer's optimizer class and arguments (--optim, betas, eps), in PEFT's LoRA+ param groups
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        kwargs = dict(kwargs)
        lr = kwargs.pop("lr", self.args.learning_rate)
        self.optimizer = create_loraplus_optimizer(
            model,
            optimizer_cls,
            lr=lr,
            loraplus_lr_ratio=self.loraplus_lr_ratio,
            loraplus_weight_decay=self.args.weight_decay,
            **kwargs,
        )
        return self.optimizer

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

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # a checkpoint must resume: AdaLoRA saves every triplet there, not PEFT's rank-cut adapter; so does a final
        # save that export() then overwrites (AdaLoRA's export leaves out the modules pruned to rank 0)
        raw = _internal_call or self.rmlora.export_on_save
        with self.rmlora.checkpoint_save() if raw else contextlib.nullcontext():
            super().save_model(output_dir, _internal_call=_internal_call)
        # SoRA's raw adapter lacks the gates: a final save writes the exported (pruned, folded) adapter over it,
        # while checkpoints (_internal_call) keep the raw one plus the gates for resuming
        if not _internal_call and self.rmlora.export_on_save and self.args.should_save:
            self.rmlora.export(output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        if os.path.exists(os.path.join(resume_from_checkpoint, RMLORA_CONFIG_NAME)):
            saved = read_rmlora_state(resume_from_checkpoint)
            current = self.rmlora.config.to_dict()
            if saved["config"] != current:
                diff = {k: (v, current.get(k)) for k, v in saved["config"].items() if current.get(k) != v}
                raise ConfigError(
                    f"the checkpoint {resume_from_checkpoint} was trained with other RM-LoRA settings "
                    f"(checkpoint, now): {json.dumps(diff)}; resume with the same settings"
                )
            self.rmlora.load_state_dict(saved)
