"""`rmlora report OUTPUT_DIR`: rebuild report.md and figures/ of a comparison, without training."""

from __future__ import annotations

import argparse

from rmlora.harness.report import write_report

HELP = "rebuild report.md and the figures of an `rmlora compare` folder from results.jsonl and the runs' histories"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rmlora report", description=__doc__)
    parser.add_argument("output_dir", help="the --output_dir of `rmlora compare` (holds results.jsonl and runs/)")
    parser.add_argument("--title", default="RM-LoRA comparison", help="first heading of report.md")
    args = parser.parse_args(argv)

    written = write_report(args.output_dir, title=args.title)
    print(written["report"])
    for path in written["figures"]:
        print(path)
    return 0
