"""SoraMethod: SoRA's L1 term, gate optimizer, proximal step, counts, export and state (rmlora.methods.sora)."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from rmlora.config import RMLoraConfig
from rmlora.errors import ConfigError
from rmlora.io.state import write_rmlora_state
from rmlora.methods.base import TrainingMethod
from rmlora.methods.lora import LoraArguments
from rmlora.methods.param_counts import full_shape, inference_count, trainable_count
from rmlora.methods.sora.arguments import SoraArguments, soft_threshold, xi_at
from rmlora.methods.sora.export import export_sora_adapter
from rmlora.methods.sora.gates import attach_gates, prepare_sora_model


class SoraMethod(TrainingMethod):
    """SoRA's hooks for the one training path (rmlora.methods.base.TrainingMethod)."""

    methods = ("sora",)
    # RMLoraTrainer.save_model writes export() over the raw adapter: without the gates it would load wrong
    export_on_save = True

    def __init__(
        self,
        model: nn.Module,
        config: RMLoraConfig | None = None,
        sora: SoraArguments | None = None,
        total_steps: int | None = None,
        learning_rate: float | None = None,
    ):
        super().__init__(model, config if config is not None else RMLoraConfig(method="sora"))
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

    @classmethod
    def prepare(cls, base_model: nn.Module, lora: LoraArguments, task_type, settings) -> nn.Module:
        return prepare_sora_model(base_model, lora, task_type)

    @classmethod
    def from_settings(cls, model: nn.Module, config: RMLoraConfig, settings) -> SoraMethod:
        return cls(model, config, settings.sora, settings.total_steps, settings.learning_rate)

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

    # -- after the main optimizer step ---------------------------------------------------------------------
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
        kept = sum(int(g.surviving().numel()) * (full_shape(g.A)[1] + full_shape(g.B)[0]) for g in self.gates)
        return {"trainable": trainable_count(self.model), "inference": inference_count(self.model, training, kept)}

    def export(self, output_dir: str) -> None:
        """Prune zero gates, fold g into B and write a plain PEFT LoRA adapter (see export_sora_adapter),
        with the SoRA settings and "# T / I params" beside it in rmlora_config.json."""
        export_sora_adapter(self.model, output_dir, self.gates)
        write_rmlora_state(output_dir, self)

    # -- checkpoints ------------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """Gates and the gate optimizer's state (tensors; rmlora.io.state stores them as safetensors)."""
        opt = self.gate_optimizer.state_dict()
        return {
            "sora": asdict(self.args),
            "total_steps": self.total_steps,
            "modules": [g.name for g in self.gates],
            "gates": {g.name: g.gate.detach().clone() for g in self.gates},
            "gate_optimizer": {str(i): dict(s) for i, s in opt["state"].items()},
        }

    @torch.no_grad()
    def load_extra_state(self, state: dict) -> None:
        names = [g.name for g in self.gates]
        if state.get("modules") != names:
            raise ConfigError(
                "the checkpoint's SoRA gates belong to other modules: resume with the same model and target_modules"
            )
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
