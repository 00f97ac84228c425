"""The paper's Figure 1 layout from history.jsonl records: test loss, test accuracy, train accuracy and
generalization error against epoch, one line per method (mean over seeds with a ±1 std band).

    plot_curves({"LoRA": history, "RM-LoRA": other}, "out/curves")          # one run per label
    plot_curves({"LoRA": [seed0, seed1, seed2], ...}, "out/curves")         # several seeds per label

writes out/curves.png and out/curves.svg. The panels use the test split when the records have one
(test_loss, test_<metric>, test_generalization_error), else the validation split (eval_*); the metric is
accuracy when recorded, else the first metric found (e.g. f1 for SQuAD, pearson for STS-B).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rmlora.harness.plots.save import save_figure

_NOT_METRICS = ("loss", "generalization_error", "runtime", "samples_per_second", "steps_per_second")


def _runs(value) -> list[list[dict]]:
    """A label's value as a list of runs: one history (list of records) or several."""
    if value and isinstance(value[0], dict):
        return [list(value)]
    return [list(run) for run in value if run]


def _metric_and_split(runs: Sequence[Sequence[dict]], metric: str | None) -> tuple[str, str]:
    keys = {k for run in runs for record in run for k in record}
    split = "test" if any(k.startswith("test_") and k != "test_generalization_error" for k in keys) else "eval"
    if metric is None:
        names = sorted(k[len(split) + 1 :] for k in keys if k.startswith(split + "_") and not k.endswith(_NOT_METRICS))
        metric = "accuracy" if "accuracy" in names else (names[0] if names else "accuracy")
    return metric, split


def _series(runs: Sequence[Sequence[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, std) of `key` over runs, records matched on their epoch rounded to 2 digits."""
    by_epoch: dict[float, list[float]] = {}
    for run in runs:
        for record in run:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "epoch" in record:
                by_epoch.setdefault(round(float(record["epoch"]), 2), []).append(float(value))
    epochs = np.array(sorted(by_epoch))
    means = np.array([np.mean(by_epoch[e]) for e in epochs])
    stds = np.array([np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else 0.0 for e in epochs])
    return epochs, means, stds


def plot_curves(
    histories: dict, path_without_ext: str, metric: str | None = None, title: str | None = None
) -> list[str]:
    """Draw the four panels for every label of `histories` and write PNG and SVG; returns the paths."""
    return save_figure(curves_figure(histories, metric, title), path_without_ext)


def curves_figure(histories: dict, metric: str | None = None, title: str | None = None) -> Figure:
    """The matplotlib Figure of plot_curves: four panels, one line (and ±1 std band) per label."""
    runs_by_label = {label: _runs(value) for label, value in histories.items()}
    all_runs = [run for runs in runs_by_label.values() for run in runs]
    metric, split = _metric_and_split(all_runs, metric)
    where = "test" if split == "test" else "validation"
    gen_key = "test_generalization_error" if split == "test" else "generalization_error"
    panels = [
        (f"{split}_loss", f"{where} loss", "loss"),
        (f"{split}_{metric}", f"{where} {metric}", metric),
        (f"train_{metric}", f"train {metric} (fixed train subset)", metric),
        (gen_key, f"generalization error (train − {where} {metric})", f"train {metric} − {where} {metric}"),
    ]
    # matplotlib's default cycle repeats after 10 colours: a 13-line grid (5 methods x 3 ranks) would draw two
    # labels alike, so larger figures take tab20's 20 colours
    palette = (
        matplotlib.colormaps["tab20"].colors
        if len(runs_by_label) > 10
        else matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    )
    colors = {name: palette[i % len(palette)] for i, name in enumerate(runs_by_label)}
    fig = Figure(figsize=(18, 4.2))
    axes = fig.subplots(1, 4)
    for ax, (key, label, ylabel) in zip(axes, panels):
        for name, runs in runs_by_label.items():
            epochs, mean, std = _series(runs, key)
            if not len(epochs):
                continue
            (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=name, color=colors[name])
            if np.any(std > 0):
                ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        for ax in axes[1:]:
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                break
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95 if title else 1))
    return fig
