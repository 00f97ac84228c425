"""`rmlora compare`: train a grid of methods × ranks × settings × seeds with `rmlora train`, then write the report.

Every flag that is not one of the sweep's own goes unchanged to `rmlora train` for every cell (model,
task, data, batch size, epochs, learning rate, r_hat, reg_weight, report_to, ...); the grid sets
--method, --lora_r, --seed and --output_dir per cell. Rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import os
import sys

from rmlora.config import METHODS
from rmlora.errors import ConfigError
from rmlora.harness.executors import LocalExecutor, RayExecutor, default_threads
from rmlora.harness.grid import INIT_RANK_FACTOR, build_grid, flag_map, parse_axes, parse_overrides
from rmlora.harness.report import write_report
from rmlora.harness.selection import DEFAULT_CRITERION, check_criterion, write_criterion
from rmlora.harness.sweep import Sweep
from rmlora.harness.warm_pool import MAX_CELLS_PER_WORKER, WarmExecutor
from rmlora.io.run_files import RUNS_DIR, read_results
from rmlora.lists import split_list

HELP = "train methods × ranks × seeds with `rmlora train` (resumable), then write report.md and figures"

EPILOG = f"""\
All other flags go unchanged to `rmlora train` for every cell (see `rmlora train --help`).

cells:      <method>_r<R>_s<seed>, or full_s<seed> (full fine-tuning has no rank)
writes:     OUTPUT_DIR/runs/<cell>/ (each run's own output), OUTPUT_DIR/results.jsonl (one line per
            finished cell), OUTPUT_DIR/report.md and OUTPUT_DIR/figures/{{curves,spectra}}.{{png,svg}}
resume:     rerun the same command; finished cells are skipped, interrupted ones retrained.
ranks:      LoRA variants train at R; AdaLoRA starts at 2R and prunes to R, SoRA trains 2R gates and
            prunes them (the paper's Tables 1–3 compare at the same inference budget; see --init_rank_factor).
overrides:  --override METHOD:FLAG=VALUE, repeatable, e.g.
              --override full:learning_rate=1e-5 --override sora:sora_lambda=1e-3
              --override adalora:adalora_init_r=12
            an override replaces the common value of that flag for that method's cells only.
axes:       --grid FLAG=V1,V2 (every method) or --grid METHOD:FLAG=V1,V2, repeatable: one cell per value
            (per combination of the axes), named e.g. rm-lora_r8_reg_weight=0.01_s0. The report shows, per
            method and rank, the setting with the best mean validation metric over the seeds (--select_on),
            named in its row; the choice never reads the test split.
parallel:   --jobs N runs N cells at once in N warm worker processes that train cell after cell (a fresh
            process after --max_cells_per_worker cells; --worker_mode process: a new `rmlora train` process per
            cell), log: runs/<cell>/train.log; one accelerator each (--devices_per_cell, fixed per worker), or
            --threads_per_cell CPU threads on a CPU machine;
            --backend ray [--ray_address auto|HOST:PORT] runs each cell as a Ray task (a local Ray without an
            address; on a cluster, --output_dir must be on storage every node mounts). A killed cell is
            retried --max_retries times; a cell that fails never stops the others (docs/COMPARE.md).
tensorboard: pass --report_to tensorboard (needs `pip install tensorboard`); logs go to runs/<cell>/runs/.

example:
  rmlora compare --output_dir cmp --methods lora rm-lora --ranks 4 8 --seeds 0 1 2 --jobs 4 \\
    --model_name_or_path microsoft/deberta-v3-base --task_name rte \\
    --per_device_train_batch_size 32 --learning_rate 1e-3 --num_train_epochs 5 \\
    --grid rm-lora:reg_weight=0.001,0.01,0.1 --select_on validation

methods: {", ".join(METHODS)}
"""


def _items(values: list[str]) -> list[str]:
    # "--ranks 4,8" and "--ranks 4 8" both work
    return [v for value in values for v in split_list(value)]


def _ints(values: list[str], flag: str) -> list[int]:
    try:
        return [int(v) for v in _items(values)]
    except ValueError:
        raise ConfigError(f"{flag} takes integers, got {' '.join(values)!r}") from None


def add_executor_arguments(parser) -> None:
    """Where cells run (--jobs, --devices_per_cell, --threads_per_cell, --backend, --worker_mode,
    --max_cells_per_worker, --ray_address): `rmlora compare`'s and `rmlora recipe run`'s flags, read by
    make_executor."""
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="cells at once (default 1: one after another in this process; N > 1: in N worker processes, see "
        "--worker_mode); with --backend ray every cell is a Ray task and --jobs sizes a local Ray",
    )
    parser.add_argument(
        "--devices_per_cell",
        type=int,
        default=1,
        help="accelerators per cell (CUDA_VISIBLE_DEVICES / Ray num_gpus; default 1; 0: share them)",
    )
    parser.add_argument(
        "--threads_per_cell",
        type=int,
        default=None,
        help="CPU threads per cell (OMP_NUM_THREADS / Ray num_cpus; default: CPU cores / --jobs, 1 with Ray)",
    )
    parser.add_argument(
        "--backend", choices=["local", "ray"], default="local", help="local processes (default) or Ray tasks"
    )
    parser.add_argument(
        "--worker_mode",
        choices=["warm", "process"],
        default="warm",
        help="local --jobs N > 1: warm (default): N worker processes that train cell after cell, importing torch "
        "and transformers once each; process: a new `rmlora train` process per cell",
    )
    parser.add_argument(
        "--max_cells_per_worker",
        type=int,
        default=MAX_CELLS_PER_WORKER,
        help="warm workers: cells a worker trains before a fresh process replaces it, which bounds the memory runs "
        f"do not give back (default {MAX_CELLS_PER_WORKER}; a failed cell also ends its worker)",
    )
    parser.add_argument(
        "--ray_address",
        default=None,
        metavar="auto|HOST:PORT",
        help="a running Ray cluster (default: start a local Ray with --jobs × --threads_per_cell CPUs for the run)",
    )


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: otherwise argparse would read a train flag like --method as --methods
    parser = argparse.ArgumentParser(
        prog="rmlora compare",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output_dir", required=True, help="folder of the comparison (runs/, results.jsonl, report.md, figures/)"
    )
    parser.add_argument("--methods", nargs="+", required=True, help=f"methods to compare, among: {' '.join(METHODS)}")
    parser.add_argument(
        "--ranks", nargs="+", default=["8"], help="LoRA ranks R (default: 8); full fine-tuning ignores them"
    )
    parser.add_argument(
        "--seeds", nargs="+", default=["0", "1", "2"], help="seeds (default: 0 1 2, the paper's three runs)"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="METHOD:FLAG=VALUE",
        help="a train flag for one method's cells only (repeatable)",
    )
    parser.add_argument(
        "--init_rank_factor",
        type=int,
        default=INIT_RANK_FACTOR,
        help="AdaLoRA starts at this × R and prunes to R; SoRA trains this × R gates "
        f"(default {INIT_RANK_FACTOR}, the paper's Tables 1–3)",
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="[METHOD:]FLAG=V1,V2",
        help="a hyperparameter axis: one cell per value, for every method or for METHOD's cells (repeatable)",
    )
    parser.add_argument(
        "--select_on",
        default=None,
        metavar="validation[:METRIC]",
        help="how the report picks one setting per method and rank: the best mean over seeds of the validation "
        f"primary metric (default: {DEFAULT_CRITERION}), or of validation METRIC; never the test split",
    )
    add_executor_arguments(parser)
    parser.add_argument(
        "--max_retries", type=int, default=1, help="retries of a cell whose process or node was killed (default 1)"
    )
    parser.add_argument(
        "--isolate", action="store_true", help="run each cell in its own process (log: runs/<cell>/train.log)"
    )
    parser.add_argument(
        "--keep_going", action="store_true", help="go on with the other cells when one fails; exit status 1 at the end"
    )
    parser.add_argument(
        "--dry_run", action="store_true", help="list the cells, their state and their train flags; train nothing"
    )
    parser.add_argument("--no_report", action="store_true", help="do not write report.md and the figures at the end")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def make_executor(args):
    """None (cells one after another in this process), warm local workers, a process per cell or Ray, from the
    flags."""
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    if args.max_cells_per_worker < 1:
        raise ConfigError(f"--max_cells_per_worker must be at least 1, got {args.max_cells_per_worker}")
    if args.threads_per_cell is not None and args.threads_per_cell < 1:
        raise ConfigError(f"--threads_per_cell must be at least 1, got {args.threads_per_cell}")
    if args.ray_address and args.backend != "ray":
        raise ConfigError("--ray_address needs --backend ray")
    if args.backend == "ray":
        threads = args.threads_per_cell or 1
        num_cpus = None if args.ray_address else args.jobs * threads  # a local Ray: --jobs cells at once
        return RayExecutor(args.ray_address, args.devices_per_cell, threads, num_cpus=num_cpus)
    if args.jobs == 1:
        return None
    threads = args.threads_per_cell or default_threads(args.jobs)
    if args.worker_mode == "process":
        return LocalExecutor(args.jobs, args.devices_per_cell, threads)
    return WarmExecutor(args.jobs, args.devices_per_cell, threads, max_cells_per_worker=args.max_cells_per_worker)


def main(argv: list[str]) -> int:
    args, train_args = build_parser().parse_known_args(argv)
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    select_on = check_criterion(args.select_on or DEFAULT_CRITERION)
    axes = parse_axes(args.grid)
    cells = build_grid(_items(args.methods), _ints(args.ranks, "--ranks"), _ints(args.seeds, "--seeds"), axes)
    overrides = parse_overrides(args.override)
    if "tensorboard" in flag_map(train_args).get("report_to", ()):
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise ConfigError("--report_to tensorboard needs the tensorboard package: pip install tensorboard")
    sweep = Sweep(
        args.output_dir,
        cells,
        train_args,
        overrides,
        isolate=args.isolate,
        keep_going=args.keep_going,
        progress=not args.no_progress,
        init_rank_factor=args.init_rank_factor,
        max_retries=args.max_retries,
    )
    sweep.validate()

    if args.dry_run:
        status = sweep.status()
        for cell in cells:
            flags = " ".join(sweep.args(cell))
            run_dir = os.path.join(args.output_dir, RUNS_DIR, cell.name)
            print(f"{cell.name:<22} {status[cell.name]:<12} rmlora train {flags} --output_dir {run_dir}")
        return 0

    sweep.executor = make_executor(args)
    if args.select_on:
        os.makedirs(args.output_dir, exist_ok=True)
        write_criterion(args.output_dir, select_on)
    result = sweep.run()
    if args.select_on:
        write_criterion(args.output_dir, select_on, read_results(args.output_dir).records)
    print(
        f"{len(cells)} cells: {len(result.skipped)} already finished, {len(result.recovered)} recovered, "
        f"{len(result.trained)} trained ({len(result.retried)} retries), {len(result.failed)} failed",
        file=sys.stderr,
    )
    for name, reason in result.failed:
        print(f"  failed {name}: {reason}", file=sys.stderr)
        for line in result.log_tails.get(name, []):
            print(f"    | {line}", file=sys.stderr)
    if not args.no_report and (result.skipped or result.recovered or result.trained):
        written = write_report(args.output_dir)
        for note in written["notes"]:
            if "selected on the mean validation" in note:
                print(f"  {note}", file=sys.stderr)
        print(written["report"])
        for path in written["figures"]:
            print(path)
    return 1 if result.failed else 0
