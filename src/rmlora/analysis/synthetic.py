"""The synthetic setting of Zeng & Lee (2023) that the paper builds on (Section 3, Theorem 3.1, Eq. 8–9).

A frozen random ReLU FNN f0 with L layers of width D, and a target FNN f̄ of the same depth and width
(L = L̄, so every partition P_i is the single layer i): f̄ has the weights W̄_l = W_l + Ē_l and the biases
of f0, where each discrepancy Ē_l = U_l diag(s) V_lᵀ is planted with random orthogonal U_l, V_l and a known
spectrum s_i ∝ decay^{i−1} scaled to ‖Ē_l‖_F = discrepancy · ‖W_l‖_F. So σ_{R+1}(Ē_l) = s_{R+1} exactly.

A LoRA of rank R on every layer (PEFT on the nn.Sequential) is trained to match f̄ on Gaussian inputs
x ~ N(0, I_D) (MSE on fresh batches), as plain LoRA and as RM-LoRA (rmlora.RMLora hooks), from the same
initialization and the same data stream. Against R the experiment reports:

- the achieved error E‖f(x) − f̄(x)‖_2 on a fixed test set (the left side of Eq. 8),
- the error of Zeng & Lee's construction for L = L̄: ΔW_l = the rank-R truncated SVD of Ē_l, biases kept,
- the bound terms: Σ_l σ_{R+1}(Ē_l) (Eq. 9 summed) and Eq. 8's right side
  β Σ_i max_k(‖W̄_k‖_F + e_k)^{L̄−i} e_i with e_i = σ_{R+1}(Ē_i),
- per layer: the intrinsic (numerical) rank r of the trained ΔW_l, and ‖ΔW_l − Ē_l‖_F / ‖Ē_l‖_F next to its
  Eckart–Young floor ‖Ē_l − Ē_{l,R}‖_F / ‖Ē_l‖_F.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from tqdm.auto import tqdm  # a dependency of transformers

from rmlora.analysis.discrepancy import bound_term, relative_error
from rmlora.analysis.spectrum import delta_singular_values, effective_rank, numerical_rank
from rmlora.config import LORA_METHODS as METHODS  # lora, r-lora, gm-lora, rm-lora
from rmlora.config import RMLoraConfig
from rmlora.core.pairs import find_lora_pairs
from rmlora.core.rm_lora import RMLora
from rmlora.errors import ConfigError


@dataclass
class SyntheticConfig:
    width: int = field(default=16, metadata={"help": "D, the width of every layer of f0 and f̄."})
    depth: int = field(default=3, metadata={"help": "L = L̄, the number of layers of f0 and of f̄."})
    ranks: tuple = field(default=(1, 2, 4, 8), metadata={"help": "LoRA ranks R to train (each ≤ width)."})
    methods: tuple = field(default=("lora", "rm-lora"), metadata={"help": "Any of lora, r-lora, gm-lora, rm-lora."})
    steps: int = field(default=1500, metadata={"help": "Optimizer steps per training run."})
    seeds: int = field(default=2, metadata={"help": "Seeds 0 … seeds−1: each draws f0, Ē, the LoRA init and the data."})
    batch_size: int = field(default=256, metadata={"help": "Fresh Gaussian inputs per step."})
    lr: float = field(default=1e-2, metadata={"help": "Adam learning rate (cosine-decayed to 0)."})
    decay: float = field(default=0.7, metadata={"help": "Spectrum of Ē_l: σ_i ∝ decay^{i−1}, in (0, 1]."})
    discrepancy: float = field(default=0.5, metadata={"help": "‖Ē_l‖_F / ‖W_l‖_F: how far the target is from f0."})
    r_hat: float = field(
        default=0.5, metadata={"help": "Directions updated per step (gm-/rm-lora): int, or fraction of R."}
    )
    reg_weight: float = field(default=1e-3, metadata={"help": "Penalty weight λ of Eq. 10 (r-/rm-lora)."})
    test_size: int = field(default=4096, metadata={"help": "Fixed Gaussian test inputs for E‖f(x) − f̄(x)‖_2."})
    rank_rtol: float = field(
        default=1e-3, metadata={"help": "Intrinsic rank of ΔW: #σ_i > rank_rtol·σ_max (numerical rank)."}
    )

    def __post_init__(self) -> None:
        self.ranks = tuple(sorted(set(int(r) for r in self.ranks)))
        self.methods = tuple(self.methods)
        if self.width < 2 or self.depth < 1:
            raise ConfigError(f"width must be ≥ 2 and depth ≥ 1, got width={self.width}, depth={self.depth}")
        if not self.ranks or self.ranks[0] < 1 or self.ranks[-1] > self.width:
            example = ",".join(str(2**i) for i in range(int(math.log2(self.width)) + 1))
            raise ConfigError(
                f"ranks must lie in 1 … width={self.width}, got {list(self.ranks)}: e.g. --ranks {example}"
            )
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ConfigError(f"unknown methods {bad or list(self.methods)}: choose from {', '.join(METHODS)}")
        if not (0.0 < self.decay <= 1.0):
            raise ConfigError(f"decay must lie in (0, 1], got {self.decay}: σ_i(Ē_l) ∝ decay^(i−1)")
        if self.discrepancy <= 0 or self.steps < 1 or self.seeds < 1 or self.batch_size < 1 or self.test_size < 1:
            raise ConfigError("discrepancy, steps, seeds, batch_size and test_size must be positive")
        if self.lr <= 0 or self.rank_rtol <= 0:
            raise ConfigError(f"lr and rank_rtol must be positive, got lr={self.lr}, rank_rtol={self.rank_rtol}")


# -- the two networks ---------------------------------------------------------------------------------------


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random n x n orthogonal matrix (QR of a Gaussian with the signs of R's diagonal fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def planted_spectrum(width: int, decay: float, norm: float) -> torch.Tensor:
    """s_i ∝ decay^{i−1}, i = 1 … width, scaled to Σ s_i² = norm²."""
    s = decay ** torch.arange(width, dtype=torch.float64)
    return s * (norm / float(s.norm()))


@dataclass
class Problem:
    """f0 = FNN(W, b), f̄ = FNN(W + Ē, b), and the test inputs."""

    weights: list[torch.Tensor]  # W_l, D x D (d_out x d_in), float64
    biases: list[torch.Tensor]  # b_l = b̄_l
    discrepancies: list[torch.Tensor]  # Ē_l = W̄_l − W_l
    spectra: list[torch.Tensor]  # σ(Ē_l), descending, known by construction
    test_inputs: torch.Tensor

    @property
    def target_weights(self) -> list[torch.Tensor]:
        return [W + E for W, E in zip(self.weights, self.discrepancies)]


def make_problem(cfg: SyntheticConfig, seed: int) -> Problem:
    g = torch.Generator().manual_seed(10_000 + seed)
    D = cfg.width
    weights, biases, discrepancies, spectra = [], [], [], []
    for _ in range(cfg.depth):
        # He initialization keeps the activations' scale through the ReLUs, so no layer dominates the error
        W = torch.randn(D, D, generator=g, dtype=torch.float64) * math.sqrt(2.0 / D)
        b = torch.randn(D, generator=g, dtype=torch.float64) * 0.1
        s = planted_spectrum(D, cfg.decay, cfg.discrepancy * float(W.norm()))
        U, V = random_orthogonal(D, g), random_orthogonal(D, g)
        weights.append(W)
        biases.append(b)
        discrepancies.append(U @ torch.diag(s) @ V.T)
        spectra.append(s)
    test_inputs = torch.randn(cfg.test_size, D, generator=g, dtype=torch.float64)
    return Problem(weights, biases, discrepancies, spectra, test_inputs)


def fnn(weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """FNN_{L,D}(x): ReLU after every layer but the last (Zeng & Lee's Eq. 5–6)."""
    for l, (W, b) in enumerate(zip(weights, biases)):
        x = x @ W.T + b
        if l < len(weights) - 1:
            x = torch.relu(x)
    return x


def output_error(f: torch.Tensor, f_bar: torch.Tensor) -> float:
    """E‖f(x) − f̄(x)‖_2 over the test inputs (Eq. 8's left side)."""
    return float((f - f_bar).norm(dim=1).mean())


def sequential(problem: Problem) -> nn.Sequential:
    """f0 as an nn.Sequential (Linear, ReLU, …, Linear) in float32, for PEFT to wrap."""
    layers: list[nn.Module] = []
    for l, (W, b) in enumerate(zip(problem.weights, problem.biases)):
        lin = nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(b)
        layers.append(lin)
        if l < len(problem.weights) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def linear_names(depth: int) -> list[str]:
    return [str(2 * l) for l in range(depth)]  # Linear layers sit at even positions between the ReLUs


# -- what theory says for rank R ----------------------------------------------------------------------------


def truncated_svd(E: torch.Tensor, rank: int) -> torch.Tensor:
    U, s, Vh = torch.linalg.svd(E, full_matrices=False)
    return (U[:, :rank] * s[:rank]) @ Vh[:rank]


def construction_error(problem: Problem, rank: int) -> float:
    """Error of Zeng & Lee's adapters for L = L̄: ΔW_l = rank-R truncated SVD of Ē_l, biases unchanged."""
    x = problem.test_inputs
    target = fnn(problem.target_weights, problem.biases, x)
    adapted = [W + truncated_svd(E, rank) for W, E in zip(problem.weights, problem.discrepancies)]
    return output_error(fnn(adapted, problem.biases, x), target)


def eq8_beta(problem: Problem) -> float:
    """β of Theorem 3.1 with Σ = E xxᵀ = I_D, as the paper prints it:
    max_i ( sqrt‖Σ‖_F Π_{j≤i} ‖W̄_j‖_F + Σ_{j≤i} Π_{k=j+1}^{i−1} ‖W̄_k‖_F ‖b̄_j‖_2 ) ∨ sqrt‖Σ‖_F."""
    D = problem.weights[0].shape[1]
    root_sigma = math.sqrt(math.sqrt(D))  # ‖I_D‖_F = sqrt(D)
    norms = [float(W.norm()) for W in problem.target_weights]
    bias_norms = [float(b.norm()) for b in problem.biases]
    beta = root_sigma
    for i in range(1, len(norms) + 1):
        term = root_sigma * math.prod(norms[:i])
        term += sum(math.prod(norms[j : i - 1]) * bias_norms[j - 1] for j in range(1, i + 1))
        beta = max(beta, term)
    return beta


def eq8_bound(problem: Problem, rank: int) -> float:
    """Right side of Eq. 8: β Σ_{i=1}^{L̄} max_k(‖W̄_k‖_F + e_k)^{L̄−i} e_i, e_i = σ_{R+1}(Ē_i) (Eq. 9)."""
    e = [bound_term(s, rank) for s in problem.spectra]
    norms = [float(W.norm()) for W in problem.target_weights]
    L = len(e)
    growth = max(n + ek for n, ek in zip(norms, e))
    return eq8_beta(problem) * sum(growth ** (L - i) * e[i - 1] for i in range(1, L + 1))


def theory(problem: Problem, rank: int) -> dict:
    return {
        "sum_bound_terms": float(sum(bound_term(s, rank) for s in problem.spectra)),
        "eq8_bound": eq8_bound(problem, rank),
        "construction_error": construction_error(problem, rank),
        "eckart_young": [relative_error(s, rank) for s in problem.spectra],
    }


# -- training ----------------------------------------------------------------------------------------------------


@dataclass
class Run:
    method: str
    rank: int
    seed: int
    error: float  # E‖f(x) − f̄(x)‖_2 on the test set after training
    intrinsic_ranks: list[int]  # numerical rank of ΔW_l per layer
    effective_ranks: list[float]  # exp(entropy of σ(ΔW_l)/Σσ) per layer (Roy & Vetterli)
    delta_errors: list[float]  # ‖ΔW_l − Ē_l‖_F / ‖Ē_l‖_F per layer
    delta_singular_values: list[list[float]]
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def train(problem: Problem, rank: int, method: str, cfg: SyntheticConfig, seed: int) -> Run:
    """Train a rank-`rank` LoRA on every layer of f0 to match f̄ on fresh Gaussian batches (MSE)."""
    start = time.perf_counter()
    torch.manual_seed(seed)  # the same LoRA initialization for every method at this (seed, R)
    model = get_peft_model(
        sequential(problem), LoraConfig(r=rank, lora_alpha=rank, target_modules=linear_names(cfg.depth))
    )
    # lora ignores r_hat and reg_weight; r-lora uses only the penalty, gm-lora only the masks
    # Eq. 10 summed, as the recorded synthetic results (docs/THEORY.md) were made
    cfg_rm = RMLoraConfig(method=method, r_hat=cfg.r_hat, reg_weight=cfg.reg_weight, reg_reduction="sum", seed=seed)
    rm = RMLora(model, cfg_rm)
    target_weights = [W.float() for W in problem.target_weights]
    biases = [b.float() for b in problem.biases]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * t / cfg.steps)))
    data = torch.Generator().manual_seed(20_000 + seed)  # the same data stream for every method
    for step in range(cfg.steps):
        x = torch.randn(cfg.batch_size, cfg.width, generator=data)
        with torch.no_grad():
            y = fnn(target_weights, biases, x)
        loss = torch.nn.functional.mse_loss(model(x), y) + rm.penalty()
        loss.backward()
        rm.before_optimizer_step(optimizer, step)
        optimizer.step()
        rm.after_optimizer_step(optimizer, step)
        optimizer.zero_grad(set_to_none=True)
        schedule.step()

    pairs = {p.name.split(".")[-1]: p for p in find_lora_pairs(model)}
    ranks, eff_ranks, delta_errors, spectra = [], [], [], []
    with torch.no_grad():
        for name, E in zip(linear_names(cfg.depth), problem.discrepancies):
            pair = pairs[name]
            sv = delta_singular_values(pair.A, pair.B, pair.scaling)
            ranks.append(numerical_rank(sv, tuple(E.shape), cfg.rank_rtol))
            eff_ranks.append(effective_rank(sv))
            delta_errors.append(float((pair.delta_weight().double() - E).norm() / E.norm()))
            spectra.append([float(s) for s in sv])
        f = model(problem.test_inputs.float()).double()
    error = output_error(f, fnn(problem.target_weights, problem.biases, problem.test_inputs))
    return Run(method, rank, seed, error, ranks, eff_ranks, delta_errors, spectra, time.perf_counter() - start)


def sample_std(values: list[float]) -> float | None:
    """Sample standard deviation (ddof = 1), the one rmlora reports everywhere; None for fewer than 2 values."""
    return statistics.stdev(values) if len(values) > 1 else None


# -- the experiment ------------------------------------------------------------------------------------------------


@dataclass
class SyntheticResult:
    config: SyntheticConfig
    theory: list[dict]  # per seed: {"f0_error": …, "r0": theory(problem, 0), "ranks": {R: theory(problem, R)}}
    runs: list[Run]

    def summary(self) -> list[dict]:
        """Per R: the theory terms and, per method, the mean ± sample std error and mean intrinsic rank over seeds."""
        rows = []
        for R in self.config.ranks:
            th = [t["ranks"][R] for t in self.theory]

            def relative(key, th=th):  # the value at R over the value at R = 0 (f0), averaged over seeds
                return float(np.mean([t[key] / t0["r0"][key] for t, t0 in zip(th, self.theory)]))

            row = {
                "rank": R,
                "f0_error": float(np.mean([t["f0_error"] for t in self.theory])),
                "sum_bound_terms": float(np.mean([t["sum_bound_terms"] for t in th])),
                "sum_bound_terms_relative": relative("sum_bound_terms"),
                "eq8_bound": float(np.mean([t["eq8_bound"] for t in th])),
                "eq8_bound_relative": relative("eq8_bound"),
                "construction_error": float(np.mean([t["construction_error"] for t in th])),
                "construction_error_relative": relative("construction_error"),
                "eckart_young": float(np.mean([np.mean(t["eckart_young"]) for t in th])),
            }
            for method in self.config.methods:
                runs = [r for r in self.runs if r.method == method and r.rank == R]
                errors = [r.error for r in runs]
                f0 = {t_seed: t["f0_error"] for t_seed, t in enumerate(self.theory)}
                row[method] = {
                    "error": float(np.mean(errors)),
                    "error_std": sample_std(errors),
                    "error_relative": float(np.mean([r.error / f0[r.seed] for r in runs])),
                    "intrinsic_rank": float(np.mean([np.mean(r.intrinsic_ranks) for r in runs])),
                    "effective_rank": float(np.mean([np.mean(r.effective_ranks) for r in runs])),
                    "delta_error": float(np.mean([np.mean(r.delta_errors) for r in runs])),
                }
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "summary": self.summary(),
            "theory": [
                {"f0_error": t["f0_error"], "r0": t["r0"], "ranks": {str(R): v for R, v in t["ranks"].items()}}
                for t in self.theory
            ],
            "runs": [r.to_dict() for r in self.runs],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def run_synthetic(cfg: SyntheticConfig | None = None, progress: bool = True) -> SyntheticResult:
    cfg = cfg if cfg is not None else SyntheticConfig()
    threads = torch.get_num_threads()
    # D x D matmuls are far too small to split: extra threads only spin (25x slower on a shared 2-core machine)
    torch.set_num_threads(1)
    try:
        return _run(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: SyntheticConfig, progress: bool) -> SyntheticResult:
    jobs = [(seed, R, m) for seed in range(cfg.seeds) for R in cfg.ranks for m in cfg.methods]
    bar = None
    if progress:
        bar = tqdm(total=len(jobs), desc="synthetic LoRA runs", unit="run", disable=None)
    theories, runs = [], []
    for seed in range(cfg.seeds):
        problem = make_problem(cfg, seed)
        x = problem.test_inputs
        f0_error = output_error(fnn(problem.weights, problem.biases, x), fnn(problem.target_weights, problem.biases, x))
        # R = 0 is f0 itself: the normalizers of the relative curves (construction error at R = 0 is f0's error)
        theories.append(
            {"f0_error": f0_error, "r0": theory(problem, 0), "ranks": {R: theory(problem, R) for R in cfg.ranks}}
        )
        for R in cfg.ranks:
            for method in cfg.methods:
                runs.append(train(problem, R, method, cfg, seed))
                if bar is not None:
                    bar.set_postfix(seed=seed, R=R, method=method)
                    bar.update()
    if bar is not None:
        bar.close()
    return SyntheticResult(cfg, theories, runs)
