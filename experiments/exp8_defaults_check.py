"""The issue's test of RMLoraConfig's defaults on the map (results/exp8_map): per task and size, RM-LoRA against LoRA
under both protocols — its own validated settings, and the drop-in swap at LoRA's validated lr and α with
step_compensation none (the default), sqrt and linear — each paired difference set against one seed std of LoRA.
Also lists each (task, row) whose validation choice lies on an edge of its learning-rate grid.

    python experiments/exp8_defaults_check.py experiments/out/exp8_map
"""

from __future__ import annotations

import statistics
import sys

from rmlora.io.run_files import read_results
from rmlora.recipes.map_report import ordered_tasks
from rmlora.recipes.report import final_records
from rmlora.recipes.runner import read_folder_recipe

ROWS = {
    "own": "rm-lora",
    "drop-in, none": "rm-lora.dropin",
    "drop-in, sqrt": "rm-lora-sqrt.dropin",
    "drop-in, linear": "rm-lora-linear.dropin",
}


def accuracy(records, task: str, row: str) -> dict[int, float]:
    return {
        r["seed"]: r["metrics"]["test_accuracy"]
        for r in records
        if r.get("recipe_task") == task and r.get("row") == row and "test_accuracy" in r.get("metrics", {})
    }


def main(folder: str) -> None:
    recipe = read_folder_recipe(folder)
    everything = list(read_results(folder).by_cell().values())
    records = final_records(everything)
    print("RM-LoRA − LoRA, test accuracy in points, mean over seeds (paired by seed); a cost is a negative mean, set")
    print("against one sample std of LoRA's accuracy over the same seeds (the issue's bar for the defaults)\n")
    print(f"| task, size | LoRA (std) | {' | '.join(ROWS)} |")
    print("|---|---:|" + "---:|" * len(ROWS))
    for task in ordered_tasks(recipe):
        lora = accuracy(records, task.id, "lora")
        if len(lora) < 2:
            continue
        std = statistics.stdev(lora.values())
        cells = []
        for row in ROWS.values():
            mine = accuracy(records, task.id, row)
            diffs = [mine[s] - lora[s] for s in mine if s in lora]
            if not diffs:
                cells.append("—")
                continue
            mean = statistics.fmean(diffs)
            verdict = "no cost" if mean >= 0 else ("cost ≤ 1 std" if -mean <= std else "cost > 1 std")
            cells.append(f"{mean * 100:+.1f} ({verdict})")
        print(f"| {task.id} | {statistics.fmean(lora.values()) * 100:.1f} ({std * 100:.1f}) | {' | '.join(cells)} |")

    print("\nChoices on an edge of the learning-rate grid (the grid does not bracket the best rate):")
    grids = {t.id: [float(x) for x in t.tune["learning_rate"].value] for t in recipe.tasks.values() if t.tune}
    seen = set()
    for r in everything:
        chosen = r.get("chosen") or {}
        key = (r.get("recipe_task"), r.get("row"))
        if r.get("stage") != "final" or "learning_rate" not in chosen or key in seen:
            continue
        seen.add(key)
        if r.get("row", "").endswith(".dropin"):
            continue  # LoRA's rate, inherited: LoRA's own row says it
        lr, grid = float(chosen["learning_rate"]), grids.get(key[0], [])
        if grid and lr in (min(grid), max(grid)):
            side = "top" if lr == max(grid) else "bottom"
            print(f"  {key[0]} / {key[1]}: lr {lr:g}, the {side} of {', '.join(f'{x:g}' for x in grid)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "experiments/out/exp8_map")
