"""AdaLoRA baseline (Zhang et al. 2023) through PEFT, with its rank allocator actually running.

    model = prepare_adalora_model(base_model, LoraArguments(target_modules="query,value"),
                                  adalora=AdaLoraArguments(adalora_init_r=8, adalora_target_r=4), total_steps=500)
    ada = AdaLoraMethod(model, RMLoraConfig(method="adalora"), total_steps=500)
    loss = model(**batch).loss                  # PEFT adds orth_reg_weight · regularizer here
    loss.backward(); optimizer.step()
    ada.after_optimizer_step(optimizer, step)   # update_and_allocate(step): importance, budget, masks
    optimizer.zero_grad()

PEFT's rank allocator only runs if `update_and_allocate(global_step)` is called after every backward and
before zero_grad (peft#1327, #1801: users forget it and the rank never changes). RMLoraTrainer calls it
from `on_optimizer_step`, which fires after optimizer.step() and before zero_grad, with the 0-based
index of the step, and sets `total_step` to the Trainer's number of optimizer steps at train begin.

The orthogonal regularizer is PEFT's own: AdaLoraModel.forward adds orth_reg_weight times the mean of
‖PᵀP − I‖_F and ‖QQᵀ − I‖_F to `outputs.loss` whenever labels are given, so `penalty()` is 0 here and
the Trainer does not add it a second time.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import asdict, dataclass, field

import torch
from peft import AdaLoraConfig, PeftWarning
from peft.tuners.adalora import AdaLoraLayer, AdaLoraModel
from peft.utils.other import get_pattern_key
from torch import nn

from rmlora.config import RMLoraConfig
from rmlora.core.pairs import LoraPair, pair_name
from rmlora.errors import ConfigError
from rmlora.io.adapters import PEFT_PREFIX, relative_module_name, save_adapter
from rmlora.methods.base import TrainingMethod
from rmlora.methods.lora import LoraArguments, checked_peft_model
from rmlora.methods.param_counts import full_shape, inference_count, trainable_count

logger = logging.getLogger(__name__)

# PEFT's save takes any zero-sized lora_A / lora_B for an ungathered ZeRO-3 / FSDP shard (save_and_load.py)
_EMPTY_PAIRS_WARNING = r"Adapter '[^']*': \d+ LoRA tensor\(s\) have invalid shape"


@dataclass
class AdaLoraArguments:
    """AdaLoRA's budget knobs (PEFT's AdaLoraConfig), under names that do not clash with LoRA's."""

    adalora_init_r: int = field(default=12, metadata={"help": "AdaLoRA's initial rank of every module (init_r)."})
    adalora_target_r: int = field(
        default=8, metadata={"help": "AdaLoRA's target average rank after pruning (target_r)."}
    )
    adalora_tinit: int = field(default=0, metadata={"help": "Steps of warm-up before rank pruning starts (tinit)."})
    adalora_tfinal: int = field(
        default=1,
        metadata={
            "help": "Final steps with the budget fixed (tfinal, ≥ 1): PEFT fixes the final budget at step "
            "total_step − tfinal, which a run of total_step steps (0-based) reaches only when tfinal ≥ 1."
        },
    )
    adalora_delta_t: int = field(default=1, metadata={"help": "Steps between two budget allocations (deltaT)."})
    adalora_orth_reg_weight: float = field(
        default=0.5, metadata={"help": "Weight of AdaLoRA's orthogonal regularizer."}
    )
    adalora_beta1: float = field(default=0.85, metadata={"help": "EMA factor of the importance sensitivity."})
    adalora_beta2: float = field(default=0.85, metadata={"help": "EMA factor of the importance uncertainty."})

    def __post_init__(self):
        if self.adalora_init_r < 1:
            raise ConfigError(f"adalora_init_r must be at least 1, got {self.adalora_init_r}")
        if not 0 <= self.adalora_target_r < self.adalora_init_r:
            # PEFT's allocator drops init_bgt − budget triplets: with target_r = init_r it has none to drop and fails
            raise ConfigError(
                f"adalora_target_r must lie in [0, adalora_init_r) = [0, {self.adalora_init_r}), "
                f"got {self.adalora_target_r}: use method lora for a fixed rank"
            )
        if self.adalora_tinit < 0:
            raise ConfigError(f"adalora_tinit must be ≥ 0, got {self.adalora_tinit}")
        if self.adalora_tfinal < 1:
            raise ConfigError(
                f"adalora_tfinal must be at least 1, got {self.adalora_tfinal}: PEFT fixes the final budget at step "
                "total_step − tfinal, which the run never reaches with tfinal = 0"
            )
        if self.adalora_delta_t < 1:
            raise ConfigError(f"adalora_delta_t must be at least 1, got {self.adalora_delta_t}")
        if self.adalora_orth_reg_weight < 0:
            raise ConfigError(f"adalora_orth_reg_weight must be ≥ 0, got {self.adalora_orth_reg_weight}")
        for name in ("adalora_beta1", "adalora_beta2"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} must lie in (0, 1), got {getattr(self, name)}")

    def check_total_steps(self, total_steps: int) -> None:
        if self.adalora_tinit >= total_steps - self.adalora_tfinal:
            raise ConfigError(
                f"a run of {total_steps} optimizer steps leaves AdaLoRA no budgeting phase with adalora_tinit="
                f"{self.adalora_tinit} and adalora_tfinal={self.adalora_tfinal}: make tinit + tfinal < {total_steps}"
            )

    def adalora_config(
        self, lora: LoraArguments | None = None, total_steps: int | None = None, task_type=None
    ) -> AdaLoraConfig:
        """PEFT's AdaLoraConfig: placement and alpha from LoraArguments `lora`, budget from these fields.

        Without `total_steps` the schedule gets a placeholder length; AdaLoraMethod.set_total_steps (called
        by RMLoraTrainer at train begin) replaces it before the first allocation.
        """
        lora = lora or LoraArguments()
        if lora.use_rslora:
            raise ConfigError("AdaLoRA scales by alpha / current rank and has no rsLoRA form: set use_rslora=False")
        if total_steps is not None:
            self.check_total_steps(int(total_steps))
        placeholder = self.adalora_tinit + self.adalora_tfinal + 1
        return AdaLoraConfig(
            init_r=self.adalora_init_r,
            target_r=self.adalora_target_r,
            tinit=self.adalora_tinit,
            tfinal=self.adalora_tfinal,
            deltaT=self.adalora_delta_t,
            beta1=self.adalora_beta1,
            beta2=self.adalora_beta2,
            orth_reg_weight=self.adalora_orth_reg_weight,
            total_step=int(total_steps) if total_steps else placeholder,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            target_modules=LoraArguments.split(lora.target_modules),
            modules_to_save=LoraArguments.split(lora.modules_to_save),
            task_type=task_type,
        )


def prepare_adalora_model(
    base_model: nn.Module,
    lora: LoraArguments | None = None,
    task_type=None,
    adalora: AdaLoraArguments | None = None,
    total_steps: int | None = None,
) -> nn.Module:
    """PEFT's AdaLoRA model on `base_model`; `total_steps` is the run's number of optimizer steps, if known."""
    adalora = adalora if adalora is not None else AdaLoraArguments()
    return checked_peft_model(base_model, adalora.adalora_config(lora, total_steps, task_type))


def adalora_pairs(model: nn.Module) -> list[LoraPair]:
    """Read-only (A ⊙ E, B) pairs of every AdaLoRA layer of the active adapter(s), for ΔW diagnostics.

    ΔW = B (A ⊙ E) · scaling / (ranknum + 1e-5), as PEFT's AdaLoraLayer.get_delta_weight (the pair's scaling
    carries the division); detached, since RMLora never trains AdaLoRA's triplets.
    """
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, AdaLoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter not in module.lora_E:
                continue
            ranknum = float(module.ranknum[adapter])
            pairs.append(
                LoraPair(
                    name=pair_name(name, adapter, module.active_adapters),
                    A=(module.lora_A[adapter] * module.lora_E[adapter]).detach(),
                    B=module.lora_B[adapter].detach(),
                    rank=int(module.lora_A[adapter].shape[0]),
                    scaling=float(module.scaling[adapter]) / (ranknum + 1e-5),
                    fan_in_fan_out=bool(getattr(module, "fan_in_fan_out", False)),
                )
            )
    return pairs


def _adalora_model(model: nn.Module) -> AdaLoraModel:
    inner = getattr(model, "base_model", None)
    if not isinstance(inner, AdaLoraModel):
        raise ConfigError(
            "method adalora needs a PEFT AdaLoRA model: build it with rmlora.methods.prepare_model(base_model, "
            "RMLoraConfig(method='adalora'), ...)"
        )
    if getattr(inner, "rankallocator", None) is None:
        raise ConfigError("the AdaLoRA adapter is in inference mode: load it with is_trainable=True to train it")
    return inner


class AdaLoraMethod(TrainingMethod):
    """AdaLoRA's hooks for the one training path (rmlora.methods.base.TrainingMethod)."""

    methods = ("adalora",)
    uses_penalty = False  # PEFT puts the orthogonal regularizer into outputs.loss itself
    export_on_save = True  # Trainer.save_model writes export(): PEFT's own save keeps rank-0 modules as empty pairs

    def __init__(
        self,
        model: nn.Module,
        config: RMLoraConfig | None = None,
        adalora: AdaLoraArguments | None = None,
        total_steps: int | None = None,
    ):
        super().__init__(model, config if config is not None else RMLoraConfig(method="adalora"))
        self.adalora_model = _adalora_model(model)
        self.adapter = self.adalora_model.trainable_adapter_name
        self.peft_config = self.adalora_model.peft_config[self.adapter]
        if adalora is None:
            adalora = AdaLoraArguments(
                adalora_init_r=self.peft_config.init_r,
                adalora_target_r=self.peft_config.target_r,
                adalora_tinit=self.peft_config.tinit,
                adalora_tfinal=max(1, self.peft_config.tfinal),
                adalora_delta_t=self.peft_config.deltaT,
                adalora_orth_reg_weight=self.peft_config.orth_reg_weight,
                adalora_beta1=self.peft_config.beta1,
                adalora_beta2=self.peft_config.beta2,
            )
        self.args = adalora
        self._held_rank_pattern = None  # rank_pattern while a save hides or cuts it for PEFT
        self.total_steps: int | None = None
        if total_steps:
            self.set_total_steps(total_steps)

    @classmethod
    def prepare(cls, base_model: nn.Module, lora: LoraArguments, task_type, settings) -> nn.Module:
        return prepare_adalora_model(base_model, lora, task_type, settings.adalora, settings.total_steps)

    @classmethod
    def from_settings(cls, model: nn.Module, config: RMLoraConfig, settings) -> AdaLoraMethod:
        return cls(model, config, adalora=settings.adalora, total_steps=settings.total_steps)

    def set_total_steps(self, total_steps: int) -> None:
        """Make PEFT's budget schedule span `total_steps` optimizer steps (RMLoraTrainer: its max_steps)."""
        total_steps = int(total_steps)
        self.args.check_total_steps(total_steps)
        if self.total_steps is not None and self.total_steps != total_steps:
            logger.warning(
                "AdaLoRA total_step %d replaced by the run's %d optimizer steps", self.total_steps, total_steps
            )
        self.total_steps = total_steps
        self.adalora_model.rankallocator.set_total_step(total_steps)

    # -- hooks (penalty() stays 0: the regularizer is already in the model's loss) ----------------------------
    def after_optimizer_step(self, optimizer, step: int) -> None:
        """PEFT's update_and_allocate(step): gradients are still there (before zero_grad)."""
        if self.total_steps is None:
            raise ConfigError(
                "AdaLoRA needs the run's number of optimizer steps: pass total_steps in the method settings, "
                "or train with RMLoraTrainer, which sets it"
            )
        if any(p.grad is None for _, m in self._layers() for p in (m.lora_A[self.adapter], m.lora_E[self.adapter])):
            # a skipped step without gradients: PEFT's importance p·∇p needs them; the schedule is step-indexed
            return
        self.adalora_model.update_and_allocate(step)

    # -- ranks, counts, export ----------------------------------------------------------------------------------
    def rank_pattern(self) -> dict | None:
        """PEFT's rank_pattern ({"<module>.lora_E.<adapter>": [kept, ...]}), None before the first allocation."""
        return self._held_rank_pattern if self._held_rank_pattern is not None else self.peft_config.rank_pattern

    @contextlib.contextmanager
    def checkpoint_save(self):
        """Save every triplet inside this context (RMLoraTrainer does for checkpoints).

        PEFT cuts a saved AdaLoRA adapter to rank_pattern, and a model with all init_r triplets cannot load
        that cut adapter to resume; the pattern itself goes into state_dict() instead.
        """
        self._held_rank_pattern = self.peft_config.rank_pattern
        self.peft_config.rank_pattern = None
        try:
            yield
        finally:
            self.peft_config.rank_pattern, self._held_rank_pattern = self._held_rank_pattern, None

    def _layers(self):
        for name, module in self.model.named_modules():
            if isinstance(module, AdaLoraLayer) and self.adapter in module.lora_E:
                yield name, module

    def ranks(self) -> dict[str, int]:
        """{module: rank kept}: the allocator's rank_pattern once it has allocated, else the initial rank."""
        pattern = self.rank_pattern() or {}
        out = {}
        for name, module in self._layers():
            mask = _pattern_for(pattern, name, self.adapter)
            out[name] = int(sum(mask)) if mask is not None else full_shape(module.lora_E[self.adapter])[0]
        return out

    def param_counts(self) -> dict[str, int]:
        """T: P, Λ, Q at init_r plus heads; I: kept_r · (d_in + d_out + 1) per module plus heads."""
        ranks = self.ranks()
        training, kept = [], 0
        for name, module in self._layers():
            A, E, B = module.lora_A[self.adapter], module.lora_E[self.adapter], module.lora_B[self.adapter]
            training += [A, E, B]
            kept += ranks[name] * (full_shape(A)[1] + full_shape(B)[0] + 1)
        return {"trainable": trainable_count(self.model), "inference": inference_count(self.model, training, kept)}

    def export(self, output_dir: str) -> None:
        """PEFT's AdaLoRA adapter, cut to the kept triplets by PEFT (rank_pattern); vanilla PEFT loads it.

        A module pruned to rank 0 is left out of the adapter (exclude_modules): its ΔW is exactly 0 (the allocator
        zeroes its Λ), and PEFT would save it as a zero-sized lora_A / lora_B pair, which its save warns about as
        ungathered ZeRO-3 / FSDP shards. If every module is pruned, the adapter keeps PEFT's r = 0 pairs (PEFT
        loads them, peft#1539, but cannot load an adapter that adapts no module), and that warning is not shown.
        """
        ranks = self.ranks()
        pruned = {relative_module_name(name) for name, rank in ranks.items() if rank == 0}
        if not pruned:
            save_adapter(self.model, output_dir, self)
            return
        if len(pruned) == len(ranks):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_EMPTY_PAIRS_WARNING, category=PeftWarning)
                save_adapter(self.model, output_dir, self)
            return
        prefixes = tuple(f"{PEFT_PREFIX}{name}." for name in pruned)
        state_dict = {k: v for k, v in self.model.state_dict().items() if not k.startswith(prefixes)}
        with self._config_leaving_out(pruned):
            save_adapter(self.model, output_dir, self, state_dict=state_dict)

    @contextlib.contextmanager
    def _config_leaving_out(self, modules: set[str]):
        """The adapter config without `modules` (excluded, out of rank_pattern) while a save writes it."""
        config = self.peft_config
        saved = config.rank_pattern, config.exclude_modules
        self._held_rank_pattern = saved[0]  # ranks() and the counts written beside the adapter still read it
        # PEFT keys rank_pattern by `<module>.lora_E.<adapter>`, or `<module>.lora_E` once a save has run
        config.rank_pattern = {k: v for k, v in saved[0].items() if k.rsplit(".lora_E", 1)[0] not in modules}
        config.exclude_modules = _excluding(saved[1], modules)
        try:
            yield
        finally:
            (config.rank_pattern, config.exclude_modules), self._held_rank_pattern = saved, None

    # -- checkpoints ------------------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """The budget so far (rank_pattern) and the importance EMAs the allocator ranks by (tensors)."""
        alloc = self.adalora_model.rankallocator
        return {
            "adalora": asdict(self.args),
            "total_steps": self.total_steps,
            "rank_pattern": self.rank_pattern(),
            "importance": {
                "ipt": dict(alloc.ipt),
                "exp_avg_ipt": dict(alloc.exp_avg_ipt),
                "exp_avg_unc": dict(alloc.exp_avg_unc),
            },
        }

    def load_extra_state(self, state: dict) -> None:
        self.args = AdaLoraArguments(**state["adalora"])
        if state.get("total_steps"):
            self.total_steps = None
            self.set_total_steps(state["total_steps"])
        if state.get("rank_pattern") is not None:
            self.peft_config.rank_pattern = state["rank_pattern"]
        alloc = self.adalora_model.rankallocator
        params = dict(self.adalora_model.model.named_parameters())
        for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            saved = state.get("importance", {}).get(key, {})
            setattr(
                alloc,
                key,
                {
                    n: torch.as_tensor(v, dtype=params[n].dtype).to(params[n].device).reshape(params[n].shape)
                    for n, v in saved.items()
                    if n in params
                },
            )


def _excluding(exclude_modules, modules: set[str]):
    """PEFT's exclude_modules (None, a list / set of names, or a regex) that also excludes `modules`."""
    if not exclude_modules:
        return sorted(modules)
    if isinstance(exclude_modules, str):  # PEFT matches a string with re.fullmatch
        return "|".join([f"(?:{exclude_modules})", *(re.escape(m) for m in sorted(modules))])
    return sorted(set(exclude_modules) | modules)


def _pattern_for(pattern: dict, module_name: str, adapter: str):
    """The rank_pattern entry of a module, by PEFT's key rule (get_pattern_key): PEFT keys it by
    `<path>.lora_E.<adapter>`, or without the adapter after a save."""
    path = relative_module_name(module_name)
    for key in (f"{path}.lora_E.{adapter}", f"{path}.lora_E"):
        found = get_pattern_key(pattern.keys(), key)
        if found in pattern:
            return pattern[found]
    return None
