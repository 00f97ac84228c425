"""`rmlora recipe list | show | run | report`: the paper's tables and figures (and docs/RESULTS.md's experiments) as
named recipes, one command each, at the paper's scale or `--scale smoke`.

    rmlora recipe list
    rmlora recipe show paper/table1                     # rows, tasks, flags, and where every value comes from
    rmlora recipe run paper/table1 --output_dir t1 --dry_run --json    # one JSON object per cell; estimate on stderr
    rmlora recipe run paper/table1 --output_dir t1 --jobs 8            # resumable; --backend ray for a cluster
    rmlora recipe report t1                             # report.md: ours (paper) per cell, figures
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rmlora.errors import ConfigError
from rmlora.io.run_files import RESULTS_NAME, read_results
from rmlora.lists import split_list
from rmlora.recipes import (
    FROM_FILE,
    RecipeSelection,
    asset_resolver,
    build_cells,
    builtin_names,
    chosen_values,
    estimate,
    flags_of_cell,
    load_recipe,
    parse_sets,
    raw_recipe,
    run_recipe,
    write_recipe_report,
)
from rmlora.recipes.cells import check_flags, format_value

HELP = "the paper's tables and figures as named recipes: list, show, run (resumable, --jobs, Ray), report"


def _items(values) -> list[str] | None:
    if not values:
        return None
    return [v for value in values for v in split_list(value)]


def _ints(values, flag: str) -> list[int] | None:
    items = _items(values)
    try:
        return None if items is None else [int(v) for v in items]
    except ValueError:
        raise ConfigError(f"{flag} takes integers, got {' '.join(values)!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from rmlora.cli.compare import add_executor_arguments

    parser = argparse.ArgumentParser(
        prog="rmlora recipe",
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1],
    )
    sub = parser.add_subparsers(dest="command", metavar="{list,show,run,report}")
    sub.required = True
    sub.add_parser("list", help="every built-in recipe, one line each")

    show = sub.add_parser("show", help="a recipe's tasks, rows, flags and the source of every value")
    show.add_argument("recipe", help="a built-in recipe's name (rmlora recipe list) or a recipe .toml file")
    show.add_argument("--scale", default="paper", help="paper (default) or a scale the recipe defines, e.g. smoke")
    show.add_argument("--toml", action="store_true", help="print the recipe file itself (to copy and edit)")

    run = sub.add_parser(
        "run",
        help="train the recipe's cells (resumable), then write the report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    run.add_argument("recipe", help="a built-in recipe's name or a recipe .toml file")
    run.add_argument("--output_dir", default=None, help="folder of the run (runs/, results.jsonl, report.md)")
    run.add_argument("--scale", default="paper", help="paper (default: as the paper ran it) or smoke (tiny models)")
    run.add_argument("--seeds", nargs="+", default=None, help="seeds of the final stage instead of the recipe's")
    run.add_argument("--tasks", nargs="+", default=None, help="only these task ids (e.g. cola stsb)")
    run.add_argument("--rows", nargs="+", default=None, help="only these row ids (rmlora recipe show lists them)")
    run.add_argument("--methods", nargs="+", default=None, help="only the rows of these methods")
    run.add_argument(
        "--stage",
        choices=["tune", "final"],
        default=None,
        help="only this stage (default: tune, if the recipe has one, then final)",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FLAG=VALUE",
        help="an `rmlora train` flag for every cell, over the recipe's (repeatable)",
    )
    run.add_argument("--dry_run", action="store_true", help="list the cells and estimate device-hours; train nothing")
    run.add_argument("--json", action="store_true", help="with --dry_run: one JSON object per cell on stdout")
    run.add_argument(
        "--step_time_s",
        type=float,
        default=None,
        help="seconds per optimizer step on your device, for the estimate (default: the recipe's)",
    )
    run.add_argument(
        "--bench_json",
        default=None,
        help="a `rmlora bench --json --output FILE` result measured on your device, for the estimate",
    )
    run.add_argument(
        "--smoke_dir",
        default=None,
        help="where --scale smoke builds its tiny models and data (default: ~/.cache/rmlora/smoke)",
    )
    run.add_argument(
        "--assets_dir",
        default=None,
        help="where `asset:NAME` data sets are built (default: ~/.cache/rmlora/assets; scripts pass assets/)",
    )
    run.add_argument("--keep_going", action="store_true", help="go on with the other cells when one fails")
    run.add_argument("--max_retries", type=int, default=1, help="retries of a killed cell (default 1)")
    run.add_argument("--no_report", action="store_true", help="do not write report.md at the end")
    run.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_executor_arguments(run)

    report = sub.add_parser("report", help="rebuild report.md and the figures of a recipe run's folder")
    report.add_argument("output_dir", help="the folder `rmlora recipe run` wrote")
    return parser


def cmd_list() -> int:
    for name in builtin_names():
        print(f"{name:<28} {load_recipe(name).summary}")
    return 0


def _show_flags(flags, indent: str = "  ") -> list[str]:
    return [f"{indent}{k} = {' '.join(format_value(v.value))}    # {v.source}" for k, v in flags.items()]


def cmd_show(args) -> int:
    if args.toml:
        data, where = raw_recipe(args.recipe)
        if where.endswith(".toml") and os.path.isfile(where):
            with open(where, encoding="utf-8") as f:
                print(f.read(), end="")
        else:
            from importlib import resources

            print(resources.files("rmlora.recipes").joinpath(where).read_text(encoding="utf-8"), end="")
        return 0
    recipe = load_recipe(args.recipe, args.scale)
    lines = [f"{recipe.name} (scale {recipe.scale}): {recipe.summary}"]
    lines.append(f"seeds = {recipe.seeds.value}    # {recipe.seeds.source}")
    if recipe.tuning:
        lines.append(
            f"tuning: seeds {recipe.tuning.seeds.value} ({recipe.tuning.seeds.source}), "
            f"chosen on {recipe.tuning.select_on}"
        )
    lines += ["", "[train] every cell:"] + _show_flags(recipe.train)
    for task in recipe.tasks.values():
        examples = (
            f", {task.train_examples.value:,} train examples ({task.train_examples.source})"
            if task.train_examples
            else ""
        )
        lines += ["", f"task {task.id} ({task.label}{examples}):"] + _show_flags(task.flags)
        for method, flags in task.methods.items():
            lines += [f"  {method} cells only:"] + _show_flags(flags, "    ")
    lines += ["", "rows:"]
    for row in recipe.rows:
        rank = f", rank {row.rank.value} ({row.rank.source})" if row.rank else ""
        init = f", initial rank {row.init_rank.value} ({row.init_rank.source})" if row.init_rank else ""
        where = f", tasks {', '.join(row.tasks)}" if row.tasks else ""
        lines.append(f"  {row.id}: {row.label} — method {row.method}{rank}{init}{where}    # {row.source}")
        lines += _show_flags(row.flags, "    ")
        lines += [f"    tune {k} over {v.value}    # {v.source}" for k, v in row.tune.items()]
        lines += [f"    {k} = the value chosen for row {p}" for k, p in row.inherit.items()]
    cells = build_cells(recipe)
    lines += ["", f"{len(cells)} cells; `rmlora recipe run {args.recipe} --dry_run --json` lists each with its flags"]
    unsourced = [k for k, v in recipe.train.items() if v.source == FROM_FILE]
    if unsourced:
        lines.append(f"values without a stated source (shown as '{FROM_FILE}'): {', '.join(unsourced)}")
    print("\n".join(lines))
    return 0


def _selection(args) -> RecipeSelection:
    return RecipeSelection(
        seeds=_ints(args.seeds, "--seeds"),
        tasks=_items(args.tasks),
        rows=_items(args.rows),
        methods=_items(args.methods),
        stage=args.stage,
        overrides=parse_sets(args.set),
    )


def dry_run(recipe, args, selection: RecipeSelection) -> int:
    check_flags(recipe)
    records = read_results(os.path.join(args.output_dir, RESULTS_NAME)).records if args.output_dir else []
    done = {r.get("cell") for r in records}
    chosen = chosen_values(recipe, records)
    cells = build_cells(recipe, selection.seeds, selection.tasks, selection.rows, selection.methods, selection.stage)
    resolve = asset_resolver(args.smoke_dir, args.assets_dir, build=False)
    for cell in cells:
        flags = flags_of_cell(recipe, cell, chosen, selection.overrides)
        values = {k: _resolved(v.value, resolve) for k, v in flags.items()}
        status = "finished" if cell.name in done else "todo"
        if args.json:
            lora_r = values.get("lora_r")
            print(
                json.dumps(
                    {
                        "cell": cell.name,
                        "stage": cell.stage,
                        "task": cell.task,
                        "row": cell.row,
                        "method": cell.method,
                        "lora_r": int(lora_r) if lora_r is not None else None,
                        "seed": cell.seed,
                        "status": status,
                        "flags": values,
                        "from": {k: v.source for k, v in flags.items()},
                    },
                    default=str,
                )
            )
        else:
            argv = " ".join(f"--{k} {' '.join(format_value(v))}" for k, v in values.items())
            print(f"{cell.name:<40} {status:<9} rmlora train {argv}")
    result = estimate(
        recipe,
        cells,
        lambda c: flags_of_cell(recipe, c, chosen, selection.overrides),
        step_time_s=args.step_time_s,
        bench_json=args.bench_json,
        devices_per_cell=max(1, args.devices_per_cell),
    )
    print(
        f"estimate: {result.device_hours:.1f} device-hours for {result.cells} cells "
        f"({recipe.name}, scale {recipe.scale})",
        file=sys.stderr,
    )
    for line in result.lines:
        print(f"  {line}", file=sys.stderr)
    return 0


def _resolved(value, resolve):
    return resolve(value) if isinstance(value, str) else value


def cmd_run(args) -> int:
    from rmlora.cli.compare import make_executor

    recipe = load_recipe(args.recipe, args.scale)
    selection = _selection(args)
    if args.json and not args.dry_run:
        raise ConfigError("--json goes with --dry_run (the run itself writes results.jsonl)")
    if args.dry_run:
        return dry_run(recipe, args, selection)
    if not args.output_dir:
        raise ConfigError("rmlora recipe run needs --output_dir (the folder of runs/, results.jsonl and report.md)")
    raw, _ = raw_recipe(args.recipe)
    stages = run_recipe(
        recipe,
        raw,
        args.output_dir,
        selection,
        resolve=asset_resolver(args.smoke_dir, args.assets_dir, build=True),
        make_executor=(lambda: make_executor(args)) if args.jobs > 1 or args.backend == "ray" else None,
        keep_going=args.keep_going,
        progress=not args.no_progress,
        max_retries=args.max_retries,
    )
    failed = 0
    for stage, result in stages:
        failed += len(result.failed)
        print(
            f"stage {stage}: {len(result.skipped)} already finished, {len(result.recovered)} recovered, "
            f"{len(result.trained)} trained ({len(result.retried)} retries), {len(result.failed)} failed",
            file=sys.stderr,
        )
        for name, reason in result.failed:
            print(f"  failed {name}: {reason}", file=sys.stderr)
    if not args.no_report:
        written = write_recipe_report(args.output_dir)
        print(written["report"])
        for path in written["figures"]:
            print(path)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        return cmd_list()
    if args.command == "show":
        return cmd_show(args)
    if args.command == "report":
        written = write_recipe_report(args.output_dir)
        print(written["report"])
        for path in written["figures"]:
            print(path)
        return 0
    return cmd_run(args)
