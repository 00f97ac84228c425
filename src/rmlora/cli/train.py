"""`rmlora train`: fine-tune a model on a task with one of the seven methods, run_glue.py-style flags.

    rmlora train --model_name_or_path MODEL --task_name rte --train_file train.tsv --validation_file dev.tsv \
        --method rm-lora --lora_r 8 --r_hat 4 --reg_weight 0.1 --output_dir out/ --num_train_epochs 5

Flags come from dataclasses through HfArgumentParser (rmlora.harness.arguments): ModelArguments and
DataArguments (rmlora.tasks), MethodArguments (RMLoraConfig's fields), LoraArguments, AdaLoraArguments,
SoraArguments and transformers' TrainingArguments. `rmlora train ARGS.json` reads them from a JSON file instead.

--seed is TrainingArguments' (data order, carving, subsets, initialisation); the direction draws of the
masks use the same seed unless --rmlora_seed sets another, so RMLoraConfig.seed = rmlora_seed or seed.

--output_dir receives the adapter (PEFT format) or, for full fine-tuning, the model; the tokenizer /
image processor; history.jsonl (one record per epoch, rmlora.training.history); diagnostics.json (ΔW
rank, orthogonality loss and singular values per module); and, last and atomically, metrics.json —
so metrics.json exists only for a run that finished (rmlora.harness.run).
"""

from __future__ import annotations

import sys

from rmlora.harness.arguments import build_parser
from rmlora.harness.run import train_and_summarize

HELP = "fine-tune a model on a GLUE / SQuAD / image / text task with RM-LoRA or a baseline (run_glue.py-style flags)"


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        build_parser().print_help()
        return 0
    return train_and_summarize(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
