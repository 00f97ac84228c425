"""Markdown summary of a merged comparison folder: per method x R the test accuracy, test loss, train accuracy,
generalization error (train - test accuracy), ΔW rank / orthogonality loss / effective rank / largest singular
value (median over the adapted modules), wall time (mean ± sample std over seeds), and every method minus LoRA
per seed; with --epochs, the mean test accuracy at those epochs (from each run's history.jsonl).

    python experiments/summarize.py experiments/out/<comparison or recipe folder> [--epochs 40,50,60]
"""

import argparse
import json
import os
import statistics as st
from collections import defaultdict

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("folder", help="a comparison folder with results.jsonl and runs/")
parser.add_argument("--epochs", default="", help="comma-separated epochs for the test-accuracy-by-epoch table")
args = parser.parse_args()

rows = [json.loads(l) for l in open(os.path.join(args.folder, "results.jsonl")) if l.strip()]
rows = [r for r in rows if r.get("stage", "final") == "final"]  # a recipe folder: its final cells, not stage tune
order = ["full", "lora", "adalora", "sora", "r-lora", "gm-lora", "rm-lora"]
groups = defaultdict(dict)
for r in rows:
    groups[(r["method"], r.get("rank"))][r["seed"]] = r
keys = sorted(groups, key=lambda k: (k[1] or 0, order.index(k[0])))


def ms(xs, fmt="{:.3f}"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return fmt.format(st.mean(xs)) + (" ± " + fmt.replace("+", "").format(st.stdev(xs)) if len(xs) > 1 else "")


def run_file(r, name):
    return os.path.join(args.folder, r.get("run_dir") or os.path.join("runs", r["cell"]), name)


def get(r, k):
    m = r["metrics"]
    if k in m:
        return m[k]
    if k == "median_sigma_max":  # read from the run's diagnostics.json (the record keeps only the summary)
        path = run_file(r, "diagnostics.json")
        if not os.path.exists(path):
            return None
        return st.median(mod["singular_values"][0] for mod in json.load(open(path))["modules"])
    d = r.get("diagnostics") or {}
    return d.get(k)


print(
    "| Method | R | seeds | test acc | test loss | train acc | gen. error (train − test) | rank ΔW | orth. loss ΔW "
    "| eff. rank ΔW | σ₁ ΔW (median over modules) | wall s/run |"
)
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for key in keys:
    rs = list(groups[key].values())

    def col(k, fmt="{:.3f}", rs=rs):
        return ms([get(r, k) for r in rs], fmt)

    print(
        f"| {key[0]} | {key[1] if key[1] else '–'} | {len(rs)} | {col('test_accuracy')} | {col('test_loss')} | "
        f"{col('train_accuracy')} | {col('test_generalization_error')} | {col('mean_rank', '{:.2f}')} | "
        f"{col('mean_orthogonality_loss', '{:.1f}')} | {col('mean_effective_rank', '{:.2f}')} | "
        f"{col('median_sigma_max', '{:.3f}')} | {ms([r['wall_time_s'] for r in rs], '{:.0f}')} |"
    )

print()
print(
    "Paired differences against LoRA at the same R and seed (in points; mean ± sample std over seeds, then per seed; "
    "'std LoRA' is LoRA's own seed std of test accuracy):"
)
print()
print("| Method − LoRA | R | seeds | Δ test acc (pts) | per seed | std LoRA (pts) | Δ gen. error (pts) | per seed |")
print("|---|---:|---:|---:|---|---:|---:|---|")
for key in keys:
    m, R = key
    if m in ("lora", "full") or ("lora", R) not in groups:
        continue
    base = groups[("lora", R)]
    seeds = sorted(set(groups[key]) & set(base))

    def diff(k, runs=groups[key], base=base, seeds=seeds):
        return [100 * (get(runs[s], k) - get(base[s], k)) for s in seeds]

    d, dg = diff("test_accuracy"), diff("test_generalization_error")
    sl = [100 * get(base[s], "test_accuracy") for s in base]
    print(
        f"| {m} | {R} | {len(seeds)} | {ms(d, '{:+.2f}')} | {', '.join(f'{x:+.1f}' for x in d)} | "
        f"{ms(sl, '{:.2f}').split(' ± ')[-1] if len(sl) > 1 else '–'} | {ms(dg, '{:+.2f}')} | "
        f"{', '.join(f'{x:+.1f}' for x in dg)} |"
    )

if args.epochs:
    epochs = [int(e) for e in args.epochs.split(",")]
    print()
    print("Test accuracy at epoch (mean over seeds, from history.jsonl):")
    print()
    print("| Method | R | " + " | ".join(f"epoch {e}" for e in epochs) + " |")
    print("|---|---:|" + "---:|" * len(epochs))
    for key in keys:
        at = defaultdict(list)
        for r in groups[key].values():
            for h in map(json.loads, filter(str.strip, open(run_file(r, "history.jsonl")))):
                if round(h["epoch"]) in epochs and "test_accuracy" in h:
                    at[round(h["epoch"])].append(h["test_accuracy"])
        print(
            f"| {key[0]} | {key[1] if key[1] else '–'} | "
            + " | ".join(f"{st.mean(at[e]):.3f}" if at[e] else "–" for e in epochs)
            + " |"
        )
