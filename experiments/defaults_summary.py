"""Markdown summary of experiment 7 (`rmlora recipe run results/exp7_defaults_grid`): per task, the learning-rate
stage (lora and rm-lora with / without step compensation over one lr grid; validation and test accuracy, mean over
seeds), the two protocols (each method at its own validated lr; every method at LoRA's validated lr, as in the
paper) with the per-seed paired difference to LoRA, and the penalty stage (reg_form x reg_weight x r_hat for rm-lora).

    python experiments/defaults_summary.py experiments/out/exp7 > experiments/out/exp7/summary.md

It reads the recipe folder's stage-tune cells: rows lora, r-lora, gm-lora and rm-lora_lr are the learning-rate
stage, rm-lora_reg the penalty stage, rm-lora_confirm the confirmation stage.
"""

import argparse
import json
import os
import statistics as st
from collections import defaultdict

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("folder", help="the folder of `rmlora recipe run results/exp7_defaults_grid`")
args = parser.parse_args()
STAGES = {"lr": ("lora", "r-lora", "gm-lora", "rm-lora_lr"), "reg": ("rm-lora_reg",), "confirm": ("rm-lora_confirm",)}
with open(os.path.join(args.folder, "results.jsonl")) as f:
    TUNED = [r for r in (json.loads(line) for line in f if line.strip()) if r.get("stage") == "tune"]


def records(task, stage):
    return [r for r in TUNED if r.get("recipe_task") == task and r.get("row") in STAGES[stage]]


def ms(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{st.mean(xs):.4f}" + (f" ± {st.stdev(xs):.4f}" if len(xs) > 1 else "")


def variant(r):
    s = r.get("setting") or {}
    comp = s.get("step_compensation")
    return r["method"] + (f" ({comp} comp.)" if comp else "")


def by_seed(rs, key):
    return {r["seed"]: r["metrics"].get(key) for r in rs}


for task in dict.fromkeys(r.get("recipe_task") for r in TUNED):
    lr_runs = records(task, "lr")
    if not lr_runs:
        continue
    print(f"## {task}\n")
    cells = defaultdict(list)  # (variant, lr) -> runs over seeds
    for r in lr_runs:
        cells[(variant(r), r["setting"]["learning_rate"])].append(r)
    variants = sorted({v for v, _ in cells}, key=lambda v: (v != "lora", v))
    lrs = sorted({lr for _, lr in cells}, key=float)
    print("Learning-rate stage: validation accuracy / test accuracy / train accuracy (mean over seeds)\n")
    print("| variant | " + " | ".join(f"lr {lr}" for lr in lrs) + " |")
    print("|---|" + "---:|" * len(lrs))
    best = {}
    for v in variants:
        row = []
        for lr in lrs:
            rs = cells.get((v, lr), [])
            val = [r["metrics"].get("eval_accuracy") for r in rs]
            test = [r["metrics"].get("test_accuracy") for r in rs]
            train = [r["metrics"].get("train_accuracy") for r in rs]
            row.append(" / ".join(f"{st.mean(x):.3f}" if x and None not in x else "–" for x in (val, test, train)))
            if val and None not in val:
                score = st.mean(val)
                if v not in best or score > best[v][0] + 1e-12:  # ties: the smaller lr (sorted first)
                    best[v] = (score, lr)
        print(f"| {v} | " + " | ".join(row) + " |")
    print()
    if "lora" not in best:
        continue
    lora_lr = best["lora"][1]
    lora_own = by_seed(cells[("lora", lora_lr)], "test_accuracy")
    print("| protocol | variant | lr | test acc | paired diff − LoRA (per seed) |")
    print("|---|---|---:|---:|---:|")
    for protocol in ("own lr (validated per method)", "LoRA's lr (paper)"):
        for v in variants:
            lr = best[v][1] if protocol.startswith("own") else lora_lr
            rs = cells.get((v, lr), [])
            test = by_seed(rs, "test_accuracy")
            diffs = [test[s] - lora_own[s] for s in test if s in lora_own and test[s] is not None]
            print(f"| {protocol} | {v} | {lr} | {ms(list(test.values()))} | {ms(diffs)} |")
    print()
    reg_runs = records(task, "reg")
    if reg_runs:
        cells = defaultdict(list)
        for r in reg_runs:
            setting = r["setting"]
            cells[(setting.get("reg_form", "squared"), setting["reg_weight"], setting["r_hat"])].append(r)
        print("Penalty stage (rm-lora at its chosen lr and compensation): validation / test accuracy\n")
        print("| reg_form | reg_weight | r_hat | validation acc | test acc | paired diff − LoRA (test) |")
        print("|---|---:|---:|---:|---:|---:|")
        for key in sorted(cells, key=lambda k: (k[0], float(k[1]), float(k[2]))):
            rs = cells[key]
            test = by_seed(rs, "test_accuracy")
            diffs = [test[s] - lora_own[s] for s in test if s in lora_own and test[s] is not None]
            val = [r["metrics"].get("eval_accuracy") for r in rs]
            print(f"| {key[0]} | {key[1]} | {key[2]} | {ms(val)} | {ms(list(test.values()))} | {ms(diffs)} |")
        print()
    confirm_runs = records(task, "confirm")
    if confirm_runs:
        first = confirm_runs[0]["rmlora_config"]
        print(
            f"Confirmation stage (rm-lora at reg_form {first['reg_form']}, reg_weight {first['reg_weight']}, "
            f"r_hat {first['r_hat']}): validation / test / train accuracy\n"
        )
        cells = defaultdict(list)
        for r in confirm_runs:
            cells[(r["setting"]["step_compensation"], r["setting"]["learning_rate"])].append(r)
        print("| step_compensation | " + " | ".join(f"lr {lr}" for lr in lrs) + " |")
        print("|---|" + "---:|" * len(lrs))
        best_cell, best_score = None, None
        for comp in sorted({c for c, _ in cells}):
            row = []
            for lr in lrs:
                rs = cells.get((comp, lr), [])
                cols = [[r["metrics"].get(k) for r in rs] for k in ("eval_accuracy", "test_accuracy", "train_accuracy")]
                row.append(" / ".join(f"{st.mean(x):.3f}" if x and None not in x else "–" for x in cols))
                if cols[0] and None not in cols[0] and (best_score is None or st.mean(cols[0]) > best_score + 1e-12):
                    best_cell, best_score = (comp, lr), st.mean(cols[0])
            print(f"| {comp} | " + " | ".join(row) + " |")
        print()
        if best_cell is not None:
            test = by_seed(cells[best_cell], "test_accuracy")
            diffs = [test[s] - lora_own[s] for s in test if s in lora_own]
            print(
                f"Chosen on validation: step_compensation {best_cell[0]}, lr {best_cell[1]}: test accuracy "
                f"{ms(list(test.values()))}; paired difference to LoRA at its own validated lr {lora_lr}: {ms(diffs)}\n"
            )
