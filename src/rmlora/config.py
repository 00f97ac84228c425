"""RM-LoRA settings: one dataclass, validated on construction.

The defaults were chosen on validation grids over three real tasks (docs/RESULTS.md, experiment 7; README,
"Choosing the settings"): the released code's scale-invariant `frd` form of the penalty (mean |cosine| between
distinct directions), λ = 0.001, r̂ = 3/4 of R, the penalty averaged over the LoRA matrices
(`reg_reduction="normalized"`, docs/THEORY.md §4), no step compensation. On none of those tasks did any setting of
RM-LoRA beat LoRA; these are the settings that cost least. Eq. 10's squared form pulls every singular value of A
and B to 1 and so fixes the scale of ΔW, which cost 8–18 points on a 40-class head. `RMLoraConfig.paper()` gives
Eq. 10's exact sum, `RMLoraConfig.released_code()` the behaviour of the authors' released GLUE code (its
`run_glue.sh`, `lora_type v2`; `released_code("v1")` is its README's example, A's directions shared with B):

| field                | default                         | paper()          | released_code()                      |
|----------------------|---------------------------------|------------------|--------------------------------------|
| reg_form             | "frd" mean |cos| of directions  | "squared" (Eq.10)| "frobenius" ‖AAᵀ−I‖_F (non-squared)  |
| reg_reduction        | "normalized" (mean over A, B)   | "sum" (Eq. 10)   | "mean" over all A and B matrices     |
| reg_weight           | 0.001 (validated, see above)    | 0.001 (none given)| 0.1 (`reg_orth_coef`)               |
| r_hat                | 0.75 (validated)                | 0.5 (none given) | 0.5 (R = 8, r̂ = 4)                   |
| mask_sampling        | "shared" (Algorithm 1)          | "shared"         | "independent" ("v2", GLUE script);   |
|                      |                                 |                  |  "shared" with variant="v1"          |
| mask_mode            | "strict" (only R_t is updated)  | "strict"         | "grad" (`.grad *= mask`, AdamW still |
|                      |                                 |                  |  moves masked rows)                  |
| step_compensation    | "none" (steps as the optimizer  | "none"           | "none"                               |
|                      |  made them)                     |                  |                                      |
| mask_first_step      | True (every step is masked)     | True             | False (global step 0 unmasked)       |
| mask_before_clipping | True (clip the masked gradient) | True             | False (clip norm of unmasked grads)  |

With the normalized reduction λ means the same whatever R, the number of adapted layers and their widths: frd
is a mean of |cosines| in [0, 1], so the penalty is at most λ; the squared form's normalized value starts at
≈ 0.72 at PEFT's initialisation (docs/THEORY.md §4). Under `paper()`'s sum the squared form weighs 2·(#pairs)·R
times more.

Every difference from the released code, and why, is in docs/FIDELITY.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field

from rmlora.errors import ConfigError

LORA_METHODS = ("lora", "r-lora", "gm-lora", "rm-lora")
BASELINE_METHODS = ("full", "adalora", "sora")
METHODS = ("full", "lora", "adalora", "sora", "r-lora", "gm-lora", "rm-lora")  # the paper's order
REG_FORMS = ("squared", "frobenius", "frd")
REG_REDUCTIONS = ("normalized", "sum", "mean")
MASK_SAMPLINGS = ("shared", "independent")
MASK_MODES = ("grad", "strict")
STEP_COMPENSATIONS = ("none", "linear", "sqrt")
# the released code's `lora_type` values that mask both matrices, and the mask_sampling each means
RELEASED_VARIANTS = {"v1": "shared", "v2": "independent"}

# methods whose loss carries the orthogonality penalty / whose updates are masked
PENALIZED = ("r-lora", "rm-lora")
MASKED = ("gm-lora", "rm-lora")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")


@dataclass
class RMLoraConfig:
    """How RM-LoRA (or one of its ablations) trains the LoRA matrices of a PEFT model."""

    method: str = field(
        default="rm-lora",
        metadata={
            "help": "rm-lora (penalty and masking), r-lora (penalty only), gm-lora (masking only), lora (neither); "
            "baselines: full (full fine-tuning), adalora (PEFT AdaLoRA), sora (gated sparse LoRA)."
        },
    )
    r_hat: int | float = field(
        default=0.75,
        metadata={
            "help": "Directions updated per step: an int r̂ (1 ≤ r̂ ≤ R of every module), or a float in (0, 1] "
            "meaning that fraction of each module's R, rounded, at least 1 (default 0.75, validated: README)."
        },
    )
    reg_weight: float = field(
        default=0.001,
        metadata={
            "help": "λ, the weight of the penalty in the loss (≥ 0; default 0.001, chosen on validation: README). With "
            "the default normalized reduction the frd penalty is at most λ and the squared one starts at ≈ 0.72 λ for "
            "PEFT's default init, whatever R and the number of adapted layers; with reg_reduction=sum (Eq. 10) "
            "divide λ by about 2·#pairs·R for the same weight."
        },
    )
    reg_form: str = field(
        default="frd",
        metadata={
            "help": "squared: ‖AAᵀ−I‖²_F + ‖BᵀB−I‖²_F (Eq. 10); frobenius: the released code's non-squared norms; "
            "frd: the released code's scale-invariant variant, mean |cosine similarity| between distinct rows of A "
            "(columns of B)."
        },
    )
    reg_reduction: str = field(
        default="normalized",
        metadata={
            "help": "normalized: each A and B term divided by that of a zero matrix of its rank (R squared, √R "
            "frobenius, 1 frd) and averaged over all A and B matrices, i.e. for squared the mean over every "
            "direction of (σ²−1)², so λ does not depend on R, the number of layers or their widths; sum: summed "
            "over all LoRA pairs (Eq. 10); mean: averaged over all A and B matrices (released code)."
        },
    )
    mask_sampling: str = field(
        default="shared",
        metadata={
            "help": "shared: the same directions for A's rows and B's columns (Algorithm 1); independent: drawn "
            "separately (released code 'v2')."
        },
    )
    mask_mode: str = field(
        default="strict",
        metadata={
            "help": "grad: zero the unselected gradients (Algorithm 1 / released code; AdamW momentum and weight "
            "decay still move them); strict: unselected rows/columns keep weights and optimizer state unchanged."
        },
    )
    step_compensation: str = field(
        default="none",
        metadata={
            "help": "Scale each masked optimizer step's change of the LoRA matrices, like inverted dropout, so that a "
            "direction updated on r̂/R of the steps travels as far as under LoRA: linear by R/r̂, sqrt by √(R/r̂), "
            "none leaves the step as the optimizer made it (docs/THEORY.md, 'Masked steps and the learning rate')."
        },
    )
    mask_first_step: bool = field(
        default=True, metadata={"help": "Mask the first optimizer step too (the released code does not)."}
    )
    mask_before_clipping: bool = field(
        default=True,
        metadata={"help": "Mask before gradient clipping, so the clip norm is that of the masked gradient."},
    )
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the direction draws: directions(step) is a pure function of (seed, step, module)."},
    )

    def __post_init__(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("reg_form", self.reg_form, REG_FORMS)
        _choice("reg_reduction", self.reg_reduction, REG_REDUCTIONS)
        _choice("mask_sampling", self.mask_sampling, MASK_SAMPLINGS)
        _choice("mask_mode", self.mask_mode, MASK_MODES)
        _choice("step_compensation", self.step_compensation, STEP_COMPENSATIONS)
        if isinstance(self.r_hat, bool) or not isinstance(self.r_hat, (int, float)):
            raise ConfigError(f"r_hat must be an int ≥ 1 or a float in (0, 1], got {self.r_hat!r}")
        if isinstance(self.r_hat, float):
            if not (0.0 < self.r_hat <= 1.0) or math.isnan(self.r_hat):
                raise ConfigError(
                    f"fractional r_hat must lie in (0, 1], got {self.r_hat}: "
                    "pass an int for a fixed number of directions"
                )
        elif self.r_hat < 1:
            raise ConfigError(f"r_hat must be at least 1, got {self.r_hat}")
        if not isinstance(self.reg_weight, (int, float)) or self.reg_weight < 0 or math.isnan(self.reg_weight):
            raise ConfigError(f"reg_weight must be ≥ 0, got {self.reg_weight!r}")
        self.reg_weight = float(self.reg_weight)
        self.seed = int(self.seed)

    # -- what the method switches on ---------------------------------------------------------------
    @property
    def is_lora_variant(self) -> bool:
        """lora, r-lora, gm-lora or rm-lora: a plain PEFT LoRA model trained by RMLora."""
        return self.method in LORA_METHODS

    @property
    def uses_penalty(self) -> bool:
        return self.method in PENALIZED and self.reg_weight > 0

    @property
    def uses_masking(self) -> bool:
        return self.method in MASKED

    def r_hat_for(self, rank: int, module: str = "") -> int:
        """r̂ for a module of LoRA rank `rank`; raises if an int r̂ exceeds it."""
        if isinstance(self.r_hat, float):
            return max(1, min(rank, int(round(self.r_hat * rank))))
        if self.r_hat > rank:
            where = f" of module {module}" if module else ""
            raise ConfigError(
                f"r_hat={self.r_hat} exceeds the LoRA rank R={rank}{where}: use r_hat ≤ {rank} or a fraction"
            )
        return int(self.r_hat)

    # -- presets ------------------------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides) -> RMLoraConfig:
        """The paper's text: Eq. 10 summed over pairs, Algorithm 1's shared directions, every step masked.

        The paper gives neither λ nor r̂: r̂ = R/2 is the released code's, λ = 0.001 what validation chose under
        this sum in docs/RESULTS.md's experiments 1 and 2.
        """
        values = dict(reg_form="squared", reg_reduction="sum", reg_weight=0.001, r_hat=0.5)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def released_code(cls, variant: str = "v2", **overrides) -> RMLoraConfig:
        """The authors' released GLUE code (`lora_type` `variant`), minus its freezing of the classifier head.

        "v2" (the default, its `run_glue.sh`): B's columns drawn independently of A's rows; "v1" (its README's
        RM-LoRA example): B's columns are A's rows. Both use the non-squared Frobenius penalty. Its `frd` and `svd`
        types never update B after step 0 and have no preset here (docs/FIDELITY.md).
        """
        if variant not in RELEASED_VARIANTS:
            raise ConfigError(
                f"unknown released-code variant {variant!r}: choose v1 (shared directions, the release's README) or "
                "v2 (independent, its run_glue.sh)"
            )
        values = dict(
            reg_form="frobenius",
            reg_reduction="mean",
            reg_weight=0.1,
            mask_sampling=RELEASED_VARIANTS[variant],
            mask_mode="grad",
            mask_first_step=False,
            mask_before_clipping=False,
            r_hat=0.5,
        )
        values.update(overrides)
        return cls(**values)

    # -- (de)serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RMLoraConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown RMLoraConfig fields {sorted(unknown)}; known fields: {sorted(known)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
