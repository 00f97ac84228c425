"""A recipe's cells: (stage, task, row, seed[, tuned setting]), each with its `rmlora train` flags and their sources.

Precedence of a cell's flags, later winning (each value keeps its source, so `rmlora recipe show` can say where
every flag of every cell comes from):

    [train]  <  [tasks.ID]  <  [tasks.ID.methods.METHOD]  <  the row's flags  <  the grid's own
    (method, rank, seed)  <  a tuned candidate (stage "tune") or the value chosen on validation (stage "final":
    the row's `tune`, or `inherit` from another row)  <  `--set FLAG=VALUE` on the command line

Stage "tune" trains every candidate of a row's `tune` axes (a task's `[tasks.ID.tune]` lists replace the row's
for that task) on the [tuning] seeds; stage "final" trains every row on the recipe's seeds with its chosen values.
A row that inherits a value from another row's tuning tunes after it: stage tune runs in waves (`tune_waves`), so
a chain "lr first, then the penalty at that lr, then lr again at that penalty" is one recipe. A row without
`tune`/`inherit` has final cells only. Cells are named `TASK/ROW_sSEED` (final) and `tune/TASK/ROW_FLAG=V_sSEED`,
which are also their folders under runs/.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from rmlora.errors import ConfigError
from rmlora.harness.arguments import build_parser
from rmlora.harness.grid import GRID_FLAGS, VALUE_CHARS, Cell
from rmlora.recipes.format import Recipe, Row, Task, Value

SMOKE_PREFIX = "smoke:"  # "smoke:NAME": the folder of the smoke-scale asset NAME (rmlora.assets.smoke)
ASSET_PREFIX = "asset:"  # "asset:NAME/FILE": a real offline model or data set (rmlora.assets.offline)
PENDING = "<chosen on validation>"

Resolver = Callable[[str], str]  # "smoke:NAME" / "asset:NAME/FILE" -> a path


@dataclass(frozen=True)
class RecipeCell(Cell):
    task: str = ""
    row: str = ""
    stage: str = "final"

    @property
    def name(self) -> str:
        parts = [self.row] + [f"{flag}={value}" for flag, value in self.setting] + [f"s{self.seed}"]
        return ("tune/" if self.stage == "tune" else "") + f"{self.task}/{'_'.join(parts)}"


def format_value(value) -> list[str]:
    """A TOML value as `rmlora train` argv tokens: true/false, numbers as Python writes them, lists as tokens."""
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, list):
        return [t for v in value for t in format_value(v)]
    if isinstance(value, float):
        return [repr(value) if math.isfinite(value) else str(value)]
    return [str(value)]


def _train_flags() -> set[str]:
    return {a.dest for a in build_parser()._actions if a.dest != "help"}


def check_flags(recipe: Recipe) -> None:
    """Every flag the recipe sets is an `rmlora train` flag that the recipe may set (one line otherwise)."""
    known = _train_flags()

    def check(flags, where: str) -> None:
        for flag in flags:
            if flag in GRID_FLAGS:
                raise ConfigError(
                    f"{where}: {flag} is set per cell by the recipe (rows' method / rank / init_rank, seeds); remove it"
                )
            if flag not in known:
                close = difflib.get_close_matches(flag, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else "; see `rmlora train --help`"
                raise ConfigError(f"{where}: {flag!r} is not an `rmlora train` flag{hint}")

    def tuned(row: Row) -> list[str]:  # a bundle axis names no flag; its candidates' keys are flags
        out = []
        for axis, value in row.tune.items():
            bundles = [c for c in value.value if isinstance(c, dict)]
            out += [k for c in bundles for k in c if k != "label"] if bundles else [axis]
        return out

    check(recipe.train, f"recipe {recipe.name} [train]")
    for task in recipe.tasks.values():
        check(task.flags, f"[tasks.{task.id}]")
        for method, flags in task.methods.items():
            check(flags, f"[tasks.{task.id}.methods.{method}]")
    for row in recipe.rows:
        check(row.flags, f"row {row.id!r} flags")
        check(tuned(row), f"row {row.id!r} tune")
        check(row.inherit, f"row {row.id!r} inherit")


def row_rank(row: Row, task: Task) -> Value | None:
    """The R of a row on a task: the task's `rank` where it sets one, else the row's."""
    if row.method == "full":
        return None
    return task.rank if task.rank is not None and row.rank is not None else row.rank


def grid_flags(row: Row, task: Task, seed: int) -> dict[str, Value]:
    """--method, --seed and the rank flags of a row (AdaLoRA: target and initial rank; SoRA: its gated rank)."""
    flags = {"method": Value(row.method, row.source), "seed": Value(seed, "the recipe's seeds")}
    if row.method == "full":
        return flags
    rank = row_rank(row, task)
    if rank is None:
        raise ConfigError(f"row {row.id!r} ({row.method}) needs a `rank`")
    if row.method == "adalora":
        if row.init_rank is None:
            raise ConfigError(f"row {row.id!r}: AdaLoRA needs `init_rank` (its initial rank; it prunes to `rank`)")
        flags.update(lora_r=rank, adalora_target_r=rank, adalora_init_r=row.init_rank)
    elif row.method == "sora":
        flags["lora_r"] = row.init_rank or rank  # SoRA trains init_rank gated directions and prunes them
    else:
        flags["lora_r"] = rank
    return flags


def candidates(row: Row, task: Task) -> dict[str, Value]:
    """A row's tune axes on a task: the task's own candidate lists replace the row's for the flags it names."""
    return {flag: task.tune.get(flag, value) for flag, value in row.tune.items()}


def candidate_text(candidate) -> str:
    """A candidate as its cells' folder names show it: the value, or a bundle's label."""
    if isinstance(candidate, dict):
        if not isinstance(candidate.get("label"), str):
            raise ConfigError(f"a tune candidate that sets several flags needs a `label`: {candidate!r}")
        return candidate["label"]
    return " ".join(format_value(candidate))


def expand(row: Row, task: Task, axis: str, text: str, source: str) -> dict[str, Value]:
    """The flags of one candidate of a tune axis: {axis: text}, or a bundle's flags (axis `penalty`, candidate
    `{ label = "off", reg_weight = 0.0, r_hat = 1.0 }` sets reg_weight and r_hat)."""
    for candidate in candidates(row, task)[axis].value:
        if isinstance(candidate, dict) and candidate_text(candidate) == text:
            return {k: Value(v, f"{source} ({axis}={text})") for k, v in candidate.items() if k != "label"}
    return {axis: Value(text, source)}


def tune_settings(row: Row, task: Task) -> list[tuple[tuple[str, str], ...]]:
    """The candidates of a row's tune axes on a task, as (axis, value-text) settings (the cells' folder names)."""
    axes = [(flag, [candidate_text(v) for v in value.value]) for flag, value in candidates(row, task).items()]
    for flag, values in axes:
        bad = [v for v in values if not VALUE_CHARS.match(v)]
        if bad:
            raise ConfigError(f"row {row.id!r} tune.{flag}: value {bad[0]!r} would not make a folder name")
    return [tuple(zip([f for f, _ in axes], combo)) for combo in itertools.product(*(v for _, v in axes))]


def cell_flags(
    recipe: Recipe,
    task: Task,
    row: Row,
    seed: int,
    setting: tuple = (),
    chosen: dict | None = None,
    overrides: dict[str, Value] | None = None,
) -> dict[str, Value]:
    """The flags of one cell with their sources, in precedence order (module docstring).

    `chosen`: {(task id, row id): {flag: value}} chosen on validation; a tuned flag without a choice yet is
    PENDING (dry runs before the tuning stage ran).
    """
    flags: dict[str, Value] = {}
    flags.update(recipe.train)
    flags.update(task.flags)
    flags.update(task.methods.get(row.method, {}))
    flags.update(row.flags)
    flags.update(grid_flags(row, task, seed))
    for flag in row.inherit:
        value = chosen_value(recipe, task, row, flag, chosen)
        owner = tuning_row(recipe, row, flag)
        flags.update({flag: value} if value.value == PENDING else expand(owner, task, flag, value.value, value.source))
    if setting:
        for axis, text in setting:
            flags.update(expand(row, task, axis, text, f"stage tune: candidate of row {row.id}"))
    else:
        for axis in row.tune:
            value = chosen_value(recipe, task, row, axis, chosen)
            flags.update(
                {axis: value} if value.value == PENDING else expand(row, task, axis, value.value, value.source)
            )
    flags.update(overrides or {})
    return flags


def tuning_row(recipe: Recipe, row: Row, flag: str) -> Row:
    """The row whose tuning decides `flag` for `row` (itself, or the end of its inherit chain)."""
    while flag not in row.tune:
        row = recipe.row(row.inherit[flag])
    return row


def chosen_value(recipe: Recipe, task: Task, row: Row, flag: str, chosen: dict | None) -> Value:
    """The value of a tuned or inherited flag of a row on a task (PENDING until stage tune has chosen it)."""
    if flag in row.tune:
        value = (chosen or {}).get((task.id, row.id), {}).get(flag, PENDING)
        return Value(value, f"chosen on {_select_on(recipe)} from {candidates(row, task)[flag].value}")
    parent = recipe.row(row.inherit[flag])
    inherited = chosen_value(recipe, task, parent, flag, chosen)
    return Value(inherited.value, f"the value chosen for row {parent.id}")


def tune_waves(recipe: Recipe, rows: list[Row]) -> list[list[Row]]:
    """The rows that tune, in waves: a row's wave comes after the waves of the rows it inherits from."""
    tuning = [r for r in rows if r.tune]
    waves: list[list[Row]] = []
    placed: set[str] = set()
    while len(placed) < len(tuning):
        wave = [
            r
            for r in tuning
            if r.id not in placed and all(p in placed or not recipe.row(p).tune for p in r.inherit.values())
        ]
        if not wave:
            raise ConfigError(f"recipe {recipe.name}: rows inherit tuned values from each other in a cycle")
        waves.append(wave)
        placed |= {r.id for r in wave}
    return waves


def _select_on(recipe: Recipe) -> str:
    return recipe.tuning.select_on if recipe.tuning else "validation"


def argv_of(flags: dict[str, Value], resolve: Resolver | None = None) -> list[str]:
    """`rmlora train` argv of a cell's flags; "smoke:..." / "asset:..." values become paths through `resolve`."""
    argv = []
    for flag, value in flags.items():
        tokens = format_value(value.value)
        if resolve is not None:
            tokens = [resolve(t) if t.startswith((SMOKE_PREFIX, ASSET_PREFIX)) else t for t in tokens]
        argv += [f"--{flag}", *tokens]
    return argv


def build_cells(
    recipe: Recipe,
    seeds: list[int] | None = None,
    tasks: list[str] | None = None,
    rows: list[str] | None = None,
    methods: list[str] | None = None,
    stage: str | None = None,
) -> list[RecipeCell]:
    """The cells of the recipe (or of a subset: task ids, row ids, methods, one stage), seed by seed."""
    for kind, wanted, known in (
        ("task", tasks, list(recipe.tasks)),
        ("row", rows, [r.id for r in recipe.rows]),
        ("method", methods, sorted({r.method for r in recipe.rows})),
    ):
        for w in wanted or ():
            if w not in known:
                raise ConfigError(f"recipe {recipe.name} has no {kind} {w!r}; choose among {', '.join(known)}")
    picked_rows = [r for r in recipe.rows if (not rows or r.id in rows) and (not methods or r.method in methods)]
    tune_rows = needed_tune_rows(recipe, picked_rows)
    cells: list[RecipeCell] = []
    if stage in (None, "tune") or (stage or "").startswith("tune:"):
        wave = int(stage.split(":")[1]) if stage and ":" in stage else None
        waves = tune_waves(recipe, tune_rows) if recipe.tuning is not None else []
        wave_rows = [r for i, w in enumerate(waves) if wave is None or i == wave for r in w]
        for seed in recipe.tuning.seeds.value if waves else ():
            for task_id, task in recipe.tasks.items():
                if tasks and task_id not in tasks:
                    continue
                for row in (r for r in wave_rows if r in recipe.rows_of(task_id)):
                    for setting in tune_settings(row, task):
                        cells.append(_cell(row, task, seed, setting, "tune"))
    if stage in (None, "final"):
        for seed in seeds or recipe.seeds.value:
            for task_id, task in recipe.tasks.items():
                if tasks and task_id not in tasks:
                    continue
                for row in (r for r in picked_rows if r in recipe.rows_of(task_id)):
                    cells.append(_cell(row, task, seed, (), "final"))
    if not cells:
        raise ConfigError(f"recipe {recipe.name}: the selection (--tasks / --rows / --methods) leaves no cell")
    return cells


def needed_tune_rows(recipe: Recipe, rows: list[Row]) -> list[Row]:
    """The rows whose tuning `rows` need: their own, and that of every row they inherit from (transitively)."""
    needed: list[Row] = []

    def add(row: Row) -> None:
        if row in needed:
            return
        for parent in row.inherit.values():
            add(recipe.row(parent))
        if row.tune:
            needed.append(row)

    for row in rows:
        add(row)
    return [r for r in recipe.rows if r in needed]


def _cell(row: Row, task: Task, seed: int, setting: tuple, stage: str) -> RecipeCell:
    rank = row_rank(row, task)
    rank = None if rank is None else int(rank.value)
    return RecipeCell(row.method, rank, int(seed), tuple(setting), task=task.id, row=row.id, stage=stage)


def flags_of_cell(recipe: Recipe, cell: RecipeCell, chosen=None, overrides=None) -> dict[str, Value]:
    return cell_flags(recipe, recipe.tasks[cell.task], recipe.row(cell.row), cell.seed, cell.setting, chosen, overrides)
