"""Cells per hour of one `rmlora compare` grid run three ways, one after the other: --jobs 1 (cells in the driver's
process), --jobs 2 (two warm workers, the default) and --jobs 2 --worker_mode process (a new `rmlora train` process
per cell), with each cell's overhead.

The grid is the test suite's tiny BERT (tests/helpers.py) on the RTE fixture: lora and rm-lora at R = 4 over
--cells / 2 seeds, one CPU thread per cell (OMP_NUM_THREADS=1), --epochs chosen so that a cell trains about 10 s.
A cell's training time is its Trainer's own `train_runtime` (results.jsonl; the per-epoch evaluations included);
its overhead is what a worker spends per cell beside training: wall × jobs / cells − mean train_runtime (the
start of a process and its imports, loading data and model, the adapter's export). Run from the repository root:

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
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "rmlora.cli.main", *argv], env=env, check=True, capture_output=True)
            wall = time.perf_counter() - start
            runtimes = train_runtimes(out)
            jobs = int(extra[1])
            train = statistics.mean(runtimes)
            rows[name] = (wall, len(runtimes) / wall * 3600, train, wall * jobs / len(runtimes) - train)
            print(f"  {name:<32} done in {wall:.1f} s (load {load()})", flush=True)
    base = rows["--jobs 1"][1]
    print(f"\n{'run':<32} {'wall s':>7} {'cells/h':>8} {'x jobs 1':>8} {'train s/cell':>12} {'overhead s/cell':>15}")
    for name, (wall, per_hour, train, overhead) in rows.items():
        print(f"{name:<32} {wall:7.1f} {per_hour:8.0f} {per_hour / base:8.2f} {train:12.2f} {overhead:15.2f}")
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
