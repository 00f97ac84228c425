"""`rmlora bench`: training step time and peak memory of every method, side by side against plain PEFT LoRA.

What is measured and how: rmlora.bench's docstring and docs/PERFORMANCE.md.
"""

from __future__ import annotations

import json
import sys

from transformers import HfArgumentParser

import rmlora.bench
from rmlora.bench.arguments import BenchArguments
from rmlora.bench.ratios import add_all_ratios
from rmlora.bench.report import format_report
from rmlora.bench.run import run_benchmark
from rmlora.errors import ConfigError
from rmlora.io.atomic import write_text

HELP = "step time and peak memory of every method against plain PEFT LoRA (interleaved, medians, ratios)"


def parse_args(argv: list[str]) -> BenchArguments:
    description = rmlora.bench.__doc__.split("\n\n")[0]
    parser = HfArgumentParser(BenchArguments, prog="rmlora bench", description=description)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


def read_saved(path: str) -> dict:
    """A saved --output file, its ratios recomputed from the per-repetition times it stores."""
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        add_all_ratios(result["methods"], result["environment"]["device"])
    except (OSError, json.JSONDecodeError, KeyError, StopIteration) as e:
        raise ConfigError(
            f"--report {path}: not a saved `rmlora bench --output` file ({type(e).__name__}: {e})"
        ) from None
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = read_saved(args.report) if args.report else run_benchmark(args)
    if args.output:
        write_text(args.output, json.dumps(result, indent=1))
    print(json.dumps(result) if args.json else format_report(result))
    return 0
