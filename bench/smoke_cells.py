"""Where the time of a smoke-scale cell goes, and what freezing the imported objects saves, in one process.

    python bench/smoke_cells.py                 # 18 Table-1 smoke cells (2 rows x 9 GLUE tasks), A/B alternated
    python bench/smoke_cells.py --cells 99      # all 11 rows x 9 tasks

Each cell is `rmlora train` in-process on the smoke-scale DeBERTa-v3 and GLUE (rmlora.assets.smoke) with Table 1's
smoke settings (2 steps of batch 8, LoRA on every linear layer, eval batch 32, 16 train-subset rows). Every cell runs
twice, alternately: (A) as this checkout runs it, the imported objects frozen out of the garbage collector
(harness.run.freeze_long_lived_objects), and (B) with them unfrozen, so that each of the Trainer's full collections
walks them again. Then one A cell is profiled and its time split into the stages of a run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time

_START = time.perf_counter()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import rmlora.harness.run as run_module  # noqa: E402
from rmlora.assets.smoke import smoke_asset  # noqa: E402
from rmlora.cli.main import main  # noqa: E402

IMPORTS_S = time.perf_counter() - _START  # torch, transformers, datasets, peft and rmlora: once per process

ROWS = [("lora", 4), ("rm-lora", 4), ("full", None), ("adalora", 4), ("sora", 4), ("r-lora", 4)]
ROWS += [("lora", 8), ("adalora", 8), ("sora", 8), ("r-lora", 8), ("rm-lora", 8)]
TASKS = ["cola", "stsb", "qnli", "mnli", "wnli", "rte", "mrpc", "qqp", "sst2"]
SMOKE = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32"]
SMOKE += ["--max_seq_length", "64", "--train_eval_samples", "16", "--lora_placement", "all", "--learning_rate", "1e-3"]
SMOKE += ["--lora_alpha", "32", "--r_hat", "0.5", "--save_strategy", "no", "--report_to", "none"]
SMOKE += ["--disable_tqdm", "true", "--seed", "0"]
# (stage, function names whose cumulative time is that stage's)
STAGES = [
    ("arguments", ("parse_args",)),
    ("data: load_dataset + labels", ("load_data",)),
    ("model load", ("load_model",)),
    ("tokenize (datasets.map)", ("prepare_datasets",)),
    ("PEFT wrap + method", ("prepare_model",)),
    ("Trainer init", ("RMLoraTrainer.__init__",)),
    ("gc.collect at train start", ("free_memory",)),
    ("optimizer steps", ("training_step",)),
    ("evaluation (train subset + dev)", ("evaluate_all",)),
    ("ΔW diagnostics", ("_diagnostics_summary", "diagnose_training")),
    ("export adapter + tokenizer", ("export", "save_pretrained")),
]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def _quiet():
    transformers.utils.logging.set_verbosity_error()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.disable(logging.WARNING)


def cell_argv(root: str, out: str, method: str, rank, task: str) -> list[str]:
    model, glue = smoke_asset("deberta-v3", root), smoke_asset("glue", root)
    extra = ["--method", method] + (["--lora_r", str(rank)] if rank else [])
    flags = ["--model_name_or_path", model, "--dataset_name", glue, "--task_name", task, *SMOKE, *extra]
    return ["train", *flags, "--output_dir", out]


def run_cell(argv: list[str]) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(argv)
    if rc != 0:
        raise SystemExit(f"cell failed (exit {rc}): {' '.join(argv)}")
    return time.perf_counter() - start


def stage_times(profile: pstats.Stats) -> dict[str, float]:
    cumulative = {}
    for (path, _, name), (_, _, _, ct, _) in profile.stats.items():
        if "rmlora" in path or "transformers" in path or "accelerate" in path:
            if name == "__init__" and path.endswith("training/trainer.py"):
                name = "RMLoraTrainer.__init__"
            cumulative[name] = max(cumulative.get(name, 0.0), ct)
    return {stage: max((cumulative.get(n, 0.0) for n in names), default=0.0) for stage, names in STAGES}


def main_bench() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=18, help="how many cells of the 99 (rows x tasks, in order)")
    ap.add_argument("--root", default=None, help="smoke assets folder (default: a temporary one)")
    a = ap.parse_args()
    _quiet()
    tmp = tempfile.mkdtemp(prefix="smoke-cells-")
    root = a.root or os.path.join(tmp, "assets")
    os.environ["XDG_CACHE_HOME"] = os.path.join(tmp, "cache")
    datasets.config.HF_DATASETS_CACHE = os.path.join(tmp, "hf")
    cells = [(m, r, t) for m, r in ROWS for t in TASKS][: a.cells]
    freeze = run_module.freeze_long_lived_objects
    run_cell(cell_argv(root, os.path.join(tmp, "warm"), "lora", 4, "rte"))  # builds the assets, fills the caches
    times = {"A frozen": [], "B unfrozen": []}
    for i, (method, rank, task) in enumerate(cells):
        for arm in ("A frozen", "B unfrozen") if i % 2 == 0 else ("B unfrozen", "A frozen"):
            if arm == "B unfrozen":
                gc.unfreeze()
                run_module.freeze_long_lived_objects = lambda: None
            else:
                run_module.freeze_long_lived_objects = freeze
                freeze()  # outside the timing: its one collection is paid once per process
            out = os.path.join(tmp, f"{arm[0]}{i}")
            times[arm].append(run_cell(cell_argv(root, out, method, rank, task)))
    run_module.freeze_long_lived_objects = freeze
    freeze()
    threads = torch.get_num_threads()
    print(f"{len(cells)} smoke cells per arm, {os.cpu_count()} CPUs, torch threads {threads}, uptime load {_load()}")
    print(f"  imports (once per process; a cell run as its own process pays them again): {IMPORTS_S:.1f} s")
    for arm, values in times.items():
        print(f"  {arm:<11} median {statistics.median(values):.2f} s/cell, total {sum(values):.1f} s")
    a_med, b_med = statistics.median(times["A frozen"]), statistics.median(times["B unfrozen"])
    print(f"  ratio B / A: {b_med / a_med:.2f}x per cell (Table 1's 99 cells: ~{99 * a_med:.0f} s frozen)")

    profiler = cProfile.Profile()
    argv = cell_argv(root, os.path.join(tmp, "profiled"), "rm-lora", 8, "mnli")
    profiler.enable()
    wall = run_cell(argv)
    profiler.disable()
    stats = pstats.Stats(profiler)
    print(f"\none profiled cell (rm-lora R=8, MNLI: two dev splits), {wall:.2f} s under cProfile:")
    shown = stage_times(stats)
    for stage, seconds in shown.items():
        print(f"  {stage:<34} {seconds:6.3f} s")
    print(f"  {'(rest: callbacks, logging, ...)':<34} {max(0.0, wall - sum(shown.values())):6.3f} s")


if __name__ == "__main__":
    sys.exit(main_bench())
