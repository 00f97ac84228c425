"""SoRA baseline (Ding et al. 2023): a gate vector between LoRA's A and B, L1-sparsified by a proximal step.

    model = prepare_sora_model(base_model, LoraArguments(lora_r=8, target_modules="query,value"))
    sora = SoraMethod(model, RMLoraConfig(method="sora"), sora=SoraArguments(sora_lambda=1e-3, sora_xi=1e-4))
    loss = task_loss + sora.penalty()          # λ · Σ|g| / #gates
    loss.backward(); optimizer.step()          # the main optimizer does not own the gates
    sora.after_optimizer_step(optimizer, step) # gate AdamW step, then g ← sign(g)·max(|g| − ξ, 0)
    sora.export("out/")                        # plain PEFT LoRA adapter, rank_pattern = surviving directions

The LoRA layers are PEFT's own: a forward pre-hook on `lora_B[adapter]` multiplies its input by the gate,
so the branch computes ((x Aᵀ) ⊙ g) Bᵀ · scaling as in the reference (docs/BASELINES.md, sora) and PEFT's
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

from rmlora.methods.sora.arguments import XI_SCHEDULES, SoraArguments, soft_threshold, xi_at
from rmlora.methods.sora.export import export_sora_adapter
from rmlora.methods.sora.gates import GATE_ATTR, SoraGate, attach_gates, prepare_sora_model, sora_pairs
from rmlora.methods.sora.method import SoraMethod

__all__ = [
    "GATE_ATTR",
    "XI_SCHEDULES",
    "SoraArguments",
    "SoraGate",
    "SoraMethod",
    "attach_gates",
    "export_sora_adapter",
    "prepare_sora_model",
    "soft_threshold",
    "sora_pairs",
    "xi_at",
]
