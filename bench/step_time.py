"""Training step time and peak memory of every method against plain PEFT LoRA: `rmlora bench`, from a checkout.

    python bench/step_time.py                      # CPU default: GPT-2-small shape, batch 8 x 128
    python bench/step_time.py --model bert-base    # on a GPU: full depth, batch 16 x 512
    python bench/step_time.py --help

The logic lives in rmlora.bench (the command line in rmlora.cli.bench) so that the installed package has it;
results: docs/PERFORMANCE.md.
"""

import sys

from rmlora.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
