"""`rmlora bench`: training step time and peak memory of every method, side by side against plain PEFT LoRA."""

from __future__ import annotations

HELP = "step time and peak memory of every method against plain PEFT LoRA (interleaved, medians, ratios)"


def main(argv: list[str]) -> int:
    from rmlora.bench.benchmark import main as bench_main

    return bench_main(argv)
