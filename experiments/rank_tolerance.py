"""Numerical rank of ΔW at several tolerances, per method x R (mean ± std over seeds, median over the adapted
modules of each run), from the singular values in each run's diagnostics.json.

The paper's Table 5 gives no tolerance; the project's default is numpy's rule at float32 (σ > σ_max ·
max(d_out, d_in) · eps32); relative tolerances 1e-3 and 1e-2 of σ_max show how much of the rank is tail.

    python experiments/rank_tolerance.py experiments/out/<comparison>/merged [--rtols default,1e-3,1e-2]
"""

import argparse
import json
import os
import statistics as st
from collections import defaultdict

import torch

from rmlora.analysis.spectrum import numerical_rank

ORDER = ["full", "lora", "adalora", "sora", "r-lora", "gm-lora", "rm-lora"]


def module_rank(module: dict, rtol: float | None) -> int:
    """Numerical rank of one module's ΔW from its diagnostics entry; rtol None = the project's default."""
    sv = torch.tensor(module["singular_values"], dtype=torch.float64)
    return numerical_rank(sv, (module["d_out"], module["d_in"]), rtol)


def run_ranks(diagnostics: dict, rtol: float | None) -> float:
    """Median over the run's adapted modules of their numerical rank."""
    return st.median(module_rank(m, rtol) for m in diagnostics["modules"])


def rank_table(folder: str, rtols: list[float | None]) -> list[tuple]:
    """[(method, R, [per-rtol list of per-seed ranks])] for the runs of `folder` that have diagnostics."""
    rows = [json.loads(line) for line in open(os.path.join(folder, "results.jsonl")) if line.strip()]
    rows = [r for r in rows if r.get("stage", "final") == "final"]  # a recipe folder: its final cells
    groups = defaultdict(list)
    for r in rows:
        path = os.path.join(folder, r.get("run_dir") or os.path.join("runs", r["cell"]), "diagnostics.json")
        if os.path.isfile(path):
            with open(path) as f:
                groups[(r["method"], r.get("rank"))].append(json.load(f))
    keys = sorted(groups, key=lambda k: (k[1] or 0, ORDER.index(k[0]) if k[0] in ORDER else len(ORDER)))
    return [(m, rank, [[run_ranks(d, t) for d in groups[(m, rank)]] for t in rtols]) for m, rank in keys]


def fmt(xs: list) -> str:
    return f"{st.mean(xs):.1f}" + (f" ± {st.stdev(xs):.1f}" if len(xs) > 1 else "")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="a comparison folder with results.jsonl and runs/")
    p.add_argument("--rtols", default="default,1e-3,1e-2", help="comma-separated; 'default' = max(d)·eps32")
    a = p.parse_args(argv)
    names = a.rtols.split(",")
    rtols = [None if n == "default" else float(n) for n in names]
    heads = [f"rank (rtol {'max(d)·eps32' if n == 'default' else n})" for n in names]
    print("| method | R | " + " | ".join(heads) + " |")
    print("|---|---|" + "---|" * len(heads))
    for method, rank, per_tol in rank_table(a.folder, rtols):
        print(f"| {method} | {rank} | " + " | ".join(fmt(xs) for xs in per_tol) + " |")


if __name__ == "__main__":
    main()
