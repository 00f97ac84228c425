"""report.md in the paper's table layouts, and the figures, from a comparison's results.jsonl.

- Table 1 layout (classification, regression): Method | # T / I params | seeds | one column per metric.
- Table 2/3 layout (extractive QA, when the metrics are exact_match and f1): Method | # T / I rank |
  # T / I params | seeds | EM | F1.
- Table 5 layout: Method | rank of ΔW | orthogonality loss of ΔW | the primary metric.

Cells are "mean ± sample std over seeds" (ddof = 1; one seed shows the mean alone) and the best value
of each column, as the table shows it, is in bold. Rows: full fine-tuning, then each rank R ascending
with the methods in the paper's order. The metrics are those of the test split when every run has
one, else those of the validation split, and the headers say which.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

from rmlora.config import METHODS
from rmlora.errors import DataError
from rmlora.harness.aggregate import (
    Stat,
    best_rows,
    group_by,
    higher_is_better,
    metric_names,
    metric_stat,
    split_of,
    summary_stat,
)
from rmlora.harness.labels import method_name
from rmlora.harness.plots.curves import plot_curves
from rmlora.harness.plots.spectra import plot_spectra
from rmlora.harness.selection import report_records
from rmlora.io.atomic import write_text
from rmlora.io.run_files import (
    FIGURES_DIR,
    HISTORY_NAME,
    REPORT_NAME,
    RESULTS_NAME,
    RUNS_DIR,
    read_diagnostics,
    read_history,
    read_results,
)
from rmlora.methods.param_counts import format_count as paper_count

METRIC_LABELS = {
    "accuracy": "Acc",
    "matthews_correlation": "MCC",
    "pearson": "Pearson",
    "spearmanr": "Spearman",
    "spearman": "Spearman",
    "f1": "F1",
    "exact_match": "EM",
    "loss": "Loss",
}
SPLIT_LABELS = {"test": "test", "eval": "validation"}


def method_label(method: str, rank: int | None = None, ranks: dict | None = None) -> str:
    """ "RM-LoRA R=8"; AdaLoRA and SoRA, placed in the block of the R they prune towards, show the rank
    they train at: "AdaLoRA R=16→8", "SoRA R=16" (`ranks`: {"trainable", "inference"} of the cell)."""
    label = method_name(method)
    if rank is None or method == "full":
        return label
    trained, kept = (ranks or {}).get("trainable"), (ranks or {}).get("inference")
    if method == "adalora" and trained and kept:
        return f"{label} R={trained}→{kept}"
    if method == "sora" and trained:
        return f"{label} R={trained}"
    return f"{label} R={rank}"


def row_label(key: tuple, runs: Sequence[dict]) -> str:
    method, rank, variant = key
    label = method_label(method, rank, runs[0].get("ranks"))
    if variant:  # a PEFT variant (PiSSA, DoRA, LoRA+ ...): rmlora.harness.labels.variant_name
        label = f"{label} + {variant}"
    setting = runs[0].get("selected_setting")  # chosen on validation (rmlora.harness.selection)
    return f"{label} ({setting})" if setting else label


def metric_label(name: str, split: str | None = None) -> str:
    label = METRIC_LABELS.get(name, name)
    return f"{label} ({SPLIT_LABELS.get(split, split)})" if split else label


def format_count(n: float | None) -> str:
    """A parameter count as the paper writes it (184M, 1.26M, 670K); a mean over seeds is rounded first."""
    if n is None or not math.isfinite(n):
        return "N/A"
    return paper_count(int(round(n)))


def decimals_for(means: Sequence[float]) -> int:
    """3 decimals for metrics in [0, 1] (the paper's GLUE table), 2 for percentages and larger values."""
    finite = [abs(m) for m in means if m is not None and math.isfinite(m)]
    return 3 if finite and max(finite) <= 1.0 else 2


def format_stat(stat: Stat, digits: int, with_std: bool = True) -> str:
    if stat.n == 0:
        return "—"
    text = f"{stat.mean:.{digits}f}"
    if with_std and stat.std is not None:
        text += f" ± {stat.std:.{digits}f}"
    return text


def format_value(value: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.0f}" if float(value).is_integer() and digits == 0 else f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _bold(text: str, on: bool) -> str:
    return f"**{text}**" if on and text != "—" else text


def _row_order(key: tuple) -> tuple:
    method, rank, variant = key
    order = METHODS.index(method) if method in METHODS else len(METHODS)
    return (method != "full", rank if rank is not None else -1, order, method, variant or "")


def rows_of(records: Sequence[dict]) -> list[tuple[tuple, list[dict]]]:
    """(method, rank, variant name) groups of the seeds of each cell, in table order."""
    keys = ("method", "rank", "variant_name")
    return sorted(group_by(records, keys).items(), key=lambda item: _row_order(item[0]))


def _param_counts(runs: Sequence[dict]) -> str:
    # SoRA's inference count depends on how many gates a seed pruned: the mean over seeds
    t = [(r.get("param_counts") or {}).get("trainable") for r in runs]
    i = [(r.get("param_counts") or {}).get("inference") for r in runs]
    mean = lambda xs: None if any(x is None for x in xs) else sum(xs) / len(xs)  # noqa: E731
    return f"{format_count(mean(t))} / {format_count(mean(i))}"


def _seed_count(runs: Sequence[dict]) -> str:
    return str(len({r.get("seed") for r in runs}))


def _metric_columns(rows, split: str, names: Sequence[str]) -> list[list[str]]:
    """The formatted, best-marked cells of one column per metric name."""
    columns = []
    for name in names:
        stats = [metric_stat(runs, split, name) for _, runs in rows]
        digits = decimals_for([s.mean for s in stats])
        best = best_rows([s.mean for s in stats], higher_is_better(name), digits)
        columns.append([_bold(format_stat(s, digits), i in best) for i, s in enumerate(stats)])
    return columns


def _trained_ranks(key: tuple, runs: Sequence[dict]) -> str:
    """ "# T / I rank" of Tables 2/3: the rank trained and the rank kept at inference."""
    method, rank = key[:2]
    if method == "full" or rank is None:
        return "N/A / N/A"
    r0 = runs[0]
    ranks = r0.get("ranks") or {}
    trained = ranks.get("trainable", rank)
    kept = ranks.get("inference", rank)
    return f"{format_value(trained, 0)} / {format_value(kept, 0)}"


def is_qa(names: Sequence[str]) -> bool:
    return "exact_match" in names and "f1" in names


def table1(records: Sequence[dict]) -> str:
    split = split_of(records)
    names = metric_names(records, split)
    rows = rows_of(records)
    columns = _metric_columns(rows, split, names)
    headers = ["Method", "# T / I params", "seeds"] + [metric_label(n, split) for n in names]
    body = [
        [row_label(key, runs), _param_counts(runs), _seed_count(runs)] + [col[i] for col in columns]
        for i, (key, runs) in enumerate(rows)
    ]
    return markdown_table(headers, body)


def table_qa(records: Sequence[dict]) -> str:
    split = split_of(records)
    names = ["exact_match", "f1"]
    rows = rows_of(records)
    columns = _metric_columns(rows, split, names)
    headers = ["Method", "# T / I rank", "# T / I params", "seeds"] + [metric_label(n, split) for n in names]
    body = [
        [row_label(key, runs), _trained_ranks(key, runs), _param_counts(runs), _seed_count(runs)]
        + [col[i] for col in columns]
        for i, (key, runs) in enumerate(rows)
    ]
    return markdown_table(headers, body)


def primary_metric(records: Sequence[dict], split: str) -> str:
    """The task's primary metric without its split prefix (the first metric if none is recorded)."""
    for r in records:
        name = r.get("primary_metric")
        if name:
            return re.sub(r"^(eval|test)_", "", name)
    names = metric_names(records, split)
    if not names:
        raise DataError("the results hold no task metric to report: were the runs evaluated?")
    return names[0]


def table5(records: Sequence[dict]) -> str | None:
    """Rank and orthogonality loss of ΔW beside the primary metric; None if no run has diagnostics."""
    with_delta = [r for r in records if (r.get("diagnostics") or {}).get("mean_rank") is not None]
    if not with_delta:
        return None
    split = split_of(records)
    name = primary_metric(records, split)
    rows = rows_of(with_delta)
    ranks = [summary_stat(runs, "mean_rank") for _, runs in rows]
    losses = [summary_stat(runs, "mean_orthogonality_loss") for _, runs in rows]
    (metric_column,) = _metric_columns(rows, split, [name])
    rank_digits = 0 if all(s.mean.is_integer() for s in ranks if s.n) else 1
    best_rank = best_rows([s.mean for s in ranks], True, rank_digits)
    best_loss = best_rows([s.mean for s in losses], False, 3)
    headers = ["Method", "Rank of ΔW", "Orthogonality loss of ΔW", f"{metric_label(name, split)} (mean ± std)"]
    body = [
        [
            row_label(key, runs),
            _bold(format_value(ranks[i].mean, rank_digits), i in best_rank),
            _bold(format_value(losses[i].mean, 3), i in best_loss),
            metric_column[i],
        ]
        for i, (key, runs) in enumerate(rows)
    ]
    return markdown_table(headers, body)


def _describe(records: Sequence[dict]) -> str:
    split = split_of(records)
    seeds = sorted({r.get("seed") for r in records}, key=str)
    ranks = sorted({r.get("rank") for r in records if r.get("rank") is not None})
    methods = [m for m in METHODS if any(r.get("method") == m for r in records)]
    where = (
        "Metrics are on the **test** split."
        if split == "test"
        else "The runs have no separate test split: metrics are on the **validation** split."
    )
    return (
        f"{len(records)} finished runs: methods {', '.join(methods) or '—'}; ranks R = "
        f"{', '.join(map(str, ranks)) or '—'}; seeds {', '.join(map(str, seeds))}. {where} "
        "Cells are mean ± sample std (ddof = 1) over seeds; **bold** is the best of its column. "
        "# T / I params: trainable during training / kept at inference. Rank and orthogonality loss of "
        "ΔW are means over the adapted modules (numerical rank; ‖ΔWΔWᵀ − I‖²_F), then over seeds."
    )


def render(
    records: Sequence[dict], figures: dict[str, Sequence[str]] | None = None, title: str = "RM-LoRA comparison"
) -> str:
    """The whole report.md: per (task, model), the tables and links to the figures.

    `figures` maps a section key "task|model" to figure paths relative to the report.
    """
    if not records:
        raise DataError("no finished runs to report: results.jsonl is empty or missing")
    parts = [f"# {title}", ""]
    for (task, model), runs in group_by(records, ("task", "model")).items():
        parts += [f"## {task or 'task'} — `{model or 'model'}`", "", _describe(runs), ""]
        names = metric_names(runs, split_of(runs))
        if is_qa(names):
            parts += ["### EM / F1 (layout of Tables 2 and 3)", "", table_qa(runs), ""]
        else:
            parts += ["### Task metrics (layout of Table 1)", "", table1(runs), ""]
        t5 = table5(runs)
        if t5:
            parts += ["### ΔW rank and orthogonality (layout of Table 5)", "", t5, ""]
        shown = (figures or {}).get(f"{task}|{model}", [])
        if shown:
            parts += ["### Figures", ""]
            parts += [f"![{os.path.splitext(os.path.basename(p))[0]}]({p})" for p in shown]
            parts.append("")
    return "\n".join(parts)


# -- from a comparison folder -------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def write_report(output_dir: str, title: str = "RM-LoRA comparison") -> dict:
    """Rebuild report.md and figures/ of a comparison folder from results.jsonl and the runs' files.

    Returns {"report": path, "figures": [paths], "notes": [lines]}.
    """
    results = read_results(os.path.join(output_dir, RESULTS_NAME))
    records = list(results.by_cell().values())
    if not records:
        raise DataError(f"{output_dir} has no finished runs in {RESULTS_NAME}: run `rmlora compare` first")
    records, selection = report_records(output_dir, records)
    notes = list(results.skipped) + selection
    sections = group_by(records, ("task", "model"))
    figures_by_section: dict[str, list[str]] = {}
    written: list[str] = []
    for (task, model), runs in sections.items():
        suffix = "" if len(sections) == 1 else f"-{_slug(task)}-{_slug(os.path.basename(str(model)))}"
        base = os.path.join(output_dir, FIGURES_DIR)
        files, section_notes = _figures(output_dir, runs, base, suffix)
        notes += section_notes
        written += files
        figures_by_section[f"{task}|{model}"] = [os.path.relpath(p, output_dir) for p in files if p.endswith(".png")]
    text = render(records, figures_by_section, title)
    if notes:
        text += "\n## Notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    path = os.path.join(output_dir, REPORT_NAME)
    write_text(path, text)
    return {"report": path, "figures": written, "notes": notes}


def _run_dir(output_dir: str, record: dict) -> str:
    return os.path.join(output_dir, record.get("run_dir") or os.path.join(RUNS_DIR, record["cell"]))


def _figures(output_dir: str, runs: Sequence[dict], base: str, suffix: str) -> tuple[list[str], list[str]]:
    notes: list[str] = []
    histories: dict[str, list[list[dict]]] = {}
    rank_of_label: dict[str, int | None] = {}
    spectra_runs = []
    for key, seeds in rows_of(runs):
        method, rank = key[:2]
        label = row_label(key, seeds)
        rank_of_label[label] = rank
        for record in seeds:
            run_dir = _run_dir(output_dir, record)
            history = read_history(run_dir)
            if history:
                histories.setdefault(label, []).append(history)
            else:
                missing = os.path.join(record.get("run_dir", ""), HISTORY_NAME)
                notes.append(f"{record['cell']}: no {missing}; left out of the curves")
            if method != "full":
                diagnostics = read_diagnostics(run_dir)
                if diagnostics:
                    spectra_runs.append((label, rank, diagnostics))  # one panel per R, one line per row label
    files: list[str] = []
    if histories:
        files += plot_curves(histories, os.path.join(base, f"curves{suffix}"))
        ranks = sorted({r for r in rank_of_label.values() if r is not None})
        if len(ranks) > 1:  # one figure per R as well (rank-free rows such as full FT in each): easier to read
            for r in ranks:
                subset = {label: h for label, h in histories.items() if rank_of_label[label] in (r, None)}
                files += plot_curves(subset, os.path.join(base, f"curves{suffix}-R{r}"), title=f"R = {r}")
    files += plot_spectra(spectra_runs, os.path.join(base, f"spectra{suffix}"))
    return files, notes
