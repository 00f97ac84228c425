"""Cells per hour of one `rmlora compare` grid run three ways, one after the other: --jobs 1 (cells in the driver's
process), --jobs 2 (two warm workers, the default) and --jobs 2 --worker_mode process (a new `rmlora train` process
per cell), with each cell's overhead.

The grid is the test suite's tiny BERT (tests/helpers.py) on the RTE fixture: lora and rm-lora at R = 4 over
--cells / 2 seeds, one CPU thread per cell (OMP_NUM_THREADS=1), --epochs chosen so that a cell trains about 10 s.
A cell's training time is its Trainer's own `train_runtime` (results.jsonl; the per-epoch evaluations included).
Its overhead is what a worker spends per cell beside training, two ways: after start-up, (time from the first
cell's start to the last cell's end) × jobs / cells − mean train_runtime, where a cell starts when its run folder
gets cell.json and ends when it gets metrics.json (for a process per cell this includes every process's imports;
for warm workers, loading data and model, the adapter's export, the worker's bookkeeping); and in all, wall ×
jobs / cells − mean train_runtime, which also spreads the start-up over the cells (the driver's imports, and the
warm workers' own, before the first cell starts). Run from the repository root:

    python bench/warm_workers.py [--cells 8] [--epochs 120]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTE = os.path.join(ROOT, "tests", "fixtures", "glue", "rte")
RUNS = {
    "--jobs 1": ["--jobs", "1"],
    "--jobs 2 (warm)": ["--jobs", "2"],
    "--jobs 2 --worker_mode process": ["--jobs", "2", "--worker_mode", "process"],
}


def grid_argv(model: str, out: str, cells: int, epochs: int) -> list[str]:
    seeds = ",".join(str(s) for s in range(max(1, cells // 2)))
    return [
        "compare", "--output_dir", out, "--methods", "lora,rm-lora", "--ranks", "4", "--seeds", seeds,
        "--no_progress", "--no_report", "--threads_per_cell", "1",
        "--model_name_or_path", model, "--task_name", "rte",
        "--train_file", os.path.join(RTE, "train.tsv"), "--validation_file", os.path.join(RTE, "validation.tsv"),
        "--num_train_epochs", str(epochs), "--per_device_train_batch_size", "4", "--learning_rate", "1e-2",
        "--r_hat", "2", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no",
    ]  # fmt: skip


def train_runtimes(out: str) -> list[float]:
    with open(os.path.join(out, "results.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["metrics"]["train_runtime"] for line in f if line.strip()]


def cells_span(out: str) -> tuple[float, float]:
    """When the first cell started (its cell.json written) and the last one ended (its metrics.json written)."""
    runs = [os.path.join(out, "runs", name) for name in os.listdir(os.path.join(out, "runs"))]
    first = min(os.path.getmtime(os.path.join(run, "cell.json")) for run in runs)
    return first, max(os.path.getmtime(os.path.join(run, "metrics.json")) for run in runs)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=8, help="cells per run (even; default 8)")
    parser.add_argument("--epochs", type=int, default=120, help="epochs per cell (default 120: ~10 s of training)")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import save_text_model  # the test suite's tiny BERT and word tokenizer

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(ROOT, "src"), env.get("PYTHONPATH")) if p)
    print(f"cpu cores: {os.cpu_count()}; {args.cells} cells of {args.epochs} epochs; load before: {load()}", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        env["XDG_CACHE_HOME"] = os.path.join(tmp, "cache")
        model = save_text_model(os.path.join(tmp, "tiny-bert"))
        for i, (name, extra) in enumerate(RUNS.items()):
            out = os.path.join(tmp, f"run{i}")
            argv = grid_argv(model, out, args.cells, args.epochs) + extra
            start = time.time()
            subprocess.run([sys.executable, "-m", "rmlora.cli.main", *argv], env=env, check=True, capture_output=True)
            wall = time.time() - start
            runtimes = train_runtimes(out)
            first, last = cells_span(out)
            jobs, n, train = int(extra[1]), len(runtimes), statistics.mean(runtimes)
            steady = (last - first) * jobs / n - train
            rows[name] = (wall, n / wall * 3600, first - start, train, steady, wall * jobs / n - train)
            print(f"  {name:<32} done in {wall:.1f} s (load {load()})", flush=True)
    base = rows["--jobs 1"][1]
    print(f"\n{'':<32} {'':>7} {'':>8} {'':>8} {'start-up':>9} {'train':>7} {'overhead s/cell':>19}")
    head = f"{'wall s':>7} {'cells/h':>8} {'x jobs 1':>8} {'s':>9} {'s/cell':>7} {'after start-up':>14} {'all':>5}"
    print(f"{'run':<32} {head}")
    for name, (wall, per_hour, startup, train, steady, overall) in rows.items():
        print(
            f"{name:<32} {wall:7.1f} {per_hour:8.0f} {per_hour / base:8.2f} {startup:9.1f} {train:7.2f} "
            f"{steady:14.2f} {overall:5.2f}"
        )
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
