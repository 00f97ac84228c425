"""Running a recipe: its cells through the comparison machinery (rmlora.harness.sweep), stage by stage.

    OUTPUT_DIR/recipe.json        the recipe as run (its tables, the scale, the command-line --set values)
    OUTPUT_DIR/runs/TASK/ROW_sS/  a final cell's run folder; runs/tune/TASK/ROW_FLAG=V_sS/ a tuning cell's
    OUTPUT_DIR/results.jsonl      one line per finished cell, both stages (a line's `stage`, `row`, `recipe_task`)
    OUTPUT_DIR/selection.json     what stage tune chose per (task, row), once it has run

Everything `rmlora compare` guarantees holds, since the cells run through the same Sweep: resumable cell by
cell (rerun the same command; finished cells are skipped, interrupted ones retrained), a finished cell whose
flags would now differ is refused, `--jobs` local processes or `--backend ray`, retries of killed cells. A
folder holds one recipe at one scale: another one is refused, so results.jsonl never mixes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rmlora.errors import ConfigError
from rmlora.harness.selection import select
from rmlora.harness.sweep import Sweep, SweepResult
from rmlora.io.atomic import write_json
from rmlora.io.run_files import RESULTS_NAME, read_json, read_results
from rmlora.recipes.cells import (
    PENDING,
    RecipeCell,
    Resolver,
    argv_of,
    build_cells,
    check_flags,
    chosen_value,
    flags_of_cell,
    needed_tune_rows,
    tune_waves,
)
from rmlora.recipes.format import Recipe, Value, parse_recipe

RECIPE_STATE_NAME = "recipe.json"
CHOICES_NAME = "selection.json"


class RecipeSweep(Sweep):
    """A Sweep whose cells carry their own flags (a recipe's), and whose results lines name task, row and stage."""

    def __init__(
        self,
        output_dir: str,
        cells: Sequence[RecipeCell],
        argv: dict[str, list[str]],
        chosen: dict[str, dict] | None = None,
        **kwargs,
    ):
        super().__init__(output_dir, cells, [], {}, **kwargs)
        self._argv = argv
        self._chosen = chosen or {}  # cell name -> the values stage tune chose for it

    def args(self, cell: RecipeCell) -> list[str]:
        return list(self._argv[cell.name])

    def spec(self, cell: RecipeCell) -> dict:
        return {**super().spec(cell), "task": cell.task, "row": cell.row, "stage": cell.stage}

    def _record(self, cell: RecipeCell) -> dict:
        record = {**super()._record(cell), "recipe_task": cell.task, "row": cell.row, "stage": cell.stage}
        if self._chosen.get(cell.name):
            record["chosen"] = self._chosen[cell.name]
        return record


@dataclass
class RecipeSelection:
    """What to run of a recipe: a subset of tasks / rows / methods, seeds, one stage, command-line values."""

    seeds: list[int] | None = None
    tasks: list[str] | None = None
    rows: list[str] | None = None
    methods: list[str] | None = None
    stage: str | None = None
    overrides: dict[str, Value] = field(default_factory=dict)  # --set FLAG=VALUE


def parse_sets(specs: Sequence[str]) -> dict[str, Value]:
    """`--set FLAG=VALUE` (repeatable) -> {flag: Value(value, "command line")}."""
    out = {}
    for spec in specs:
        flag, eq, value = spec.partition("=")
        flag = flag.strip().lstrip("-")
        if not eq or not flag:
            raise ConfigError(f"--set {spec!r} is not FLAG=VALUE (e.g. --set reg_weight=0.01)")
        out[flag] = Value(value, "command line (--set)")
    return out


def chosen_values(recipe: Recipe, records: Sequence[dict]) -> dict[tuple[str, str], dict[str, str]]:
    """{(task id, row id): {flag: value}} chosen on validation from stage tune's finished cells.

    Rows are told apart by their id (not by method and rank): two rows of one method and rank, say LoRA and
    LoRA with dropout, each get their own choice. A row with a single candidate is chosen trivially."""
    tuned = [r for r in records if r.get("stage") == "tune"]
    if not tuned or recipe.tuning is None:
        return {}
    picks = select(tuned, recipe.tuning.select_on, keys=("recipe_task", "row"), min_settings=1)
    return {tuple(p["key"]): dict(p["chosen"]) for p in picks}


def tuned_values(recipe: Recipe, cells: Sequence[RecipeCell], chosen) -> dict[str, dict]:
    """Per final cell, the flags whose values stage tune chose (its own row's or inherited), for its results line."""
    out = {}
    for cell in cells:
        if cell.stage != "final":
            continue
        row = recipe.row(cell.row)
        task = recipe.tasks[cell.task]
        out[cell.name] = {
            axis: chosen_value(recipe, task, row, axis, chosen).value for axis in [*row.tune, *row.inherit]
        }
    return out


def tuning_complete(recipe: Recipe, cells: Sequence[RecipeCell], records: Sequence[dict]) -> list[str]:
    """The names of the tune-stage cells that have no results line (a final stage needs them all)."""
    done = {r.get("cell") for r in records}
    return [c.name for c in cells if c.stage == "tune" and c.name not in done]


def cell_argv(
    recipe: Recipe, cell: RecipeCell, chosen, selection: RecipeSelection, resolve: Resolver | None
) -> list[str]:
    flags = flags_of_cell(recipe, cell, chosen, selection.overrides)
    pending = [f for f, v in flags.items() if v.value == PENDING]
    if pending:
        raise ConfigError(
            f"cell {cell.name}: {', '.join(pending)} must be chosen on validation first, but stage tune has not "
            "finished: run the recipe without --stage final"
        )
    return argv_of(flags, resolve)


def check_folder(output_dir: str, recipe: Recipe, raw: dict) -> None:
    """A folder holds one recipe at one scale; writes recipe.json the first time."""
    path = os.path.join(output_dir, RECIPE_STATE_NAME)
    state = read_json(path)
    if state is not None and (state.get("name"), state.get("scale")) != (recipe.name, recipe.scale):
        raise ConfigError(
            f"{output_dir} holds recipe {state.get('name')} at scale {state.get('scale')}, not {recipe.name} at "
            f"{recipe.scale}: use another --output_dir"
        )
    os.makedirs(output_dir, exist_ok=True)
    write_json(path, {"name": recipe.name, "scale": recipe.scale, "source": recipe.path, "recipe": raw})


def read_folder_recipe(output_dir: str) -> Recipe:
    """The recipe a folder was run with (its recipe.json), at its scale."""
    state = read_json(os.path.join(output_dir, RECIPE_STATE_NAME))
    if state is None:
        raise ConfigError(f"{output_dir} has no {RECIPE_STATE_NAME}: it is not a folder of `rmlora recipe run`")
    return parse_recipe(state["recipe"], state.get("source")).at_scale(state.get("scale"))


ExecutorFactory = Callable[[], object]


def stage_names(recipe: Recipe, selection: RecipeSelection) -> list[str]:
    """ "tune:0", "tune:1", ... (one per wave of stage tune, rmlora.recipes.cells.tune_waves), then "final"."""
    picked = [
        r
        for r in recipe.rows
        if (not selection.rows or r.id in selection.rows) and (not selection.methods or r.method in selection.methods)
    ]
    waves = tune_waves(recipe, needed_tune_rows(recipe, picked)) if recipe.tuning else []
    names = [f"tune:{i}" for i in range(len(waves))] if selection.stage in (None, "tune") else []
    return names + (["final"] if selection.stage in (None, "final") else [])


def run_recipe(
    recipe: Recipe,
    raw: dict,
    output_dir: str,
    selection: RecipeSelection | None = None,
    resolve: Resolver | None = None,
    make_executor: ExecutorFactory | None = None,
    **sweep_kwargs,
) -> list[tuple[str, SweepResult]]:
    """Stage tune's waves (if the recipe tunes), then the final cells with the values chosen; [(stage, result)]."""
    selection = selection or RecipeSelection()
    check_flags(recipe)
    check_folder(output_dir, recipe, raw)
    out = []
    for stage in stage_names(recipe, selection):
        try:
            cells = build_cells(
                recipe, selection.seeds, selection.tasks, selection.rows, selection.methods, stage=stage
            )
        except ConfigError:
            if stage.startswith("tune"):  # a subset of the recipe with nothing to tune in this wave
                continue
            raise
        records = read_results(os.path.join(output_dir, RESULTS_NAME)).records
        chosen = chosen_values(recipe, records)
        if stage == "final" and chosen:
            write_json(
                os.path.join(output_dir, CHOICES_NAME),
                [{"task": t, "row": r, "chosen": c} for (t, r), c in sorted(chosen.items())],
            )
        argv = {c.name: cell_argv(recipe, c, chosen, selection, resolve) for c in cells}
        sweep = RecipeSweep(output_dir, cells, argv, tuned_values(recipe, cells, chosen), **sweep_kwargs)
        sweep.validate()
        sweep.executor = make_executor() if make_executor is not None else None
        result = sweep.run()
        out.append((stage, result))
        if stage.startswith("tune") and result.failed:
            raise ConfigError(
                f"{len(result.failed)} tuning cell(s) failed (first: {result.failed[0][0]}: {result.failed[0][1]}): "
                "the final stage needs every candidate; fix them and rerun the same command"
            )
    return out
