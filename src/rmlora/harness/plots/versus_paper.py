"""Ours against the paper's numbers: one point per table cell (x: the paper's value, y: ours, with the seed std as
an error bar), the diagonal y = x, one marker per method; cells the paper has no number for are left out.

    versus_paper_figure([("RM-LoRA R=8", "rm-lora", "CoLA Mcc", 0.688, 0.61, 0.01), ...], title="Table 1")
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

MARKERS = {"full": "s", "lora": "o", "adalora": "^", "sora": "v", "r-lora": "D", "gm-lora": "P", "rm-lora": "*"}

Point = tuple[str, str, str, float, float, float | None]  # row label, method, column label, paper, ours, ours' std


def versus_paper_figure(points: Sequence[Point], title: str, ours_label: str = "ours") -> Figure | None:
    points = [p for p in points if p[3] is not None and p[4] is not None]
    if not points:
        return None
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot()
    for method in dict.fromkeys(p[1] for p in points):
        mine = [p for p in points if p[1] == method]
        ax.errorbar(
            [p[3] for p in mine],
            [p[4] for p in mine],
            yerr=[p[5] or 0.0 for p in mine],
            fmt=MARKERS.get(method, "o"),
            ms=6,
            alpha=0.8,
            label=method,
            capsize=2,
        )
    lo = min(min(p[3] for p in points), min(p[4] for p in points))
    hi = max(max(p[3] for p in points), max(p[4] for p in points))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="ours = paper")
    ax.set_xlabel("paper")
    ax.set_ylabel(ours_label)
    ax.set_title(f"{title}: every cell, ours against the paper")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
