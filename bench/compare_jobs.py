"""Wall time of one `rmlora compare` grid run with --jobs 1, --jobs 1 --isolate, --jobs 2 (warm workers), --jobs 2
--worker_mode process (and --backend ray --jobs 2 with --ray), one after the other on the same machine, and the
ratios to --jobs 1 (bench/warm_workers.py: cells per hour and per-cell overhead).

The grid is the test suite's: a tiny BERT (tests/helpers.py) on the RTE fixture, 2 methods × 2 seeds at R = 4;
--epochs sets how long a cell trains, so that training (which parallel cells share out) weighs against the
start-up of a cell's process (importing torch and transformers, which --jobs 1 in one process pays once).
Every cell uses one CPU thread (OMP_NUM_THREADS=1). Run from the repository root:

    python bench/compare_jobs.py [--epochs 40] [--ray]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from warm_workers import ROOT, grid_argv  # the same grid (4 cells); bench/ is on sys.path when run as a script


def timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rmlora.cli.main", *argv], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40, help="epochs per cell (default 40)")
    parser.add_argument("--ray", action="store_true", help="also --backend ray --jobs 2 (a local Ray, 2 CPUs)")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import save_text_model  # the test suite's tiny BERT and word tokenizer

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(ROOT, "src"), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        env["XDG_CACHE_HOME"] = os.path.join(tmp, "cache")
        model = save_text_model(os.path.join(tmp, "tiny-bert"))
        runs = {"--jobs 1": [], "--jobs 1 --isolate": ["--isolate"], "--jobs 2": ["--jobs", "2"]}
        runs["--jobs 2 --worker_mode process"] = ["--jobs", "2", "--worker_mode", "process"]
        if args.ray:
            runs["--backend ray --jobs 2"] = ["--backend", "ray", "--jobs", "2"]
        walls = {}
        for i, (name, extra) in enumerate(runs.items()):
            walls[name] = timed(grid_argv(model, os.path.join(tmp, f"run{i}"), 4, args.epochs) + extra, env)
            print(f"{name:<24} {walls[name]:7.1f} s", flush=True)
    base = walls["--jobs 1"]
    print(f"cpu cores: {os.cpu_count()}; 4 cells of {args.epochs} epochs; ratios to --jobs 1:")
    for name, wall in walls.items():
        print(f"  {name:<24} {wall / base:5.2f}")
    print(f"--jobs 2 / --jobs 1 --isolate: {walls['--jobs 2'] / walls['--jobs 1 --isolate']:.2f}")
    process = walls["--jobs 2 --worker_mode process"]
    print(f"--jobs 2 / --jobs 2 --worker_mode process: {walls['--jobs 2'] / process:.2f}")


if __name__ == "__main__":
    main()
