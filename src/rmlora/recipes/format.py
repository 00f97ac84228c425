"""The recipe file: one TOML file per experiment, read into a `Recipe`, every value with where it comes from.

Why TOML: a recipe is something a user reads, copies and edits; TOML has comments, typed numbers and booleans
(no YAML surprises such as `no` read as False), and Python reads it with the standard library (`tomllib`). A
value is written either plainly or with its source beside it:

    learning_rate = 1e-3                                      # source: "recipe file"
    learning_rate = { value = 1e-3, from = "Table 4 (LoRA)" }  # source: "Table 4 (LoRA)"

The built-in recipes give a source for every value (tests/test_recipes.py checks it): the paper's table or
section, or "paper silent: ..." with what the recipe chose and why. A recipe file's sections (docs/RECIPES.md):

    name, summary, paper, layout, seeds, notes     what it is; the report layout; the seeds of its final runs
    [train]                                         `rmlora train` flags of every cell (names without dashes)
    [tasks.ID]                                      one per task: its flags over [train]; `label`,
      [tasks.ID.methods.METHOD]                     `train_examples` (for the estimate), `extends` (another task
                                                    whose flags it starts from); flags for one method's cells only
    [[rows]]                                        the table's rows: id, label, method, rank, init_rank (AdaLoRA's
                                                    initial / SoRA's gated rank), flags, tune, inherit, tasks,
                                                    paper (the paper's numbers of the row), from
    [[columns]]                                     the table's columns: id, label, task, metric or diagnostic, scale
    [tuning]                                        seeds and select_on of the stage that picks each row's `tune`
    [estimate]                                      step_time_s, eval_overhead: for the dry run's device-hours
    [scales.NAME]                                   what `--scale NAME` replaces: seeds, train, tasks, tuning
    [paper_data]                                    further numbers of the paper (e.g. SoRA's sparsity per task)

An unknown key anywhere is a one-line ConfigError naming the key, where it is, and the valid ones.
"""

from __future__ import annotations

import copy
import difflib
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from rmlora.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the same parser, as a package (pyproject's dependency)
    import tomli as tomllib

FROM_FILE = "recipe file"
LAYOUTS = ("glue", "qa", "table5", "compare", "map")
ID_CHARS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$")  # row and task ids become folder names


@dataclass(frozen=True)
class Value:
    """A recipe value and where it comes from."""

    value: Any
    source: str = FROM_FILE


@dataclass
class Column:
    id: str
    label: str
    task: str | None = None  # a task id of the recipe; None: the column is about every task (Table 5's rank)
    metric: str | None = None  # a task metric without its split prefix (accuracy, matthews_correlation, f1, ...)
    diagnostic: str | None = None  # a key of the ΔW diagnostics summary (mean_rank, mean_orthogonality_loss)
    scale: float = 1.0  # ours × scale is on the paper's scale (Table 5's accuracy is in percent)


@dataclass
class Row:
    id: str
    label: str
    method: str
    rank: Value | None = None
    init_rank: Value | None = None  # AdaLoRA's initial rank / SoRA's number of gated directions
    flags: dict[str, Value] = field(default_factory=dict)
    tune: dict[str, Value] = field(default_factory=dict)  # flag -> Value(list of candidates)
    inherit: dict[str, str] = field(default_factory=dict)  # flag -> row id whose tuned value this row takes
    tasks: list[str] | None = None  # None: every task
    paper: dict[str, Any] = field(default_factory=dict)  # column id (or "params", "ranks") -> the paper's number
    source: str = FROM_FILE
    variant: str | None = None  # layout map: the method variant this row trains (its rows share it across protocols)
    protocol: str = "own"  # layout map: "own" (its own validated settings) or "drop-in" (LoRA's, swapped in)


@dataclass
class Task:
    id: str
    label: str
    flags: dict[str, Value] = field(default_factory=dict)
    methods: dict[str, dict[str, Value]] = field(default_factory=dict)  # method -> flags for its cells only
    train_examples: Value | None = None
    panel: str | None = None  # layout map: the figure panel / report section (a data set; its tasks are its sizes)
    size: Value | None = None  # layout map: the x axis, training examples per class
    step_time_s: Value | None = None  # the estimate's seconds per step for this task's cells (else [estimate]'s)
    tune: dict[str, Value] = field(default_factory=dict)  # flag -> this task's candidates for rows tuning that flag
    rank: Value | None = None  # this task's R for every row with a rank (a recipe whose tasks differ in R)


@dataclass
class Tuning:
    seeds: Value
    select_on: str = "validation"


@dataclass
class Recipe:
    name: str
    summary: str
    layout: str
    seeds: Value
    train: dict[str, Value]
    tasks: dict[str, Task]
    rows: list[Row]
    columns: list[Column] = field(default_factory=list)
    paper: str | None = None  # "Table 1": which of the paper's tables the rows' `paper` numbers come from
    tuning: Tuning | None = None
    estimate: dict[str, Value] = field(default_factory=dict)
    scales: dict[str, dict] = field(default_factory=dict)  # name -> the raw [scales.NAME] table
    paper_data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    scale: str = "paper"  # which scale this object was resolved at
    path: str | None = None

    def row(self, row_id: str) -> Row:
        for row in self.rows:
            if row.id == row_id:
                return row
        raise ConfigError(f"recipe {self.name}: no row {row_id!r}; rows: {', '.join(r.id for r in self.rows)}")

    def rows_of(self, task_id: str) -> list[Row]:
        return [r for r in self.rows if r.tasks is None or task_id in r.tasks]

    def at_scale(self, scale: str | None) -> Recipe:
        """This recipe with `[scales.NAME]` applied (a copy); "paper" or None: as written."""
        if scale in (None, "paper"):
            return self
        if scale not in self.scales:
            known = ", ".join(["paper", *self.scales]) or "paper"
            raise ConfigError(f"recipe {self.name} has no scale {scale!r}: choose one of {known}")
        return _apply_scale(self, scale, self.scales[scale])


# -- reading ------------------------------------------------------------------------------------------

TOP_KEYS = (
    "name",
    "summary",
    "paper",
    "layout",
    "seeds",
    "notes",
    "train",
    "tasks",
    "rows",
    "columns",
    "tuning",
    "estimate",
    "scales",
    "paper_data",
)
TASK_KEYS = (
    "label",
    "train_examples",
    "extends",
    "methods",
    "tune",
    "rank",
    "panel",
    "size",
    "step_time_s",
)  # every other key of a task is a train flag
ROW_KEYS = (
    "id", "label", "method", "rank", "init_rank", "flags", "tune", "inherit", "tasks", "paper", "from", "variant",
    "protocol",
)  # fmt: skip
PROTOCOLS = ("own", "drop-in")
COLUMN_KEYS = ("id", "label", "task", "metric", "diagnostic", "scale")
TUNING_KEYS = ("seeds", "select_on")
ESTIMATE_KEYS = ("step_time_s", "eval_overhead")
SCALE_KEYS = ("summary", "seeds", "train", "tasks", "tuning", "estimate")


def check_keys(table: dict, valid: tuple[str, ...], where: str) -> None:
    """One line for the first unknown key: where it is, a close match, and the valid keys."""
    for key in table:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {key!r} in {where}{hint}; valid keys: {', '.join(valid)}")


def parse_value(raw: Any, where: str) -> Value:
    """A plain TOML value, or `{ value = ..., from = "..." }`."""
    if isinstance(raw, dict):
        check_keys(raw, ("value", "from"), where)
        if "value" not in raw:
            raise ConfigError(
                f"{where}: an inline table needs `value` (and `from`), e.g. {{ value = 1e-3, from = ... }}"
            )
        return Value(raw["value"], str(raw.get("from") or FROM_FILE))
    return Value(raw)


def _flags(
    table: dict, where: str, reserved: tuple[str, ...] = (), default_source: str = FROM_FILE
) -> dict[str, Value]:
    out = {k: parse_value(v, f"{where}.{k}") for k, v in table.items() if k not in reserved}
    return {k: Value(v.value, default_source) if v.source == FROM_FILE else v for k, v in out.items()}


def _require(table: dict, key: str, where: str):
    if key not in table:
        raise ConfigError(f"{where} has no `{key}`")
    return table[key]


def _check_id(value: str, where: str) -> str:
    if not isinstance(value, str) or not ID_CHARS.match(value):
        raise ConfigError(f"{where}: id {value!r} must be letters, digits and . + _ - (it names folders)")
    return value


def _seeds(raw, where: str) -> Value:
    value = parse_value(raw, where)
    seeds = value.value
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ConfigError(f"{where} must be a non-empty list of integers, got {seeds!r}")
    return value


def _task(task_id: str, raw: dict, tasks_raw: dict, where: str, seen: tuple[str, ...] = ()) -> Task:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table of flags")
    parent = raw.get("extends")
    base = Task(task_id, task_id)
    if parent is not None:
        if parent not in tasks_raw or parent in seen + (task_id,):
            raise ConfigError(f"{where}.extends = {parent!r}: no such task (or a cycle); tasks: {', '.join(tasks_raw)}")
        base = _task(task_id, tasks_raw[parent], tasks_raw, f"[tasks.{parent}]", seen + (task_id,))
    methods = copy.deepcopy(base.methods)
    for method, flags in (raw.get("methods") or {}).items():
        methods.setdefault(method, {}).update(_flags(flags, f"{where}.methods.{method}"))
    examples = raw.get("train_examples")
    tune = dict(base.tune)
    tune.update(_candidates(raw.get("tune") or {}, f"{where}.tune"))
    return Task(
        id=task_id,
        label=str(raw.get("label") or (base.label if parent else task_id)),
        flags={**base.flags, **_flags(raw, where, TASK_KEYS)},
        methods=methods,
        train_examples=parse_value(examples, f"{where}.train_examples")
        if examples is not None
        else base.train_examples,
        tune=tune,
        rank=parse_value(raw["rank"], f"{where}.rank") if "rank" in raw else base.rank,
        panel=str(raw["panel"]) if "panel" in raw else base.panel,
        size=parse_value(raw["size"], f"{where}.size") if "size" in raw else base.size,
        step_time_s=parse_value(raw["step_time_s"], f"{where}.step_time_s")
        if "step_time_s" in raw
        else base.step_time_s,
    )


def _candidates(table: dict, where: str) -> dict[str, Value]:
    out = {}
    for flag, candidates in table.items():
        value = parse_value(candidates, f"{where}.{flag}")
        if not isinstance(value.value, list) or not value.value:
            raise ConfigError(f"{where}.{flag} must be a non-empty list of candidate values")
        out[flag] = value
    return out


def _row(raw: dict, index: int, task_ids: list[str]) -> Row:
    where = f"[[rows]] #{index + 1}"
    check_keys(raw, ROW_KEYS, where)
    method = str(_require(raw, "method", where))
    label = str(raw.get("label") or method)
    row_id = _check_id(str(raw.get("id") or re.sub(r"[^A-Za-z0-9.+_-]+", "-", label).strip("-")), where)
    where = f"row {row_id!r}"
    tune = _candidates(raw.get("tune") or {}, f"{where}.tune")
    tasks = raw.get("tasks")
    for t in tasks or ():
        if t not in task_ids:
            raise ConfigError(f"{where}.tasks names {t!r}, not a task of the recipe: {', '.join(task_ids)}")
    rank = parse_value(raw["rank"], f"{where}.rank") if "rank" in raw else None
    init_rank = parse_value(raw["init_rank"], f"{where}.init_rank") if "init_rank" in raw else None
    for name, value in (("rank", rank), ("init_rank", init_rank)):
        if value is not None and not (isinstance(value.value, int) and value.value >= 1):
            raise ConfigError(f"{where}.{name} must be an integer ≥ 1, got {value.value!r}")
    return Row(
        id=row_id,
        label=label,
        method=method,
        rank=rank,
        init_rank=init_rank,
        flags=_flags(raw.get("flags") or {}, f"{where}.flags"),
        tune=tune,
        inherit={str(k): str(v) for k, v in (raw.get("inherit") or {}).items()},
        tasks=list(tasks) if tasks is not None else None,
        paper=dict(raw.get("paper") or {}),
        source=str(raw.get("from") or FROM_FILE),
        variant=str(raw["variant"]) if "variant" in raw else None,
        protocol=_protocol(raw.get("protocol", "own"), where),
    )


def _protocol(value, where: str) -> str:
    if value not in PROTOCOLS:
        raise ConfigError(f"{where}.protocol: {value!r} is not one of {', '.join(PROTOCOLS)}")
    return value


def _column(raw: dict, index: int, task_ids: list[str]) -> Column:
    where = f"[[columns]] #{index + 1}"
    check_keys(raw, COLUMN_KEYS, where)
    column = Column(
        id=_check_id(str(_require(raw, "id", where)), where),
        label=str(raw.get("label") or raw["id"]),
        task=raw.get("task"),
        metric=raw.get("metric"),
        diagnostic=raw.get("diagnostic"),
        scale=float(raw.get("scale", 1.0)),
    )
    if (column.metric is None) == (column.diagnostic is None):
        raise ConfigError(f"{where} ({column.id}) needs exactly one of `metric` and `diagnostic`")
    if column.task is not None and column.task not in task_ids:
        raise ConfigError(f"{where} ({column.id}): task {column.task!r} is not a task of the recipe")
    return column


def parse_recipe(data: dict, path: str | None = None) -> Recipe:
    """A Recipe from the TOML tables of a recipe file (checked; nothing is trained or loaded)."""
    check_keys(data, TOP_KEYS, "the recipe's top level")
    name = str(_require(data, "name", "the recipe"))
    layout = str(data.get("layout", "compare"))
    if layout not in LAYOUTS:
        raise ConfigError(f"recipe {name}: unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    tasks_raw = data.get("tasks") or {}
    if not tasks_raw:
        raise ConfigError(f"recipe {name} has no [tasks.ID] table: name at least one task")
    for task_id in tasks_raw:
        _check_id(task_id, f"[tasks.{task_id}]")
    tasks = {tid: _task(tid, raw, tasks_raw, f"[tasks.{tid}]") for tid, raw in tasks_raw.items()}
    rows = [_row(raw, i, list(tasks)) for i, raw in enumerate(data.get("rows") or [])]
    if not rows:
        raise ConfigError(f"recipe {name} has no [[rows]]: name at least one row (method, rank)")
    ids = [r.id for r in rows]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"recipe {name}: row id {duplicates[0]!r} is used twice; give each row its own `id`")
    for row in rows:
        for flag, parent in row.inherit.items():
            if parent not in ids:
                raise ConfigError(f"row {row.id!r}.inherit.{flag} names row {parent!r}, not in the recipe")
            source = rows[ids.index(parent)]
            if flag not in source.tune and flag not in source.inherit:
                raise ConfigError(f"row {row.id!r}.inherit.{flag}: row {parent!r} neither tunes nor inherits {flag}")
    tuning = None
    if "tuning" in data:
        check_keys(data["tuning"], TUNING_KEYS, "[tuning]")
        tuning = Tuning(
            _seeds(_require(data["tuning"], "seeds", "[tuning]"), "[tuning].seeds"),
            str(data["tuning"].get("select_on", "validation")),
        )
    if any(r.tune or r.inherit for r in rows) and tuning is None:
        raise ConfigError(f"recipe {name}: rows have `tune` or `inherit` but there is no [tuning] (seeds, select_on)")
    estimate = data.get("estimate") or {}
    check_keys(estimate, ESTIMATE_KEYS, "[estimate]")
    scales = data.get("scales") or {}
    for scale, raw in scales.items():
        check_keys(raw, SCALE_KEYS, f"[scales.{scale}]")
        for task_id in raw.get("tasks") or {}:
            if task_id not in tasks:
                raise ConfigError(f"[scales.{scale}.tasks.{task_id}]: {task_id!r} is not a task of the recipe")
    return Recipe(
        name=name,
        summary=str(data.get("summary", "")),
        layout=layout,
        seeds=_seeds(data.get("seeds", [0]), "seeds"),
        train=_flags(data.get("train") or {}, "[train]"),
        tasks=tasks,
        rows=rows,
        columns=[_column(raw, i, list(tasks)) for i, raw in enumerate(data.get("columns") or [])],
        paper=data.get("paper"),
        tuning=tuning,
        estimate={k: parse_value(v, f"[estimate].{k}") for k, v in estimate.items()},
        scales=scales,
        paper_data=dict(data.get("paper_data") or {}),
        notes=[str(n) for n in data.get("notes") or []],
        path=path,
    )


def read_recipe_file(path: str) -> Recipe:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read recipe {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    return parse_recipe(data, path)


def _apply_scale(recipe: Recipe, scale: str, raw: dict) -> Recipe:
    out = copy.deepcopy(recipe)
    where = f"[scales.{scale}]"
    out.scale = scale
    if "summary" in raw:
        out.summary = str(raw["summary"])
    if "seeds" in raw:
        seeds = _seeds(raw["seeds"], f"{where}.seeds")
        out.seeds = Value(seeds.value, f"--scale {scale}") if seeds.source == FROM_FILE else seeds
    scaled = f"--scale {scale}"  # the source of a plain value of [scales.NAME]
    out.train.update(_flags(raw.get("train") or {}, f"{where}.train", default_source=scaled))
    for task_id, flags in (raw.get("tasks") or {}).items():
        task = out.tasks[task_id]
        task.flags.update(_flags(flags, f"{where}.tasks.{task_id}", ("methods",), scaled))
        for method, method_flags in (flags.get("methods") or {}).items():
            task.methods.setdefault(method, {}).update(
                _flags(method_flags, f"{where}.tasks.{task_id}.methods.{method}", default_source=scaled)
            )
    if "tuning" in raw:
        if out.tuning is None:
            raise ConfigError(f"{where}.tuning: the recipe has no [tuning] to scale")
        check_keys(raw["tuning"], TUNING_KEYS, f"{where}.tuning")
        if "seeds" in raw["tuning"]:
            out.tuning.seeds = _seeds(raw["tuning"]["seeds"], f"{where}.tuning.seeds")
    out.estimate.update({k: parse_value(v, f"{where}.estimate.{k}") for k, v in (raw.get("estimate") or {}).items()})
    return out
