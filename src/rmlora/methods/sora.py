"""SoRA baseline (Ding et al. 2023): a gate vector between LoRA's A and B, L1-sparsified by a proximal step.

    model = prepare_sora_model(base_model, LoraArguments(lora_r=8, target_modules="query,value"))
    sora = SoraMethod(model, RMLoraConfig(method="sora"), sora=SoraArguments(sora_lambda=1e-3, sora_xi=1e-4))
    loss = task_loss + sora.penalty()          # λ · Σ|g| / #gates
    loss.backward(); optimizer.step()          # the main optimizer does not own the gates
    sora.after_optimizer_step(optimizer, step) # gate AdamW step, then g ← sign(g)·max(|g| − ξ, 0)
    sora.export("out/")                        # plain PEFT LoRA adapter, rank_pattern = surviving directions

The LoRA layers are PEFT's own: a forward pre-hook on `lora_B[adapter]` multiplies its input by the gate,
so the branch computes ((x Aᵀ) ⊙ g) Bᵀ · scaling as in the reference (REFERENCE.md §3) and PEFT's
forward, dropout and mixed-batch paths stay untouched. B starts at zero, so ΔW starts at 0 whatever g.
PEFT's merge does not see the gates: export first, then merge the exported adapter.

Differences from the reference repo (TsinghuaC3I/SoRA):
- the soft-threshold is the proximal operator of ξ‖g‖₁, sign(g)·max(|g| − ξ, 0) (torch's softshrink); the
  reference runs three in-place statements in sequence, which zeroes values in (ξ, 2ξ);
- the ξ schedule advances through its k values in k equal stages of this run's optimizer steps; the
  reference retrains for 15 more epochs per value after the main run;
- the gates' learning rate follows the main optimizer's schedule (ratio of its current to its initial
  learning rate); the reference builds the same linear warmup/decay schedule separately.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from rmlora.config import RMLoraConfig
from rmlora.errors import AdapterError, ConfigError, NoLoraPairsError
from rmlora.methods.param_counts import inference_count, trainable_count

XI_SCHEDULES = ("linear", "log_linear", "exp_linear")
# PEFT saves every tensor of a tuner layer, so its checkpoints carry the gates too (and resume them); a vanilla
# LoRA model has no such key, which is why the final adapter is written by export_sora_adapter
GATE_ATTR = "sora_gate"
STATE_VERSION = 1


@dataclass
class SoraArguments:
    """SoRA's knobs (reference repo TsinghuaC3I/SoRA names in parentheses)."""

    sora_lambda: float = field(
        default=1e-3, metadata={"help": "Weight λ of the L1 term Σ|g| / #gates in the loss (sparse_lambda)."}
    )
    sora_xi: float = field(
        default=1e-4, metadata={"help": "Soft-threshold ξ applied to the gates after each gate step (sparse_lambda_2)."}
    )
    sora_gate_lr: float | None = field(
        default=None, metadata={"help": "Learning rate of the gates' own AdamW; default: the main learning rate."}
    )
    sora_xi_schedule: str | None = field(
        default=None,
        metadata={"help": "Raise ξ during training: linear, log_linear or exp_linear (default: constant ξ)."},
    )
    sora_xi_max: float | None = field(default=None, metadata={"help": "Final ξ of the schedule."})
    sora_xi_steps: int = field(default=1, metadata={"help": "Number of ξ values the schedule steps through (k)."})

    def __post_init__(self):
        for name in ("sora_lambda", "sora_xi"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
                raise ConfigError(f"{name} must be a number ≥ 0, got {value!r}")
        if self.sora_gate_lr is not None and not self.sora_gate_lr > 0:
            raise ConfigError(
                f"sora_gate_lr must be > 0, got {self.sora_gate_lr!r}: leave it unset to use the main learning rate"
            )
        if self.sora_xi_schedule in ("", "none", "None"):
            self.sora_xi_schedule = None
        if self.sora_xi_schedule is None:
            return
        if self.sora_xi_schedule not in XI_SCHEDULES:
            raise ConfigError(
                f"unknown sora_xi_schedule {self.sora_xi_schedule!r}: choose one of {', '.join(XI_SCHEDULES)}"
            )
        if self.sora_xi_max is None or self.sora_xi_max < 0:
            raise ConfigError(
                f"sora_xi_schedule={self.sora_xi_schedule} needs sora_xi_max ≥ 0 (the final ξ), got {self.sora_xi_max!r}"
            )
        if self.sora_xi_steps < 1:
            raise ConfigError(f"sora_xi_steps must be at least 1, got {self.sora_xi_steps}")
        if self.sora_xi_schedule == "exp_linear" and not (self.sora_xi > 0 and self.sora_xi_max > 0):
            raise ConfigError("sora_xi_schedule=exp_linear interpolates log ξ: sora_xi and sora_xi_max must be > 0")

    def xi_values(self) -> list[float]:
        """The ξ values the run steps through, as the reference's SparseAdamW builds them."""
        xi, k = float(self.sora_xi), int(self.sora_xi_steps)
        if self.sora_xi_schedule is None:
            return [xi]
        top = float(self.sora_xi_max)
        if self.sora_xi_schedule == "linear":
            values = np.linspace(xi, top, k)
        elif self.sora_xi_schedule == "log_linear":
            values = np.log(np.linspace(np.exp(xi), np.exp(top), k))
        else:
            values = np.exp(np.linspace(np.log(xi), np.log(top), k))
        return [float(v) for v in values]


def soft_threshold(g: torch.Tensor, xi: float) -> torch.Tensor:
    """sign(g)·max(|g| − ξ, 0): the proximal step of ξ‖g‖₁ (torch's softshrink is exactly this)."""
    return torch.nn.functional.softshrink(g, float(xi))


def xi_at(step: int, total_steps: int | None, values: list[float]) -> float:
    """ξ at optimizer step `step` (0-based): value i of k during the i-th of k equal stages of the run."""
    k = len(values)
    if k == 1 or not total_steps:
        return values[0]
    return values[min(k - 1, max(0, step) * k // int(total_steps))]


# -- gates on PEFT's LoRA layers ------------------------------------------------------------------------
@dataclass(eq=False)
class SoraGate:
    name: str  # module path inside the model passed in ([adapter] appended when several are active)
    path: str  # module path inside the model passed in
    layer: nn.Module  # PEFT LoraLayer
    adapter: str

    @property
    def gate(self) -> nn.Parameter:
        return getattr(self.layer, GATE_ATTR)[self.adapter]

    @property
    def A(self) -> torch.Tensor:
        return self.layer.lora_A[self.adapter].weight

    @property
    def B(self) -> torch.Tensor:
        return self.layer.lora_B[self.adapter].weight

    @property
    def scaling(self) -> float:
        return float(self.layer.scaling[self.adapter])

    def surviving(self) -> torch.Tensor:
        """Indices of the directions whose gate is not exactly 0."""
        return torch.nonzero(self.gate.detach() != 0).flatten()


def _gate_input(layer: nn.Module, adapter: str, module: nn.Module, args: tuple):
    # x Aᵀ enters B multiplied by g: ((x Aᵀ) ⊙ g) Bᵀ (REFERENCE.md §3)
    g = getattr(layer, GATE_ATTR)[adapter]
    return (args[0] * g.to(args[0].dtype),) + tuple(args[1:])


def attach_gates(model: nn.Module) -> list[SoraGate]:
    """Give every LoRA layer of the active adapter a gate g (length R, standard normal); idempotent."""
    from peft.tuners.lora import LoraLayer

    gates = []
    for name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for adapter in layer.active_adapters:
            if adapter in getattr(layer, "lora_embedding_A", {}) or (
                adapter in getattr(layer, "lora_A", {}) and not isinstance(layer.lora_B[adapter], nn.Linear)
            ):
                raise ConfigError(
                    f"SoRA gates support LoRA on Linear / Conv1D layers only, and {name} is not one: "
                    "leave it out of target_modules"
                )
            if adapter not in getattr(layer, "lora_A", {}):
                continue
            if adapter in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(adapter, False):
                raise ConfigError(
                    f"SoRA does not combine with DoRA or other LoRA variants ({name}): set use_dora=False"
                )
            if getattr(layer, "lora_bias", {}).get(adapter, False):
                raise ConfigError(
                    f"SoRA prunes B's columns, which a LoRA bias would survive ({name}): set lora_bias=False"
                )
            if not hasattr(layer, GATE_ATTR):
                setattr(layer, GATE_ATTR, nn.ParameterDict())
            gates_of_layer = getattr(layer, GATE_ATTR)
            if adapter not in gates_of_layer:
                A = layer.lora_A[adapter].weight
                gates_of_layer[adapter] = nn.Parameter(torch.randn(A.shape[0], dtype=A.dtype, device=A.device))
                layer.lora_B[adapter].register_forward_pre_hook(functools.partial(_gate_input, layer, adapter))
            label = name if len(layer.active_adapters) == 1 else f"{name}[{adapter}]"
            gates.append(SoraGate(label, name, layer, adapter))
    if not gates:
        raise NoLoraPairsError(
            "SoRA found no LoRA layer to gate: build the model with rmlora.methods.base.prepare_model(..., "
            "RMLoraConfig(method='sora')) and check that target_modules names layers of this model"
        )
    return gates


def prepare_sora_model(base_model: nn.Module, lora=None, task_type=None, **settings) -> nn.Module:
    """PEFT LoRA on `base_model` (LoraArguments `lora`), with a gate between every A and B."""
    from peft import get_peft_model

    from rmlora.methods.base import LoraArguments

    lora = lora or LoraArguments()
    model = get_peft_model(base_model, lora.lora_config(task_type=task_type))
    attach_gates(model)
    return model


# -- the training method ---------------------------------------------------------------------------------
class SoraMethod:
    """SoRA's hooks for the one training path (rmlora.methods.base.TrainingMethod)."""

    # RMLoraTrainer.save_model writes export() over the raw adapter: without the gates it would load wrong
    export_on_save = True

    def __init__(
        self,
        model: nn.Module,
        config: RMLoraConfig | None = None,
        sora: SoraArguments | None = None,
        total_steps: int | None = None,
        learning_rate: float | None = None,
        **_,
    ):
        self.model = model
        self.config = config if config is not None else RMLoraConfig(method="sora")
        self.args = sora if sora is not None else SoraArguments()
        if not isinstance(self.args, SoraArguments):
            raise ConfigError(f"sora must be a SoraArguments, got {type(self.args).__name__}")
        self.gates = attach_gates(model)
        self.total_steps = int(total_steps) if total_steps else None
        self.learning_rate = learning_rate
        self._xi_values = self.args.xi_values()
        # torch's AdamW with the reference's SparseAdamW settings: betas (0.9, 0.999), eps 1e-6, no decay;
        # its lr is set before every step (gate_learning_rate), the value here is a placeholder
        self.gate_optimizer = torch.optim.AdamW([g.gate for g in self.gates], lr=1e-3, eps=1e-6, weight_decay=0.0)

    @property
    def uses_penalty(self) -> bool:
        return self.args.sora_lambda > 0

    def set_total_steps(self, total_steps: int) -> None:
        """The run's number of optimizer steps (RMLoraTrainer calls it at train begin); sets the ξ stages."""
        self.total_steps = int(total_steps)

    def xi(self, step: int) -> float:
        return xi_at(step, self.total_steps, self._xi_values)

    # -- loss ---------------------------------------------------------------------------------------------
    def num_gates(self) -> int:
        return sum(g.gate.numel() for g in self.gates)

    def penalty(self) -> torch.Tensor:
        """λ · Σ|g| / #gates over every gate entry (the reference's sparse loss), a float32 scalar."""
        device = self.gates[0].gate.device
        if not self.uses_penalty:
            return torch.zeros((), dtype=torch.float32, device=device)
        total = sum(g.gate.float().abs().sum() for g in self.gates)
        return total * (self.args.sora_lambda / self.num_gates())

    @torch.no_grad()
    def add_penalty_gradient(self) -> None:
        """∂penalty/∂g = λ · sign(g) / #gates, added to the gates' .grad (for callers that cannot change the loss)."""
        if not self.uses_penalty:
            return
        scale = self.args.sora_lambda / self.num_gates()
        for g in self.gates:
            d = torch.sign(g.gate) * scale
            if g.gate.grad is None:
                g.gate.grad = d.clone()
            else:
                g.gate.grad.add_(d)

    # -- around the main optimizer step -------------------------------------------------------------------
    def before_optimizer_step(self, optimizer, step: int) -> None:
        pass

    def gate_learning_rate(self, optimizer=None) -> float:
        """sora_gate_lr (else the main learning rate), times the main schedule's current factor."""
        group = optimizer.param_groups[0] if optimizer is not None and optimizer.param_groups else None
        main_lr = group.get("initial_lr", group["lr"]) if group is not None else None
        base = self.args.sora_gate_lr or self.learning_rate or main_lr
        if base is None:
            raise ConfigError(
                "SoRA's gates need a learning rate: set sora_gate_lr or pass learning_rate in the method settings"
            )
        factor = group["lr"] / main_lr if group is not None and main_lr else 1.0
        return float(base) * factor

    @torch.no_grad()
    def after_optimizer_step(self, optimizer, step: int) -> None:
        """One AdamW step on the gates, then the proximal soft-threshold by ξ(step) (not scaled by lr)."""
        gates = [g.gate for g in self.gates]
        grads = [p.grad for p in gates if p.grad is not None]
        # a skipped step (no gradient, as RMLoraTrainer leaves a non-finite one) or an fp16 overflow step:
        # the main optimizer does not move, so neither do the gates (nor does the reference threshold them)
        # (one host sync for all gates, not one per gate)
        if not grads or not bool(torch.isfinite(torch.cat([gr.reshape(-1) for gr in grads])).all()):
            return
        lr = self.gate_learning_rate(optimizer)
        for group in self.gate_optimizer.param_groups:
            group["lr"] = lr
        self.gate_optimizer.step()
        xi = self.xi(step)
        if xi > 0:
            for p in gates:
                p.copy_(soft_threshold(p, xi))

    def excluded_parameters(self) -> list[nn.Parameter]:
        return [g.gate for g in self.gates]

    # -- sparsity, counts, export ---------------------------------------------------------------------------
    def ranks(self) -> dict[str, int]:
        """{module: number of surviving directions (nonzero gates)}."""
        return {g.name: int(g.surviving().numel()) for g in self.gates}

    def sparsity(self) -> float:
        """Fraction of gate entries that are exactly 0 (Table 4's "Sparsity")."""
        return 1.0 - sum(self.ranks().values()) / self.num_gates()

    def param_counts(self) -> dict[str, int]:
        """T: A, B, gates and heads; I: surviving directions r'·(d_in + d_out) per module, plus heads."""
        training = [t for g in self.gates for t in (g.A, g.B, g.gate)]
        kept = sum(int(g.surviving().numel()) * (g.A.shape[1] + g.B.shape[0]) for g in self.gates)
        return {"trainable": trainable_count(self.model), "inference": inference_count(self.model, training, kept)}

    def export(self, output_dir: str) -> None:
        """Prune zero gates, fold g into B and write a plain PEFT LoRA adapter (see export_sora_adapter),
        with the SoRA settings and "# T / I params" beside it in rmlora_config.json."""
        from rmlora.io.adapters import write_rmlora_state

        export_sora_adapter(self.model, output_dir, self.gates)
        write_rmlora_state(output_dir, self)

    # -- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Gates and the gate optimizer's state (tensors; rmlora.io.adapters stores them as safetensors)."""
        opt = self.gate_optimizer.state_dict()
        return {
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "sora": asdict(self.args),
            "total_steps": self.total_steps,
            "modules": [g.name for g in self.gates],
            "gates": {g.name: g.gate.detach().clone() for g in self.gates},
            "gate_optimizer": {str(i): dict(s) for i, s in opt["state"].items()},
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"unsupported SoRA state version {state.get('version')!r} (expected {STATE_VERSION})")
        names = [g.name for g in self.gates]
        if state.get("modules") != names:
            raise ConfigError(
                "the checkpoint's SoRA gates belong to other modules: resume with the same model and target_modules"
            )
        self.config = RMLoraConfig.from_dict(state["config"])
        self.args = SoraArguments(**state["sora"])
        self._xi_values = self.args.xi_values()
        if state.get("total_steps"):
            self.total_steps = int(state["total_steps"])
        for g in self.gates:
            g.gate.copy_(torch.as_tensor(state["gates"][g.name], dtype=g.gate.dtype))
        opt = self.gate_optimizer.state_dict()
        opt["state"] = {
            int(i): {k: torch.as_tensor(v, dtype=torch.float32) for k, v in s.items()}
            for i, s in state.get("gate_optimizer", {}).items()
        }
        self.gate_optimizer.load_state_dict(opt)


# -- export ------------------------------------------------------------------------------------------------
def _relative_name(name: str) -> str:
    # PEFT keys rank_pattern / target_modules by the module path inside the base model
    return name[len("base_model.model.") :] if name.startswith("base_model.model.") else name


@torch.no_grad()
def export_sora_adapter(model: nn.Module, output_dir: str, gates: list[SoraGate] | None = None) -> dict[str, int]:
    """Write a plain PEFT LoRA adapter equal to the gated model; returns {module: exported rank}.

    Per module, the directions with g_i = 0 are dropped and B' = B[:, kept] · diag(g[kept]), A' = A[kept];
    the scaling stays that of training (alpha_pattern = scaling · r', or · √r' with rsLoRA, since PEFT
    recomputes alpha / r). A module with no surviving direction has ΔW = 0 and is left out of
    target_modules; if no direction survives anywhere, the first module is kept at rank 1 with B' = 0,
    because PEFT cannot write an adapter without modules.
    """
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import save_file

    from rmlora.io.adapters import ADAPTER_WEIGHTS_NAME

    if not isinstance(model, PeftModel):
        raise AdapterError("SoRA export needs the PeftModel that prepare_sora_model returned")
    gates = gates if gates is not None else attach_gates(model)
    adapter = gates[0].adapter
    config = copy.deepcopy(model.peft_config[adapter])
    tensors = get_peft_model_state_dict(model, adapter_name=adapter)
    tensors = {k: v.detach() for k, v in tensors.items() if f".{GATE_ATTR}" not in k}
    rank_pattern, alpha_pattern, targets = {}, {}, []
    for gate in gates:
        prefix = gate.path
        a_key, b_key = f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"
        if a_key not in tensors or b_key not in tensors:
            raise AdapterError(
                f"PEFT's state dict has no LoRA weights for {prefix}: export from the model SoRA trained"
            )
        del tensors[a_key], tensors[b_key]
        kept = gate.surviving()
        if kept.numel() == 0:
            continue
        g = gate.gate.detach()
        tensors[a_key] = gate.A.detach()[kept].contiguous()
        tensors[b_key] = (gate.B.detach()[:, kept] * g[kept].to(gate.B.dtype)).contiguous()
        key, r = _relative_name(prefix), int(kept.numel())
        rank_pattern[key] = r
        alpha_pattern[key] = gate.scaling * (math.sqrt(r) if config.use_rslora else r)
        targets.append(key)
    if not targets:
        gate = gates[0]
        prefix = gate.path
        key = _relative_name(prefix)
        tensors[f"{prefix}.lora_A.weight"] = gate.A.detach()[:1].contiguous()
        tensors[f"{prefix}.lora_B.weight"] = torch.zeros_like(gate.B.detach()[:, :1]).contiguous()
        rank_pattern[key], alpha_pattern[key] = 1, gate.scaling
        targets.append(key)
    config.target_modules = targets
    config.rank_pattern, config.alpha_pattern = rank_pattern, alpha_pattern
    config.r = max(rank_pattern.values())
    config.layers_to_transform = config.layers_pattern = config.exclude_modules = None
    config.inference_mode = True
    os.makedirs(output_dir, exist_ok=True)
    save_file(
        {k: v.cpu().contiguous() for k, v in tensors.items()},
        os.path.join(output_dir, ADAPTER_WEIGHTS_NAME),
        metadata={"format": "pt"},
    )
    config.save_pretrained(output_dir)
    return rank_pattern
