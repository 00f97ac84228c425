"""The map's report (layout `map`): per task and training-set size, every method variant against LoRA, with intervals.

For each (task, size) and protocol ("own": the variant's own validated settings; "drop-in": LoRA's validated lr and
α, the variant's defaults), a row per variant with: test accuracy, mean and 95 % t-interval over seeds; the paired
difference to LoRA (the same seed, hence the same training subset and validation carve) with its 95 % t-interval;
win / tie / loss (the paired interval above 0 / containing 0 / below 0); the effective rank of ΔW (mean over
modules, then seeds). A summary counts wins, ties and losses per variant over every (task, size). The figure plots
accuracy against training examples per class, a line and a 95 % band per variant, a panel per task.

The intervals are Student t intervals (scipy.stats.t) on n seeds: with n = 5 the half-width is 2.78 × std / √5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure
from scipy import stats

from rmlora.harness.aggregate import split_of
from rmlora.harness.plots.save import save_figure
from rmlora.recipes.format import Recipe, Row

BASELINE = "lora"  # the variant every other is paired with


@dataclass
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return None
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    sem = stats.sem(values)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sem)
    return Interval(mean, mean - half, mean + half, n)


def verdict(diff: Interval | None) -> str:
    if diff is None or diff.n < 2 or math.isnan(diff.low):
        return "—"
    if diff.low > 0:
        return "win"
    if diff.high < 0:
        return "loss"
    return "tie"


def _metric(record: dict) -> float | None:
    split = split_of([record])
    name = (record.get("primary_metric") or "accuracy").removeprefix("eval_").removeprefix("test_")
    return (record.get("metrics") or {}).get(f"{split}_{name}")


def _by_seed(records: Sequence[dict], task: str, row: str) -> dict[int, dict]:
    return {r["seed"]: r for r in records if r.get("recipe_task") == task and r.get("row") == row}


def _fmt(iv: Interval | None, scale: float = 100.0, signed: bool = False) -> str:
    if iv is None:
        return "—"
    sign = "+" if signed else ""
    text = f"{iv.mean * scale:{sign}.1f}"
    return text if math.isnan(iv.low) else f"{text} ± {iv.half * scale:.1f}"


def ordered_tasks(recipe: Recipe) -> list:
    """Tasks by panel, then by training-set size as a number (wordnet_50 before wordnet_200)."""

    def key(task):
        size = task.size.value if task.size is not None else None
        return (task.panel or task.id, float(size) if isinstance(size, (int, float)) else math.inf, task.id)

    return sorted(recipe.tasks.values(), key=key)


def _baseline_row(recipe: Recipe) -> Row | None:
    return next((r for r in recipe.rows if (r.variant or r.id) == BASELINE and r.protocol == "own"), None)


def cell_stats(recipe: Recipe, records: Sequence[dict], task: str, row: Row) -> dict:
    """Accuracy, paired difference to LoRA, verdict and effective rank of one row on one task."""
    base = _baseline_row(recipe)
    mine = _by_seed(records, task, row.id)
    theirs = _by_seed(records, task, base.id) if base else {}
    acc = t_interval([_metric(r) for r in mine.values()])
    diff = None
    if base is not None and row.id != base.id:
        diff = t_interval([_metric(mine[s]) - _metric(theirs[s]) for s in mine if s in theirs])
    ranks = [(r.get("diagnostics") or {}).get("mean_effective_rank") for r in mine.values()]
    ranks = [x for x in ranks if x is not None]
    if not mine:
        state = "not run yet"
    elif diff is None and base is not None and row.id == base.id:
        state = "(baseline)"
    else:
        state = verdict(diff)
    return {
        "acc": acc,
        "diff": diff,
        "verdict": state,
        "eff_rank": sum(ranks) / len(ranks) if ranks else None,
        "seeds": len(mine),
    }


def map_tables(recipe: Recipe, records: Sequence[dict]) -> tuple[str, dict]:
    """The markdown of every (task, protocol) table and the win / tie / loss summary; and the stats for the figure."""
    parts, summary, figure = [], {}, {}
    waiting = []
    for task in ordered_tasks(recipe):
        if not any(r.get("recipe_task") == task.id for r in records):
            waiting.append(task.label)
            continue
        for protocol in ("own", "drop-in"):
            rows = [r for r in recipe.rows_of(task.id) if r.protocol == protocol or (r.variant or r.id) == BASELINE]
            if protocol == "drop-in" and len(rows) <= 1:
                continue
            title = "own validated settings" if protocol == "own" else "drop-in swap at LoRA's validated lr and α"
            parts += [f"### {task.label}: {title}", ""]
            parts += [
                "| variant | seeds | test acc % (95 % CI) | − LoRA, paired (95 % CI) | vs LoRA | eff. rank ΔW "
                "| chosen |",
                "|---|---:|---:|---:|---|---:|---|",
            ]
            for row in rows:
                s = cell_stats(recipe, records, task.id, row)
                chosen = _chosen_text(records, task.id, row.id)
                rank = "—" if s["eff_rank"] is None else f"{s['eff_rank']:.2f}"
                parts.append(
                    f"| {row.label} | {s['seeds']} | {_fmt(s['acc'])} | {_fmt(s['diff'], signed=True)} | "
                    f"{s['verdict']} | {rank} | {chosen} |"
                )
                key = (row.variant or row.id, protocol if (row.variant or row.id) != BASELINE else "own")
                if s["verdict"] in ("win", "tie", "loss"):
                    summary.setdefault(key, {"win": 0, "tie": 0, "loss": 0})[s["verdict"]] += 1
                if task.panel and task.size is not None and s["acc"] is not None:
                    figure.setdefault((protocol, task.panel), {}).setdefault(
                        row.label.split(" (drop-in")[0], []
                    ).append((float(task.size.value), s["acc"], s["diff"]))
            parts.append("")
    lines = ["| variant | protocol | wins | ties | losses |", "|---|---|---:|---:|---:|"]
    labels = {(r.variant or r.id): r.label.split(" (drop-in")[0] for r in recipe.rows if r.protocol != "own"}
    labels.update({(r.variant or r.id): r.label for r in recipe.rows if r.protocol == "own"})
    for (variant, protocol), counts in sorted(summary.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(
            f"| {labels.get(variant, variant)} | {protocol} | {counts['win']} | {counts['tie']} | {counts['loss']} |"
        )
    if waiting:
        parts += ["### Not run yet (no finished final-stage run)", "", *[f"- {label}" for label in waiting], ""]
    matrix = map_matrix(recipe, records)
    head = ["## Wins, ties and losses against LoRA (paired 95 % CI)", "", *lines, ""]
    return "\n".join([*head, matrix, *parts] if matrix else [*head, *parts]), figure


MARKS = {"win": "▲", "loss": "▼", "tie": ""}


def map_matrix(recipe: Recipe, records: Sequence[dict]) -> str:
    """The map at a glance, per protocol: a row per variant, a column per task and size that has run, each cell the
    paired difference to LoRA in points with its 95 % half-width, ▲ a win and ▼ a loss; LoRA's row is its accuracy."""
    tasks = [t for t in ordered_tasks(recipe) if any(r.get("recipe_task") == t.id for r in records)]
    if not tasks:
        return ""
    heads = [f"{t.panel or t.id} {t.size.value}" if t.size is not None else t.id for t in tasks]
    parts = []
    for protocol in ("own", "drop-in"):
        rows = [r for r in recipe.rows if r.protocol == protocol or (r.variant or r.id) == BASELINE]
        if protocol == "drop-in" and len(rows) <= 1:
            continue
        title = "own validated settings" if protocol == "own" else "drop-in at LoRA's validated lr and α"
        parts += [f"### The map, {title} (points against LoRA, paired 95 % CI; ▲ win, ▼ loss)", ""]
        parts += ["| variant | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(tasks)]
        for row in rows:
            cells = []
            for task in tasks:
                if row not in recipe.rows_of(task.id):
                    cells.append("n/a")
                    continue
                st = cell_stats(recipe, records, task.id, row)
                if st["verdict"] == "(baseline)":
                    cells.append(f"{_fmt(st['acc'])} %")
                elif st["diff"] is None or st["verdict"] == "not run yet":
                    cells.append("—")
                else:
                    cells.append(f"{_fmt(st['diff'], signed=True)} {MARKS.get(st['verdict'], '')}".strip())
            parts.append(f"| {row.label.split(' (drop-in')[0]} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def _chosen_text(records: Sequence[dict], task: str, row: str) -> str:
    """The values a row's final cells ran with that came from stage tune (their train flags say it)."""
    mine = [r for r in records if r.get("recipe_task") == task and r.get("row") == row]
    if not mine:
        return ""
    return ", ".join(f"{k}={v}" for k, v in (mine[0].get("chosen") or {}).items())


def _band(ax, points, which: int, label: str, emphasis: bool):
    """A line through the means and a band over the 95 % intervals of `points` (size, acc, diff), in points."""
    points = sorted((p for p in points if p[which] is not None), key=lambda p: p[0])
    if not points:
        return
    x = [p[0] for p in points]
    iv = [p[which] for p in points]
    y = [v.mean * 100 for v in iv]
    low = [(v.low if not math.isnan(v.low) else v.mean) * 100 for v in iv]
    high = [(v.high if not math.isnan(v.high) else v.mean) * 100 for v in iv]
    (line,) = ax.plot(x, y, marker="o", ms=3, lw=1.8 if emphasis else 1.0, label=label)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.12)


def map_figure(figure: dict, protocol: str) -> Figure | None:
    """Top row: test accuracy against training examples per class; bottom row: the paired difference to LoRA (zero
    line dashed), where the variants' gaps are visible. A panel per task, a line and 95 % band per variant."""
    panels = sorted({panel for (p, panel) in figure if p == protocol})
    if not panels:
        return None
    fig = Figure(figsize=(5.0 * len(panels), 7.6))
    axes = fig.subplots(2, len(panels), squeeze=False)
    for column, panel in enumerate(panels):
        series = figure[(protocol, panel)]
        if protocol == "drop-in" and ("own", panel) in figure:  # LoRA, the reference line, comes from "own"
            series = {**{k: v for k, v in figure[("own", panel)].items() if k == "LoRA"}, **series}
        top, bottom = axes[0][column], axes[1][column]
        for label, points in series.items():
            _band(top, points, 1, label, label == "LoRA")
            if label == "LoRA":
                bottom.plot([], [])  # keep each variant's colour the same in both rows
            else:
                _band(bottom, points, 2, label, False)
        bottom.axhline(0.0, color="black", lw=0.8, ls="--")
        sizes = sorted({p[0] for points in series.values() for p in points})
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
        top.set_title(panel)
        top.set_ylabel("test accuracy (%)")
        bottom.set_ylabel("− LoRA, paired (points)")
        bottom.set_xlabel("training examples per class")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    what = "each variant at its own validated settings" if protocol == "own" else "drop-in at LoRA's lr and α"
    fig.suptitle(f"Accuracy against training-set size, {what} (mean, 95 % CI over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def write_map_figures(figure: dict, base: str) -> list[str]:
    files = []
    for protocol in ("own", "drop-in"):
        fig = map_figure(figure, protocol)
        if fig is not None:
            files += save_figure(fig, f"{base}-{protocol}")
    return files
