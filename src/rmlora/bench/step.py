"""One method, ready to step: its model, hook object and optimizer (an Entry), and one training step."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from rmlora.bench.arguments import ANCHOR, METHODS, SHAPES, BenchArguments
from rmlora.bench.models import share_frozen_copy
from rmlora.config import RMLoraConfig
from rmlora.methods import AdaLoraArguments, LoraArguments, SoraArguments, build_training_method, prepare_model


@dataclass
class Entry:
    name: str
    model: nn.Module | None = None
    method: object | None = None  # rmlora TrainingMethod; None for plain PEFT LoRA
    optimizer: torch.optim.Optimizer | None = None
    error: str | None = None
    step: int = 0
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.error is None


def _optimizer(params, args: BenchArguments, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=args.optim == "adamw_torch_fused")


def _peft_lora_entry(template: nn.Module, args: BenchArguments) -> Entry:
    """Plain, unmodified PEFT: nothing from rmlora touches this model or its step."""
    shape = SHAPES[args.model]
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        target_modules=list(shape.target_modules),
        task_type="SEQ_CLS",
        fan_in_fan_out=shape.family == "gpt2",
    )
    model = get_peft_model(share_frozen_copy(template), config)
    params = [p for p in model.parameters() if p.requires_grad]
    return Entry(ANCHOR, model, None, _optimizer(params, args, 1e-3))


def _method_settings(rm_method: str, args: BenchArguments, total_steps: int, lr: float) -> dict:
    settings: dict = {"total_steps": total_steps, "learning_rate": lr}
    if rm_method == "adalora":
        settings["adalora"] = AdaLoraArguments(adalora_init_r=(3 * args.lora_r) // 2, adalora_target_r=args.lora_r)
    if rm_method == "sora":
        settings["sora"] = SoraArguments()
    return settings


def _rmlora_entry(name: str, template: nn.Module, args: BenchArguments, total_steps: int) -> Entry:
    """The method through rmlora's own path: prepare_model, then build_training_method."""
    rm_method, mask_mode = METHODS[name]
    lr = 1e-5 if rm_method == "full" else 1e-3
    settings = _method_settings(rm_method, args, total_steps, lr)
    r_hat = int(args.r_hat) if args.r_hat >= 1 else float(args.r_hat)
    # the squared form (Eq. 10), as docs/PERFORMANCE.md's numbers were measured; the default frd form computes the
    # same Gram matrices plus an R x R step
    extra = {"mask_mode": mask_mode} if mask_mode else {}
    config = RMLoraConfig(method=rm_method, r_hat=r_hat, reg_form="squared", **extra)
    targets = ",".join(SHAPES[args.model].target_modules)
    lora = LoraArguments(lora_r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=targets)
    base = copy.deepcopy(template) if rm_method == "full" else share_frozen_copy(template)
    model = prepare_model(base, config, lora, task_type="SEQ_CLS", **settings)
    method = build_training_method(model, config, **settings)
    excluded = {id(p) for p in method.excluded_parameters()}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in excluded]
    return Entry(name, model.train(), method, _optimizer(params, args, lr))


def build_entry(name: str, template: nn.Module, args: BenchArguments, total_steps: int) -> Entry:
    """Wrap a copy of `template` for method `name`; a build error makes it 'unavailable'."""
    try:
        if name == ANCHOR:
            return _peft_lora_entry(template, args)
        return _rmlora_entry(name, template, args, total_steps)
    except Exception as e:  # noqa: BLE001 -- a baseline still being written must not stop the benchmark
        return Entry(name, error=f"{type(e).__name__}: {e}")


def autocast(args: BenchArguments):
    if args.bf16:
        return torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(entry: Entry, batch: dict, args: BenchArguments) -> None:
    """One optimizer step exactly as a training loop runs it (RMLora's module docstring)."""
    model, method, opt = entry.model, entry.method, entry.optimizer
    with autocast(args):
        loss = model(**batch).loss
    if method is not None:
        loss = loss + method.penalty()
    loss.backward()
    if method is not None:
        method.before_optimizer_step(opt, entry.step)
    opt.step()
    if method is not None:
        method.after_optimizer_step(opt, entry.step)
    # the model's zero_grad, as the Trainer does: it also clears parameters with an optimizer of their own
    model.zero_grad(set_to_none=True)
    entry.step += 1
