"""The grid of a comparison: cells (method, rank, setting, seed), each cell's `rmlora train` flags, per-method
overrides and hyperparameter axes.

A cell is named `<method>_r<R>_s<seed>` (`full_s<seed>` for full fine-tuning, which has no rank); a cell of a
hyperparameter axis (`--grid FLAG=V1,V2`, `--grid METHOD:FLAG=V1,V2`) adds its setting before the seed:
`rm-lora_r8_reg_weight=0.01_s0`. Its flags are the common flags of the sweep, then the grid's own (--method,
--lora_r, --seed, the setting), then the overrides of its method; `flag_map` reads an argv back as
{flag: values}, so two argvs that parse alike compare equal.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rmlora.config import METHODS
from rmlora.errors import ConfigError
from rmlora.lists import split_list

# flags the grid sets per cell; passing them to the sweep itself is a mistake worth a clear message
GRID_FLAGS = {
    "method": "--methods",
    "lora_r": "--ranks",
    "adalora_target_r": "--ranks",
    "seed": "--seeds",
    "output_dir": "--output_dir",
}
# The paper compares at the same *inference* budget: in the block of rank R of Tables 1–3, AdaLoRA starts
# at 2R and prunes to R (Table 2: "AdaLoRA 8 4" under R = 4), and SoRA trains 2R gated directions and
# prunes by threshold (Table 3: "SoRA 32 32" under R = 16). --init_rank_factor changes the 2.
INIT_RANK_FACTOR = 2


# what a setting's value may hold to be part of a folder name
VALUE_CHARS = re.compile(r"^[A-Za-z0-9.+_-]+$")

Setting = tuple[tuple[str, str], ...]  # ((flag, value), ...) of the cell's hyperparameter axes, in axis order
Axes = dict[str | None, list[tuple[str, list[str]]]]  # method (None: every method) -> [(flag, values), ...]


@dataclass(frozen=True)
class Cell:
    method: str
    rank: int | None  # None for full fine-tuning
    seed: int
    setting: Setting = ()

    @property
    def name(self) -> str:
        parts = [self.method] + ([] if self.rank is None else [f"r{self.rank}"])
        parts += [f"{flag}={value}" for flag, value in self.setting] + [f"s{self.seed}"]
        return "_".join(parts)


def setting_label(setting: Setting | dict | None) -> str:
    """ "reg_weight=0.01, r_hat=2" ("" for no setting)."""
    items = setting.items() if isinstance(setting, dict) else (setting or ())
    return ", ".join(f"{flag}={value}" for flag, value in items)


def parse_axes(specs: Sequence[str]) -> Axes:
    """`FLAG=V1,V2` (every method) or `METHOD:FLAG=V1,V2` (that method's cells) -> {method or None: axes}."""
    out: Axes = {}
    for spec in specs:
        head, eq, values = spec.partition("=")
        method, sep, flag = head.rpartition(":") if ":" in head else (None, "", head)
        flag = flag.strip().lstrip("-")
        items = split_list(values)
        if not eq or not flag or not items:
            raise ConfigError(f"--grid {spec!r} is not [METHOD:]FLAG=V1,V2,... (e.g. rm-lora:reg_weight=0.01,0.1)")
        if method is not None and method not in METHODS:
            raise ConfigError(f"--grid {spec!r}: unknown method {method!r}; choose from {', '.join(METHODS)}")
        if flag in GRID_FLAGS:
            raise ConfigError(f"--grid {spec!r}: {flag} is set by the grid, use {GRID_FLAGS[flag]}")
        bad = [v for v in items if not VALUE_CHARS.match(v)]
        if bad:
            raise ConfigError(f"--grid {spec!r}: value {bad[0]!r} would not make a folder name (letters, digits, .+-_)")
        axes = out.setdefault(method, [])
        if any(f == flag for f, _ in axes):
            raise ConfigError(f"--grid {spec!r}: {flag} is already an axis{'' if method is None else ' of ' + method}")
        axes.append((flag, list(dict.fromkeys(items))))
    return out


def method_settings(method: str, axes: Axes | None) -> list[Setting]:
    """Every setting of a method's cells: the product of the common axes and the method's own ones."""
    merged = dict((axes or {}).get(None, []))
    merged.update(dict((axes or {}).get(method, [])))  # a method's own axis replaces a common one of that flag
    flags = list(merged)
    return [tuple(zip(flags, values)) for values in itertools.product(*(merged[f] for f in flags))]


def build_grid(
    methods: Sequence[str], ranks: Sequence[int], seeds: Sequence[int], axes: Axes | None = None
) -> list[Cell]:
    """Cells seed by seed, so an interrupted sweep has whole comparisons for its first seeds."""
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r} in --methods: choose from {', '.join(METHODS)}")
    for r in ranks:
        if int(r) < 1:
            raise ConfigError(f"--ranks must be at least 1, got {r}")
    if not methods or not seeds or (not ranks and any(m != "full" for m in methods)):
        raise ConfigError("the grid is empty: give at least one method (--methods), rank (--ranks) and seed (--seeds)")
    cells: list[Cell] = []
    for seed in dict.fromkeys(int(s) for s in seeds):
        for method in dict.fromkeys(methods):
            for rank in [None] if method == "full" else dict.fromkeys(int(r) for r in ranks):
                cells += [Cell(method, rank, seed, setting) for setting in method_settings(method, axes)]
    return cells


def parse_overrides(specs: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """`METHOD:FLAG=VALUE` (e.g. `full:learning_rate=1e-5`) -> {method: [(flag, value), ...]}."""
    out: dict[str, list[tuple[str, str]]] = {}
    for spec in specs:
        method, sep, rest = spec.partition(":")
        key, eq, value = rest.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not eq or not key:
            raise ConfigError(f"--override {spec!r} is not METHOD:FLAG=VALUE (e.g. full:learning_rate=1e-5)")
        if method not in METHODS:
            raise ConfigError(f"--override {spec!r}: unknown method {method!r}; choose from {', '.join(METHODS)}")
        if key in GRID_FLAGS:
            raise ConfigError(f"--override {spec!r}: {key} is set by the grid, use {GRID_FLAGS[key]}")
        out.setdefault(method, []).append((key, value))
    return out


def check_train_args(args: Sequence[str]) -> None:
    for token in args:
        if token.startswith("--"):
            key = token[2:].split("=", 1)[0]
            if key in GRID_FLAGS:
                raise ConfigError(f"--{key} is set per cell by the grid: use {GRID_FLAGS[key]} instead")


def cell_args(
    cell: Cell,
    common: Sequence[str],
    overrides: dict[str, list[tuple[str, str]]],
    init_rank_factor: int = INIT_RANK_FACTOR,
) -> list[str]:
    """The cell's `rmlora train` flags, without --output_dir.

    argparse keeps the last value of a repeated flag, so the order is the precedence: AdaLoRA's default
    init rank, then the common flags (which may set it), then the grid's own flags, then the overrides
    (`full:learning_rate=1e-5` wins over a common --learning_rate).
    """
    rank, defaults, grid = cell.rank, [], ["--method", cell.method, "--seed", str(cell.seed)]
    if cell.method == "adalora":
        defaults = ["--adalora_init_r", str(init_rank_factor * rank)]
        grid += ["--lora_r", str(rank), "--adalora_target_r", str(rank)]
    elif cell.method == "sora":
        grid += ["--lora_r", str(init_rank_factor * rank)]
    elif rank is not None:
        grid += ["--lora_r", str(rank)]
    args = defaults + list(common) + grid
    for key, value in cell.setting:
        if any(k == key for k, _ in overrides.get(cell.method, [])):
            raise ConfigError(f"--grid {key} and --override {cell.method}:{key} both set {key}: keep one of them")
        args += [f"--{key}", value]
    for key, value in overrides.get(cell.method, []):
        args += [f"--{key}", value]
    return args


def cell_ranks(method: str, args: Sequence[str]) -> dict | None:
    """ "# T / I rank" of a cell from its train flags: the rank trained and the rank kept at inference
    (AdaLoRA: init_r and target_r; SoRA: its gated rank, pruned per module, as the paper's tables list it)."""
    flags = flag_map(args)

    def last(key: str) -> int | None:
        return int(flags[key][-1]) if flags.get(key) else None

    if method == "full":
        return None
    if method == "adalora":
        return {"trainable": last("adalora_init_r"), "inference": last("adalora_target_r")}
    return {"trainable": last("lora_r"), "inference": last("lora_r")}


def flag_map(args: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """{flag: values} of an argv, last occurrence winning: two argvs that parse alike compare equal."""
    out: dict[str, tuple[str, ...]] = {}
    key = None
    for token in args:
        if token.startswith("--"):
            key, eq, value = token[2:].partition("=")
            out[key] = (value,) if eq else ()
        elif key is not None:
            out[key] = out[key] + (token,)
    return out


def flag_differences(old: Sequence[str], new: Sequence[str]) -> str:
    """ "--num_train_epochs 2 → 3; --learning_rate unset → 1e-5": what differs between two argvs."""
    a, b = flag_map(old), flag_map(new)

    def show(values: tuple[str, ...] | None) -> str:
        return "unset" if values is None else " ".join(values) or "set"

    return "; ".join(
        f"--{k} {show(a.get(k))} → {show(b.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    )
