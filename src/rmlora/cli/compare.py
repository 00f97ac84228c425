"""`rmlora compare`: train a grid of methods × ranks × seeds with `rmlora train`, then write the report.

Every flag that is not one of the sweep's own goes unchanged to `rmlora train` for every cell (model,
task, data, batch size, epochs, learning rate, r_hat, reg_weight, report_to, ...); the grid sets
--method, --lora_r, --seed and --output_dir per cell. Rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from rmlora.config import METHODS
from rmlora.errors import ConfigError
from rmlora.harness.grid import INIT_RANK_FACTOR, build_grid, flag_map, parse_overrides
from rmlora.harness.report import write_report
from rmlora.harness.sweep import Sweep
from rmlora.io.run_files import RUNS_DIR
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
tensorboard: pass --report_to tensorboard (needs `pip install tensorboard`); logs go to runs/<cell>/runs/.

example:
  rmlora compare --output_dir cmp --methods lora rm-lora --ranks 4 8 --seeds 0 1 2 \\
    --model_name_or_path microsoft/deberta-v3-base --task_name rte \\
    --per_device_train_batch_size 32 --learning_rate 1e-3 --num_train_epochs 5 \\
    --override full:learning_rate=1e-5

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


def main(argv: list[str]) -> int:
    args, train_args = build_parser().parse_known_args(argv)
    cells = build_grid(_items(args.methods), _ints(args.ranks, "--ranks"), _ints(args.seeds, "--seeds"))
    overrides = parse_overrides(args.override)
    if "tensorboard" in flag_map(train_args).get("report_to", ()):
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
    )
    sweep.validate()

    if args.dry_run:
        status = sweep.status()
        for cell in cells:
            flags = " ".join(sweep.args(cell))
            run_dir = os.path.join(args.output_dir, RUNS_DIR, cell.name)
            print(f"{cell.name:<22} {status[cell.name]:<12} rmlora train {flags} --output_dir {run_dir}")
        return 0

    result = sweep.run()
    print(
        f"{len(cells)} cells: {len(result.skipped)} already finished, {len(result.recovered)} recovered, "
        f"{len(result.trained)} trained, {len(result.failed)} failed",
        file=sys.stderr,
    )
    for name, reason in result.failed:
        print(f"  failed {name}: {reason}", file=sys.stderr)
    if not args.no_report and (result.skipped or result.recovered or result.trained):
        written = write_report(args.output_dir)
        print(written["report"])
        for path in written["figures"]:
            print(path)
    return 1 if result.failed else 0
