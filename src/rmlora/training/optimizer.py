"""create_rmlora_optimizer: RM-LoRA as an optimizer, for any training loop (plain PyTorch, Accelerate, Lightning, TRL).

    optimizer = create_rmlora_optimizer(model, torch.optim.AdamW, rmlora_config=RMLoraConfig(r_hat=4), lr=1e-3)
    loss = model(**batch).loss          # no penalty term: the optimizer adds its gradient
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()

In the shape of PEFT's optimizer factories (`peft.optimizers.create_loraplus_optimizer`): everything RM-LoRA
does is around `optimizer.step()`, so the optimizer does it. Its `step()`

1. adds the penalty's closed-form gradient λ ∂Reg/∂(A, B) to the LoRA gradients (Eq. 10; as RMLoraCallback),
2. masks all but r̂ of R directions (Algorithm 1), and in strict mode snapshots the unselected rows/columns,
3. steps the inner optimizer,
4. strict mode: writes back the unselected rows/columns of the weights and of their optimizer state,

with the directions of its own step counter, which counts real steps only: under `accelerate`'s
AcceleratedOptimizer an accumulation micro-step or a step that the grad scaler skips (inf/nan) never reaches
this `step()`, so the directions advance once per step actually taken. The counter is in `state_dict()`, so a
resumed run draws the same directions.

As with RMLoraCallback, the penalty's gradient comes after any gradient clipping the loop did (it is not
clipped) and the masks act on the clipped gradient (`mask_before_clipping` cannot be honoured here; use
RMLoraTrainer for that); with clipping off both paths give RMLoraTrainer's update (tested).

LoRA+ (`loraplus_lr_ratio`): the inner optimizer is PEFT's `create_loraplus_optimizer`, whose param groups give
B (and every 1-d parameter: biases, DoRA's magnitudes) ratio × lr; the penalty and the masks act as before.

The wrapper holds the inner optimizer like accelerate's AcceleratedOptimizer: `param_groups`, `state` and
`defaults` are the inner optimizer's own objects, so LR schedulers, grad scalers and `AcceleratedOptimizer`
work on it; attributes it lacks (step hooks, optimizer-specific methods) resolve on the inner optimizer.
"""

from __future__ import annotations

import inspect

import torch
from peft.optimizers import create_loraplus_optimizer
from torch import nn
from transformers.trainer_pt_utils import get_parameter_names

from rmlora.config import RMLoraConfig
from rmlora.errors import ConfigError
from rmlora.methods.lora import LoraMethod as RMLora  # core.rm_lora.RMLora plus its versioned state

STATE_KEY = "rmlora"

# transformers.Trainer.get_decay_parameter_names: no weight decay on biases and norms (the Trainer's default
# grouping, so that this optimizer and the Trainer's own take the same step)
_NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


class RMLoraOptimizer(torch.optim.Optimizer):
    """An optimizer that trains the LoRA matrices of `rmlora.model` with RM-LoRA (see the module docstring).

    Built by `create_rmlora_optimizer`; `optimizer.optimizer` is the inner optimizer, `optimizer.rmlora`
    the RMLora (penalty, `directions(step)`), `optimizer.rmlora_step` the number of steps taken.
    """

    # Optimizer.__init__ is not called: param_groups / state / defaults are the inner optimizer's (properties)
    def __init__(self, optimizer: torch.optim.Optimizer, rmlora: RMLora):
        self.optimizer = optimizer
        self.rmlora = rmlora
        self.rmlora_step = 0

    def __getattr__(self, name):
        # only called for attributes not found normally: step hooks, optimizer-specific methods
        if name in ("optimizer", "rmlora", "rmlora_step") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value):
        self.optimizer.param_groups = value

    @property
    def state(self):
        return self.optimizer.state

    @state.setter
    def state(self, value):
        self.optimizer.state = value

    @property
    def defaults(self):
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value):
        self.optimizer.defaults = value

    def __repr__(self) -> str:
        cfg = self.rmlora.config
        return (
            f"RMLoraOptimizer(method={cfg.method!r}, r_hat={cfg.r_hat!r}, step={self.rmlora_step}, {self.optimizer!r})"
        )

    def __getstate__(self) -> dict:
        return self.__dict__.copy()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def add_param_group(self, param_group: dict) -> None:
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        # the closure runs once here: an optimizer that re-evaluates it (LBFGS) would step unmasked gradients
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rm, step = self.rmlora, self.rmlora_step
        rm.add_penalty_gradient()
        rm.before_optimizer_step(self.optimizer, step)
        self.optimizer.step()
        rm.after_optimizer_step(self.optimizer, step)
        self.rmlora_step += 1
        return loss

    # -- checkpoints: the inner optimizer's state dict plus the step counter and the settings ------------------
    def state_dict(self) -> dict:
        state = self.optimizer.state_dict()
        state[STATE_KEY] = {"step": self.rmlora_step, **self.rmlora.state_dict()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop(STATE_KEY, None)
        if saved is not None:
            current = self.rmlora.config.to_dict()
            if saved.get("config") != current:
                diff = {k: (v, current.get(k)) for k, v in saved.get("config", {}).items() if current.get(k) != v}
                raise ConfigError(
                    f"the optimizer state was saved with other RM-LoRA settings (saved, now): {diff}; "
                    "resume with the same RMLoraConfig"
                )
            self.rmlora.load_state_dict({k: v for k, v in saved.items() if k != "step"})
            self.rmlora_step = int(saved["step"])
        # a plain optimizer's state (e.g. a LoRA run continued as RM-LoRA) keeps this optimizer's counter
        self.optimizer.load_state_dict(state_dict)


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay = set(get_parameter_names(model, [nn.LayerNorm], _NO_DECAY_PATTERNS))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def create_rmlora_optimizer(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    rmlora_config: RMLoraConfig | None = None,
    loraplus_lr_ratio: float | None = None,
    **optimizer_kwargs,
) -> RMLoraOptimizer:
    """An optimizer over `model`'s trainable parameters whose `step()` applies RM-LoRA (module docstring).

    Args:
        model: a PEFT LoRA model (`peft.get_peft_model`); its LoRA matrices get the penalty and the masks,
            every other trainable parameter (heads, `modules_to_save`) is stepped normally.
        optimizer_cls: the inner optimizer's class (`torch.optim.AdamW`, `torch.optim.SGD`, ...).
        rmlora_config: the method's settings (`RMLoraConfig()` by default: rm-lora, the paper's defaults).
        loraplus_lr_ratio: LoRA+ (PEFT's `create_loraplus_optimizer`): B's learning rate is this ratio × `lr`
            (`lr` is then required); None: one learning rate.
        optimizer_kwargs: passed to `optimizer_cls` (`lr`, `betas`, ...). `weight_decay` applies, as in
            transformers' Trainer, to every parameter but biases and norms.
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("the model has no trainable parameters: wrap it with peft.get_peft_model first")
    if loraplus_lr_ratio is not None:
        if "lr" not in optimizer_kwargs:
            raise ConfigError("loraplus_lr_ratio needs lr (A's learning rate; B's is ratio × lr)")
        # PEFT's factory defaults loraplus_weight_decay to 0: keep the optimizer's own default, as without LoRA+
        default = inspect.signature(optimizer_cls).parameters.get("weight_decay")
        own = default.default if default is not None and default.default is not inspect.Parameter.empty else 0.0
        decay = optimizer_kwargs.pop("weight_decay", own)
        inner = create_loraplus_optimizer(
            model, optimizer_cls, loraplus_lr_ratio=loraplus_lr_ratio, loraplus_weight_decay=decay, **optimizer_kwargs
        )
        return RMLoraOptimizer(inner, RMLora(model, rmlora_config))
    if "weight_decay" in optimizer_kwargs:
        groups = _parameter_groups(model, optimizer_kwargs.pop("weight_decay"))
    else:  # the optimizer's own default weight decay, for every parameter
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    rmlora = RMLora(model, rmlora_config)
    return RMLoraOptimizer(optimizer_cls(groups, **optimizer_kwargs), rmlora)
