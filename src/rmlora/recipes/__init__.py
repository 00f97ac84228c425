"""Recipes: the paper's tables and figures, and docs/RESULTS.md's experiments, as named declarative files.

    recipe = load_recipe("paper/table1", scale="smoke")
    cells = build_cells(recipe)                      # RecipeCell(task, row, seed, ...) with their train flags
    run_recipe(recipe, raw_recipe("paper/table1")[0], "out/t1")
    write_recipe_report("out/t1")                    # report.md: ours (paper) per cell

Modules, in the order data flows: format (the TOML file -> Recipe, every value with its source), registry (the
built-in files, `extends`), cells (cells and their flags), estimate (device-hours of a dry run), assets (the
`smoke:NAME` / `asset:NAME` paths), runner (the stages through rmlora.harness.sweep), report (the paper's layouts).
"""

from rmlora.recipes.assets import asset_resolver
from rmlora.recipes.cells import RecipeCell, build_cells, flags_of_cell
from rmlora.recipes.estimate import estimate
from rmlora.recipes.format import FROM_FILE, Recipe, Value, parse_recipe
from rmlora.recipes.registry import builtin_names, load_recipe, raw_recipe
from rmlora.recipes.report import write_recipe_report
from rmlora.recipes.runner import RecipeSelection, chosen_values, parse_sets, read_folder_recipe, run_recipe

__all__ = [
    "FROM_FILE",
    "Recipe",
    "RecipeCell",
    "RecipeSelection",
    "Value",
    "asset_resolver",
    "build_cells",
    "builtin_names",
    "chosen_values",
    "estimate",
    "flags_of_cell",
    "load_recipe",
    "parse_recipe",
    "parse_sets",
    "raw_recipe",
    "read_folder_recipe",
    "run_recipe",
    "write_recipe_report",
]
