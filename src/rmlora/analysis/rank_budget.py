"""Rank budget: how much LoRA rank a fine-tune needs, read off E = W_target − W_base (Theorem 3.1, Eq. 9).

Zeng & Lee's bound (the paper's Eq. 8) charges every target layer i the term e_i = σ_{R+1}(E_i), the
(R+1)-th singular value of the discrepancy between the target weight and the frozen weight, for a LoRA of
rank R (Eq. 9, one pre-trained layer per target layer). For two checkpoints of one architecture — a base
and a full fine-tune of it, or any two — this module computes, for every weight matrix LoRA would target:

- the singular values σ_1 ≥ σ_2 ≥ … of E = W_target − W_base (dense, float64),
- the bound term e(R) = σ_{R+1}(E) for each candidate R (0 once R ≥ min(d_out, d_in)),
- the best relative error any rank-R update can reach, ‖E − E_R‖_F / ‖E‖_F = sqrt(Σ_{i>R} σ_i²) / ‖E‖_F
  (Eckart–Young: E_R, the truncated SVD, is the best rank-R approximation of E),
- the smallest R whose best relative error is at most `max_error`.

Given a LoRA adapter trained on the same base (Section 4.1): ΔW has intrinsic rank r ≤ R, so the bound
only reaches e(r) = σ_{r+1}(E), not σ_{R+1}(E). The gap σ_{r+1}(E) − σ_{R+1}(E) is the part of the nominal
budget the adapter left unused; r / R is the budget it used.

E is always reported as d_out x d_in: GPT-2's Conv1D stores its weight as d_in x d_out, so it is transposed
(σ(E) does not change; the reported shape and the comparison with ΔW = s·BA do).

Checkpoints are read with safetensors directly (model.safetensors or a sharded index), module types from a
skeleton of the architecture built on the meta device (no weights allocated); anything else (a hub id, a
folder without safetensors) goes through transformers' from_pretrained. Weight names are matched between
checkpoints by their longest common dotted suffix, so a base saved as `BertModel` (encoder.layer.0...)
matches a fine-tune saved as `BertForSequenceClassification` (bert.encoder.layer.0...).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from rmlora.errors import AdapterError, ConfigError

DEFAULT_RANKS = (1, 2, 4, 8, 16, 32)
DEFAULT_MAX_ERROR = 0.1
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"


# -- the analysis of one discrepancy E -------------------------------------------------------------------


def discrepancy_singular_values(E: torch.Tensor) -> torch.Tensor:
    """σ(E), descending, float64."""
    return torch.linalg.svdvals(E.detach().to(torch.float64).cpu())


def bound_term(singular_values: torch.Tensor, rank: int) -> float:
    """e(R) = σ_{R+1}(E) (Eq. 9); 0 when R ≥ the number of singular values."""
    return float(singular_values[rank]) if rank < singular_values.numel() else 0.0


def tail_norms(singular_values: torch.Tensor) -> torch.Tensor:
    """tail[R] = ‖E − E_R‖_F = sqrt(Σ_{i>R} σ_i²) for R = 0 … k (Eckart–Young), float64, length k+1."""
    s2 = singular_values.to(torch.float64) ** 2
    # suffix sums from the smallest σ up, so the small tails are not the difference of two large numbers
    suffix = torch.flip(torch.cumsum(torch.flip(s2, [0]), 0), [0])
    return torch.cat([suffix, suffix.new_zeros(1)]).clamp_min(0).sqrt()


def relative_error(singular_values: torch.Tensor, rank: int) -> float:
    """Best relative error of a rank-`rank` update, ‖E − E_R‖_F / ‖E‖_F; 0 for E = 0."""
    tails = tail_norms(singular_values)
    total = float(tails[0])
    if total == 0.0:
        return 0.0
    return float(tails[min(rank, tails.numel() - 1)]) / total


def rank_for_error(singular_values: torch.Tensor, max_error: float) -> int:
    """The smallest R with ‖E − E_R‖_F ≤ max_error · ‖E‖_F."""
    tails = tail_norms(singular_values)
    ok = torch.nonzero(tails <= max_error * tails[0]).flatten()
    return int(ok[0]) if ok.numel() else int(tails.numel() - 1)


# -- results ---------------------------------------------------------------------------------------------


@dataclass
class AdapterBudget:
    """How much of its nominal rank R a trained LoRA adapter used on one module (Section 4.1)."""

    adapter_module: str
    lora_rank: int  # R, the nominal rank
    intrinsic_rank: int  # r, the numerical rank of ΔW = s·BA
    sigma_r1: float  # σ_{r+1}(E): the bound term the adapter actually reaches
    sigma_R1: float  # σ_{R+1}(E): the bound term its nominal rank allows
    error_r: float  # ‖E − E_r‖_F / ‖E‖_F
    error_R: float  # ‖E − E_R‖_F / ‖E‖_F
    delta_error: float  # ‖E − ΔW‖_F / ‖E‖_F: how close the adapter's own update is to E
    delta_singular_values: list[float]

    @property
    def gap(self) -> float:
        return self.sigma_r1 - self.sigma_R1

    @property
    def budget_used(self) -> float:
        return self.intrinsic_rank / self.lora_rank if self.lora_rank else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "gap": self.gap, "budget_used": self.budget_used}


@dataclass
class ModuleBudget:
    module: str  # the module path in the base checkpoint (weight key without ".weight")
    layer_type: str  # the path after the block index, e.g. attention.self.query
    d_out: int
    d_in: int
    base_norm: float  # ‖W_base‖_F
    norm: float  # ‖E‖_F
    numerical_rank: int  # #σ_i(E) > max(d_out, d_in)·eps(float32)·σ_1
    rank_for_error: int  # smallest R with relative error ≤ max_error
    ranks: list[int]
    bound_terms: list[float]  # σ_{R+1}(E) for each R in ranks
    relative_errors: list[float]  # ‖E − E_R‖_F / ‖E‖_F for each R in ranks
    singular_values: list[float]
    adapter: AdapterBudget | None = None

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "adapter"}
        out["adapter"] = self.adapter.to_dict() if self.adapter is not None else None
        return out

    def relative_error_curve(self) -> np.ndarray:
        """‖E − E_R‖_F / ‖E‖_F for R = 0 … min(d_out, d_in)."""
        tails = tail_norms(torch.tensor(self.singular_values, dtype=torch.float64)).numpy()
        return tails / tails[0] if tails[0] > 0 else np.zeros_like(tails)


@dataclass
class RankBudget:
    base: str
    target: str
    ranks: list[int]
    max_error: float
    modules: list[ModuleBudget] = field(default_factory=list)
    adapter: str | None = None

    @property
    def summary(self) -> dict:
        """Model-level numbers per candidate R: Σ_l σ_{R+1}(E_l) (the terms Eq. 8 adds up), the global relative
        error sqrt(Σ_l ‖E_l − E_{l,R}‖²_F / Σ_l ‖E_l‖²_F), LoRA parameters, and modules within max_error."""
        mods = self.modules
        total_sq = sum(m.norm**2 for m in mods)
        per_rank = []
        for j, R in enumerate(self.ranks):
            tail_sq = sum((m.relative_errors[j] * m.norm) ** 2 for m in mods)
            per_rank.append(
                {
                    "rank": R,
                    "sum_bound_terms": float(sum(m.bound_terms[j] for m in mods)),
                    "relative_error": math.sqrt(tail_sq / total_sq) if total_sq > 0 else 0.0,
                    "max_relative_error": max((m.relative_errors[j] for m in mods), default=0.0),
                    "modules_within_max_error": sum(m.relative_errors[j] <= self.max_error for m in mods),
                    "lora_parameters": sum(min(R, m.d_out, m.d_in) * (m.d_out + m.d_in) for m in mods),
                }
            )
        needed = [m.rank_for_error for m in mods]
        out = {
            "num_modules": len(mods),
            "total_norm": math.sqrt(total_sq),
            "max_error": self.max_error,
            # one R for every module (a uniform LoRA config) vs the per-module need
            "uniform_rank_for_error": max(needed, default=0),
            "median_rank_for_error": float(np.median(needed)) if needed else 0.0,
            "per_rank": per_rank,
        }
        with_adapter = [m.adapter for m in mods if m.adapter is not None]
        if with_adapter:
            out["adapter"] = {
                "num_modules": len(with_adapter),
                "mean_lora_rank": float(np.mean([a.lora_rank for a in with_adapter])),
                "mean_intrinsic_rank": float(np.mean([a.intrinsic_rank for a in with_adapter])),
                "mean_budget_used": float(np.mean([a.budget_used for a in with_adapter])),
                "sum_sigma_r1": float(sum(a.sigma_r1 for a in with_adapter)),
                "sum_sigma_R1": float(sum(a.sigma_R1 for a in with_adapter)),
                "sum_gap": float(sum(a.gap for a in with_adapter)),
                "mean_delta_error": float(np.mean([a.delta_error for a in with_adapter])),
            }
        return out

    def by_layer_type(self) -> dict[str, list[ModuleBudget]]:
        groups: dict[str, list[ModuleBudget]] = {}
        for m in self.modules:
            groups.setdefault(m.layer_type, []).append(m)
        return groups

    def to_dict(self) -> dict:
        return {
            "base": self.base,
            "target": self.target,
            "adapter": self.adapter,
            "ranks": self.ranks,
            "max_error": self.max_error,
            "modules": [m.to_dict() for m in self.modules],
            "summary": self.summary,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# -- names ---------------------------------------------------------------------------------------------------

_INDEX = re.compile(r"^\d+$")


def layer_type(module: str) -> str:
    """The part of a module path after its last block index: encoder.layer.3.attention.self.query ->
    attention.self.query, transformer.h.0.mlp.c_fc -> mlp.c_fc; the last component if there is no index."""
    parts = module.split(".")
    idx = [i for i, p in enumerate(parts) if _INDEX.match(p)]
    if idx and idx[-1] < len(parts) - 1:
        return ".".join(parts[idx[-1] + 1 :])
    return parts[-1]


def in_block(module: str) -> bool:
    """Inside a repeated block (a ModuleList index in the path): not an embedding, pooler or head."""
    return any(_INDEX.match(p) for p in module.split(".")[:-1])


def matches_target_modules(module: str, target_modules: Sequence[str]) -> bool:
    """PEFT's rule for a list of target_modules: the name equals an entry or ends with '.' + entry."""
    return any(module == t or module.endswith("." + t) for t in target_modules)


def parse_target_modules(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = [t.strip() for t in (value.split(",") if isinstance(value, str) else value)]
    items = [t for t in items if t]
    if not items:
        raise ConfigError("target_modules is empty: pass comma-separated module name suffixes, e.g. query,value")
    return items


def match_names(wanted: Iterable[str], available: Iterable[str]) -> dict[str, str]:
    """Map each wanted dotted name to the available name sharing its longest dotted suffix, when exactly one
    does (the full name of one side may carry a prefix the other lacks: bert., base_model.model., ...)."""
    by_suffix: dict[str, set[str]] = {}
    for name in available:
        parts = name.split(".")
        for i in range(len(parts)):
            by_suffix.setdefault(".".join(parts[i:]), set()).add(name)
    out = {}
    for name in wanted:
        parts = name.split(".")
        for i in range(len(parts)):
            hits = by_suffix.get(".".join(parts[i:]))
            if hits is None:
                continue
            if len(hits) == 1:
                out[name] = next(iter(hits))
            break  # the longest suffix that exists decides; an ambiguous one leaves the name unmatched
    return out


# -- checkpoints -------------------------------------------------------------------------------------------


@dataclass
class CheckpointWeights:
    """The weight matrices of one checkpoint, read on demand, with the modules LoRA can target."""

    source: str
    shapes: dict[str, tuple[int, ...]]  # weight key -> stored shape
    read: Callable[[str], torch.Tensor]
    linear_modules: dict[str, bool]  # module path -> transposed (Conv1D stores d_in x d_out)

    def __post_init__(self) -> None:
        # weight key -> module path; the architecture's paths may differ from the file's keys by a prefix
        matched = match_names([f"{m}.weight" for m in self.linear_modules], self.shapes)
        self.module_of = {key: name[: -len(".weight")] for name, key in matched.items()}

    def transposed(self, key: str) -> bool:
        return self.linear_modules.get(self.module_of.get(key, ""), False)

    def matrix(self, key: str) -> torch.Tensor:
        """The weight as d_out x d_in, float64."""
        w = self.read(key).to(torch.float64)
        return w.T if self.transposed(key) else w


def _safetensors_files(path: str) -> list[str] | None:
    single = os.path.join(path, SAFETENSORS_NAME)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(path, SAFETENSORS_INDEX_NAME)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ConfigError(
                f"{index} is not a safetensors index ({e}): re-save the model with save_pretrained"
            ) from None
        files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise ConfigError(
                f"{index} names {os.path.basename(missing[0])}, which is not in {path}: the download is incomplete"
            )
        return files
    return None


def _skeleton_linear_modules(path: str) -> dict[str, bool] | None:
    """Linear/Conv1D module paths of the architecture in path/config.json, from a meta-device skeleton."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        return None
    try:
        import transformers
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(path)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        with torch.device("meta"):
            model = cls(config) if cls is not None else AutoModel.from_config(config)
    except Exception:  # an architecture transformers cannot build: fall back to the names in the file
        return None
    return linear_modules(model)


def linear_modules(model: torch.nn.Module) -> dict[str, bool]:
    """{module path: stored transposed} for every nn.Linear and transformers Conv1D of a model."""
    from transformers.pytorch_utils import Conv1D

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):
            out[name] = True
        elif isinstance(module, torch.nn.Linear):
            out[name] = False
    return out


def _guess_linear_modules(shapes: dict[str, tuple[int, ...]]) -> dict[str, bool]:
    # without an architecture: 2-D "*.weight" tensors that are not embeddings, taken as nn.Linear (d_out x d_in)
    return {
        key[: -len(".weight")]: False
        for key, shape in shapes.items()
        if key.endswith(".weight") and len(shape) == 2 and "embed" not in key.lower()
    }


def load_checkpoint(path: str) -> CheckpointWeights:
    """The weights of a transformers model folder (safetensors read lazily) or hub id (from_pretrained)."""
    files = _safetensors_files(path) if os.path.isdir(path) else None
    if files is not None:
        from safetensors import SafetensorError, safe_open

        owner: dict[str, str] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        try:
            for file in files:
                with safe_open(file, framework="pt") as f:
                    for key in f.keys():
                        owner[key] = file
                        shapes[key] = tuple(f.get_slice(key).get_shape())
        except (SafetensorError, OSError) as e:
            raise ConfigError(f"{path} holds an unreadable safetensors file ({e}): re-save the model") from None

        def read(key: str) -> torch.Tensor:
            with safe_open(owner[key], framework="pt") as f:
                return f.get_tensor(key)

        linear = _skeleton_linear_modules(path)
        if linear is None:
            linear = _guess_linear_modules(shapes)
        return CheckpointWeights(path, shapes, read, linear)
    return _load_with_from_pretrained(path)


def _load_with_from_pretrained(path: str) -> CheckpointWeights:
    try:
        import transformers
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(path)
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        model = (cls or AutoModel).from_pretrained(path)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"cannot load {path!r} ({first}): pass a transformers model folder (model.safetensors + config.json) or a hub id"
        ) from None
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return CheckpointWeights(
        path, {k: tuple(v.shape) for k, v in state.items()}, state.__getitem__, linear_modules(model)
    )


# -- the analysis ------------------------------------------------------------------------------------------


def _check_ranks(ranks: Sequence[int]) -> list[int]:
    ranks = sorted(set(int(r) for r in ranks))
    if not ranks or ranks[0] < 1:
        raise ConfigError(f"ranks must be positive integers, got {list(ranks)}: e.g. --ranks 1,2,4,8,16,32")
    return ranks


def select_modules(ckpt: CheckpointWeights, target_modules: Sequence[str] | None) -> dict[str, str]:
    """{module: weight key} of the 2-D weights LoRA would target: every Linear/Conv1D inside a transformer block
    by default (not embeddings, norms, poolers or heads), or those matching `target_modules` (PEFT's rule)."""
    out = {}
    for key, module in ckpt.module_of.items():  # Linear/Conv1D without a stored weight (a tied lm_head) are absent
        if len(ckpt.shapes[key]) != 2:
            continue
        if matches_target_modules(module, target_modules) if target_modules is not None else in_block(module):
            out[module] = key
    return out


def rank_budget(
    base: str,
    target: str,
    ranks: Sequence[int] = DEFAULT_RANKS,
    max_error: float = DEFAULT_MAX_ERROR,
    target_modules: str | Sequence[str] | None = None,
    adapter: str | None = None,
    rtol: float | None = None,
    progress: bool = True,
) -> RankBudget:
    """The rank budget of the fine-tune base -> target (and, with `adapter`, how much of it a LoRA used)."""
    ranks = _check_ranks(ranks)
    if not (0.0 <= max_error < 1.0) or math.isnan(max_error):
        raise ConfigError(f"max_error must lie in [0, 1), got {max_error}: it is a relative Frobenius error, e.g. 0.1")
    targets = parse_target_modules(target_modules)
    base_ckpt, target_ckpt = load_checkpoint(base), load_checkpoint(target)

    pairs_by_module = None
    if adapter is not None:
        pairs_by_module = _adapter_pairs_on_base(adapter, base_ckpt, targets)
        base_keys = {module: pair[0] for module, pair in pairs_by_module.items()}
    else:
        base_keys = select_modules(base_ckpt, targets)
        if not base_keys:
            what = (
                f"target_modules {','.join(targets)}" if targets else "a Linear/Conv1D layer inside a transformer block"
            )
            raise ConfigError(
                f"no weight matrix of {base!r} matches {what}: check --target_modules against the model's module names"
            )
    target_keys = match_names(base_keys.values(), target_ckpt.shapes)

    result = RankBudget(base=base, target=target, ranks=ranks, max_error=max_error, adapter=adapter)
    modules = list(base_keys)
    if progress:
        from tqdm.auto import tqdm

        modules = tqdm(modules, desc="SVD of E = W_target − W_base", unit="module", disable=None)
    for module in modules:
        base_key = base_keys[module]
        target_key = target_keys.get(base_key)
        if target_key is None:
            raise ConfigError(
                f"{target!r} has no weight matching {base_key} of {base!r}: base and target must be the same architecture"
            )
        W0 = base_ckpt.matrix(base_key)
        W1 = target_ckpt.matrix(target_key)
        if W0.shape != W1.shape:
            raise ConfigError(
                f"{base_key} is {tuple(W0.shape)} in the base but {tuple(W1.shape)} in the target: "
                "compare two checkpoints of the same architecture (or leave this module out with --target_modules)"
            )
        result.modules.append(_module_budget(module, W0, W1 - W0, ranks, max_error, pairs_by_module, rtol))
    return result


def _module_budget(module, W0, E, ranks, max_error, pairs_by_module, rtol) -> ModuleBudget:
    from rmlora.analysis.spectrum import FLOAT32_EPS

    sv = discrepancy_singular_values(E)
    d_out, d_in = E.shape
    tails = tail_norms(sv)
    norm = float(tails[0])
    rel = (lambda R: float(tails[min(R, tails.numel() - 1)]) / norm) if norm > 0 else (lambda R: 0.0)
    smax = float(sv[0]) if sv.numel() else 0.0
    budget = ModuleBudget(
        module=module,
        layer_type=layer_type(module),
        d_out=d_out,
        d_in=d_in,
        base_norm=float(torch.linalg.matrix_norm(W0)),
        norm=norm,
        numerical_rank=int((sv > smax * max(d_out, d_in) * FLOAT32_EPS).sum()) if smax > 0 else 0,
        rank_for_error=rank_for_error(sv, max_error),
        ranks=list(ranks),
        bound_terms=[bound_term(sv, R) for R in ranks],
        relative_errors=[rel(R) for R in ranks],
        singular_values=[float(x) for x in sv],
    )
    if pairs_by_module is not None:
        budget.adapter = _adapter_budget(sv, E, rel, pairs_by_module[module], rtol)
    return budget


# -- a LoRA adapter on the same base (Section 4.1) -------------------------------------------------------------


def _adapter_pairs_on_base(adapter_dir: str, base_ckpt: CheckpointWeights, targets) -> dict:
    """{base module: (base weight key, adapter module, A, B, scaling)} for every LoRA pair, checked against the base."""
    from rmlora.io.adapters import adapter_pairs, read_adapter

    config, tensors = read_adapter(adapter_dir)
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA" or any(".lora_E" in k for k in tensors):
        # AdaLoRA's ΔW = B (A ⊙ E): reading only A and B would report a wrong update
        raise AdapterError(
            f"{adapter_dir!r} is a {peft_type} adapter, not a LoRA one: rank-budget reads lora_A/lora_B adapters "
            "(lora, r-lora, gm-lora, rm-lora, and SoRA's pruned export)"
        )
    pairs = adapter_pairs(config, tensors)
    if targets is not None:
        pairs = [p for p in pairs if matches_target_modules(p[0], targets)]
        if not pairs:
            raise AdapterError(
                f"no LoRA module of {adapter_dir!r} matches target_modules {','.join(targets)}: drop --target_modules or fix it"
            )
    keys = {f"{name}.weight": (name, A, B, s) for name, A, B, s in pairs}
    matched = match_names(keys, base_ckpt.shapes)
    if not matched:
        example = next(iter(keys))
        raise AdapterError(
            f"none of the adapter's modules (e.g. {example[: -len('.weight')]}) is a weight of the base {base_ckpt.source!r}: "
            "pass the base model the adapter was trained on"
        )
    missing = [k for k in keys if k not in matched]
    if missing:
        raise AdapterError(
            f"the adapter's module {missing[0][: -len('.weight')]} has no weight in the base {base_ckpt.source!r}: "
            "pass the base model the adapter was trained on"
        )
    out = {}
    for key, base_key in matched.items():
        name, A, B, s = keys[key]
        module = base_ckpt.module_of.get(base_key)
        if module is None or A.dim() != 2 or B.dim() != 2:
            raise AdapterError(
                f"the adapter's module {name} is not a Linear/Conv1D layer of the base: rank-budget compares the weights of Linear/Conv1D layers"
            )
        shape = base_ckpt.shapes[base_key]
        d_out, d_in = (shape[1], shape[0]) if base_ckpt.transposed(base_key) else (shape[0], shape[1])
        if len(shape) != 2 or (B.shape[0], A.shape[1]) != (d_out, d_in):
            raise AdapterError(
                f"the adapter's ΔW of {name} is {B.shape[0]}x{A.shape[1]} but the base weight {base_key} is "
                f"{d_out}x{d_in} (d_out x d_in): the adapter was trained on another base model"
            )
        out[module] = (base_key, name, A, B, s)
    return out


def _adapter_budget(sv, E, rel, pair, rtol) -> AdapterBudget:
    from rmlora.analysis.spectrum import delta_singular_values, numerical_rank

    _, name, A, B, scaling = pair
    R = int(A.shape[0])
    dsv = delta_singular_values(A, B, scaling)
    r = numerical_rank(dsv, tuple(E.shape), rtol)
    delta = scaling * (B.to(torch.float64) @ A.to(torch.float64))
    norm = float(torch.linalg.matrix_norm(E))
    return AdapterBudget(
        adapter_module=name,
        lora_rank=R,
        intrinsic_rank=r,
        sigma_r1=bound_term(sv, r),
        sigma_R1=bound_term(sv, R),
        error_r=rel(r),
        error_R=rel(R),
        delta_error=float(torch.linalg.matrix_norm(E - delta)) / norm if norm > 0 else 0.0,
        delta_singular_values=[float(x) for x in dsv],
    )
