"""Markdown summary of a merged comparison folder: per method x R the test accuracy, train accuracy,
generalization error (train - test accuracy), ΔW rank / orthogonality loss / effective rank, wall time
(mean ± sample std over seeds), and RM-LoRA (and R-/GM-LoRA) minus LoRA per seed.

    python experiments/summarize.py experiments/out/<comparison>/merged
"""
import json, statistics as st, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1] + "/results.jsonl") if l.strip()]
order = ["full", "lora", "adalora", "sora", "r-lora", "gm-lora", "rm-lora"]
groups = defaultdict(dict)
for r in rows:
    groups[(r["method"], r.get("rank"))][r["seed"]] = r

def ms(xs, fmt="{:.3f}"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return fmt.format(st.mean(xs)) + (" ± " + fmt.replace("+", "").format(st.stdev(xs)) if len(xs) > 1 else "")

def get(r, k):
    m = r["metrics"]
    if k in m:
        return m[k]
    d = r.get("diagnostics") or {}
    return d.get(k)

print("| Method | R | seeds | test acc | train acc | gen. error (train − test) | rank ΔW | orth. loss ΔW | eff. rank ΔW | wall s/run |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for key in sorted(groups, key=lambda k: (k[1] or 0, order.index(k[0]))):
    g = groups[key]; rs = list(g.values())
    print(f"| {key[0]} | {key[1] if key[1] else '–'} | {len(rs)} | {ms([get(r,'test_accuracy') for r in rs])} | "
          f"{ms([get(r,'train_accuracy') for r in rs])} | {ms([get(r,'test_generalization_error') for r in rs])} | "
          f"{ms([get(r,'mean_rank') for r in rs], '{:.2f}')} | {ms([get(r,'mean_orthogonality_loss') for r in rs], '{:.1f}')} | "
          f"{ms([get(r,'mean_effective_rank') for r in rs], '{:.2f}')} | {ms([r['wall_time_s'] for r in rs], '{:.0f}')} |")

print()
print("Paired differences against LoRA at the same R and seed (test accuracy, in points; mean ± sample std over seeds; "
      "'std LoRA' is LoRA's own seed std):")
print()
print("| Method − LoRA | R | seeds | Δ test acc (pts) | per seed | std LoRA (pts) | Δ gen. error (pts) |")
print("|---|---:|---:|---:|---|---:|---:|")
for key in sorted(groups, key=lambda k: (k[1] or 0, order.index(k[0]))):
    m, R = key
    if m in ("lora", "full") or ("lora", R) not in groups:
        continue
    base = groups[("lora", R)]
    seeds = sorted(set(groups[key]) & set(base))
    d = [100 * (get(groups[key][s], "test_accuracy") - get(base[s], "test_accuracy")) for s in seeds]
    dg = [100 * (get(groups[key][s], "test_generalization_error") - get(base[s], "test_generalization_error")) for s in seeds]
    sl = [100 * get(base[s], "test_accuracy") for s in base]
    print(f"| {m} | {R} | {len(seeds)} | {ms(d, '{:+.2f}')} | {', '.join(f'{x:+.1f}' for x in d)} | "
          f"{ms(sl, '{:.2f}').split(' ± ')[-1] if len(sl) > 1 else '–'} | {ms(dg, '{:+.2f}')} |")
