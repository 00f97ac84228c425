"""The map's report: intervals and verdicts against a naive computation, and the report and figure of a folder."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics

from rmlora.io.atomic import write_json
from rmlora.recipes import parse_recipe, write_recipe_report
from rmlora.recipes.format import tomllib
from rmlora.recipes.map_report import map_tables, t_interval, verdict
from rmlora.recipes.runner import RECIPE_STATE_NAME

# Student t quantiles t(0.975, n − 1), from a printed table
T975 = {2: 12.706, 3: 4.303, 5: 2.776}

MAP = """
name = "tiny-map"
layout = "map"
seeds = [0, 1, 2, 3, 4]
[tasks.a_10]
task_name = "rte"
panel = "a"
size = 10
label = "task a, 10 per class"
[tasks.a_100]
extends = "a_10"
size = 100
label = "task a, 100 per class"
[tasks.a_20]
extends = "a_10"
size = 20
label = "task a, 20 per class (not run)"
[[rows]]
id = "lora"
label = "LoRA"
method = "lora"
variant = "lora"
rank = 4
[[rows]]
id = "rm-lora"
label = "RM-LoRA"
method = "rm-lora"
variant = "rm-lora"
rank = 4
[[rows]]
id = "rm-lora.dropin"
label = "RM-LoRA (drop-in at LoRA's lr, α)"
method = "rm-lora"
variant = "rm-lora"
protocol = "drop-in"
rank = 4
"""


def test_the_interval_is_the_t_interval_of_a_textbook():
    values = [0.71, 0.74, 0.69, 0.73, 0.70]
    iv = t_interval(values)
    half = T975[5] * statistics.stdev(values) / math.sqrt(5)
    assert math.isclose(iv.mean, statistics.mean(values)) and math.isclose(iv.half, half, rel_tol=1e-3)
    assert t_interval([0.5]).n == 1 and math.isnan(t_interval([0.5]).low)
    assert verdict(t_interval([0.02, 0.025, 0.03])) == "win"
    assert verdict(t_interval([-0.02, -0.025, -0.03])) == "loss"
    assert verdict(t_interval([-0.02, 0.01, 0.03])) == "tie"


def _records():
    """LoRA at 0.70 + seed noise; RM-LoRA 3 points above on task a_10 (every seed), equal on a_100."""
    noise = [0.01, -0.02, 0.0, 0.02, -0.01]
    out = []
    for task, gain in (("a_10", 0.03), ("a_100", 0.0)):
        for row, delta in (("lora", 0.0), ("rm-lora", gain), ("rm-lora.dropin", -0.05)):
            for seed, e in enumerate(noise):
                jitter = 0.001 * (seed % 2) if row == "rm-lora" and gain == 0 else 0.0
                out.append({
                    "cell": f"{task}/{row}_s{seed}", "stage": "final", "recipe_task": task, "row": row, "seed": seed,
                    "method": "rm-lora" if row != "lora" else "lora", "primary_metric": "accuracy",
                    "metrics": {"test_accuracy": 0.70 + e + delta + jitter, "eval_accuracy": 0.5},
                    "diagnostics": {"mean_effective_rank": 3.0 if row == "lora" else 3.5},
                    "chosen": {"learning_rate": "0.001"} if row != "lora" else {},
                })  # fmt: skip
    return out


def test_map_tables_pair_every_variant_with_lora_and_count_wins_ties_losses():
    recipe = parse_recipe(tomllib.loads(MAP))
    text, figure = map_tables(recipe, _records())
    rm_10 = next(line for line in text.splitlines() if line.startswith("| RM-LoRA |") and "win" in line)
    # 70 % + 3 points, seed noise std 1.58 points: half-width t(0.975, 4) · 1.58 / √5 = 1.96 points
    assert "| 5 | 73.0 ± 2.0 |" in rm_10
    assert "+3.0" in rm_10 and "win" in rm_10 and "3.50" in rm_10 and "learning_rate=0.001" in rm_10
    assert "| RM-LoRA | own | 1 | 1 | 0 |" in text  # a win on a_10, a tie on a_100
    assert "| RM-LoRA | drop-in | 0 | 0 | 2 |" in text  # 5 points below on both
    assert "drop-in swap at LoRA's validated lr" in text
    # the figure's points: (size, accuracy, paired difference to LoRA) per variant, per protocol
    own = figure[("own", "a")]
    assert sorted(x for x, _, _ in own["RM-LoRA"]) == [10.0, 100.0]
    lora_10 = next(p for p in own["LoRA"] if p[0] == 10.0)
    assert math.isclose(lora_10[1].mean, 0.70) and lora_10[2] is None  # LoRA is not paired with itself
    rm_10 = next(p for p in own["RM-LoRA"] if p[0] == 10.0)
    assert math.isclose(rm_10[2].mean, 0.03)


def test_a_map_folder_gets_its_report_and_figures(tmp_path):
    raw = tomllib.loads(MAP)
    write_json(str(tmp_path / RECIPE_STATE_NAME), {"name": "tiny-map", "scale": "paper", "source": None, "recipe": raw})
    with open(tmp_path / "results.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in _records())
    written = write_recipe_report(str(tmp_path))
    report = open(written["report"], encoding="utf-8").read()
    assert "## Wins, ties and losses against LoRA" in report
    assert (tmp_path / "figures" / "map-own.png").exists() and (tmp_path / "figures" / "map-drop-in.png").exists()


def test_a_partly_run_map_says_what_has_not_run():
    """While the map runs, a task with no finished run is one line, and a row without runs is not the baseline."""
    raw = tomllib.loads(MAP)
    raw["tasks"]["a_1000"] = {"extends": "a_10", "size": 1000, "label": "task a, 1000 per class"}
    raw["rows"].append(
        {"id": "x.dropin", "label": "X (drop-in at LoRA's lr, α)", "method": "rm-lora", "variant": "x",
         "protocol": "drop-in", "rank": 4}
    )  # fmt: skip
    text, _ = map_tables(parse_recipe(raw), _records())
    waiting = "### Not run yet (no finished final-stage run)\n\n- task a, 20 per class (not run)\n- task a, 1000 per"
    assert waiting in text
    assert "task a, 1000 per class: own validated settings" not in text
    x_rows = [line for line in text.splitlines() if line.startswith("| X (drop-in")]
    assert len(x_rows) == 2 and all("| 0 | — | — | not run yet |" in line for line in x_rows)
    assert text.count("(baseline)") == 4  # LoRA's own row, in each task's two tables


def test_the_map_matrix_puts_each_variant_against_lora_per_task_size():
    recipe = parse_recipe(tomllib.loads(MAP))
    text, _ = map_tables(recipe, _records())
    lines = text.splitlines()
    own = lines.index("### The map, own validated settings (points against LoRA, paired 95 % CI; ▲ win, ▼ loss)")
    assert lines[own + 2] == "| variant | a 10 | a 100 |"  # sizes as numbers; a_20 has no run
    assert lines[own + 4] == "| LoRA | 70.0 ± 2.0 % | 70.0 ± 2.0 % |"  # LoRA's own accuracy, t-interval on 5 seeds
    # +3 points on every seed: a zero-width interval that excludes 0; on a_100 a tie within a jitter of 0.1 point
    assert lines[own + 5].startswith("| RM-LoRA | +3.0 ± 0.0 ▲ | +0.0 ± 0.1 |")
    drop = next(i for i, line in enumerate(lines) if line.startswith("### The map, drop-in at LoRA's validated lr"))
    assert lines[drop + 5] == "| RM-LoRA | -5.0 ± 0.0 ▼ | -5.0 ± 0.0 ▼ |"


def test_exp8_defaults_check_sets_rm_lora_against_one_seed_std_of_lora(tmp_path, capsys):
    raw = tomllib.loads(MAP)
    write_json(str(tmp_path / RECIPE_STATE_NAME), {"name": "tiny-map", "scale": "paper", "source": None, "recipe": raw})
    records = _records()
    for r in records:  # a_100's drop-in: 1 point below LoRA, inside one std
        if r["recipe_task"] == "a_100" and r["row"] == "rm-lora.dropin":
            r["metrics"]["test_accuracy"] += 0.04
    with open(tmp_path / "results.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "exp8_defaults_check.py")
    spec = importlib.util.spec_from_file_location("exp8_defaults_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(str(tmp_path))
    out = capsys.readouterr().out
    lora_std = statistics.stdev([0.70 + e for e in (0.01, -0.02, 0.0, 0.02, -0.01)]) * 100  # 1.58 points
    # a_10: own +3 points, drop-in −5 (more than one std); a_100: own +0.04, drop-in −1; no sqrt/linear rows
    assert f"| a_10 | 70.0 ({lora_std:.1f}) | +3.0 (no cost) | -5.0 (cost > 1 std) | — | — |" in out
    assert f"| a_100 | 70.0 ({lora_std:.1f}) | +0.0 (no cost) | -1.0 (cost ≤ 1 std) | — | — |" in out
