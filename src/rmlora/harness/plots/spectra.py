"""Figure: the singular value spectrum of ΔW per method, one panel per LoRA rank R.

Table 5 of the paper summarizes ΔW by two numbers, its numerical rank and ‖ΔWΔWᵀ − I‖²_F; the
spectrum behind both is σ_1 ≥ … ≥ σ_R. The orthogonality loss is Σ(σ_i² − 1)² + (d_out − R), so a
spectrum close to the dashed line σ = 1 is an orthogonal ΔW, and a spectrum that falls off early is a
ΔW of low effective rank.

One line per method: σ_i averaged over the adapted modules of a run (each module's values sorted
descending, padded with zeros up to the longest module — a direction SoRA or AdaLoRA pruned is a zero
singular value), then mean over seeds with the sample std shaded. Full fine-tuning has no low-rank ΔW
and is not drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rmlora.harness.aggregate import mean_std
from rmlora.harness.plots.save import save_figure


def run_spectrum(diagnostics: dict) -> np.ndarray:
    """σ_i of ΔW averaged over the modules of one run's diagnostics.json (length: the longest module)."""
    rows = [
        sorted((float(s) for s in m.get("singular_values") or []), reverse=True) for m in diagnostics.get("modules", [])
    ]
    rows = [r for r in rows if r]
    if not rows:
        return np.zeros(0)
    width = max(len(r) for r in rows)
    padded = np.zeros((len(rows), width))
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
    return padded.mean(axis=0)


def mean_spectrum(spectra: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean and sample std (ddof = 1) over seeds of per-run spectra; std is None for one run."""
    width = max(len(s) for s in spectra)
    stats = [mean_std(float(s[i]) if i < len(s) else 0.0 for s in spectra) for i in range(width)]
    mean = np.array([s.mean for s in stats])
    std = None if len(spectra) < 2 else np.array([s.std for s in stats])
    return mean, std


def spectra_figure(runs: Sequence[tuple[str, int | None, dict]], labels: dict[str, str] | None = None) -> Figure | None:
    """The matplotlib Figure of `runs` = [(method, R, diagnostics dict), ...], or None if none has a spectrum.

    `labels` maps a method to its legend name (default: the method). Runs without singular values
    (full fine-tuning) are left out.
    """
    grouped: dict[int, dict[str, list[np.ndarray]]] = {}
    for method, rank, diagnostics in runs:
        spectrum = run_spectrum(diagnostics or {})
        if rank is None or spectrum.size == 0:
            continue
        grouped.setdefault(int(rank), {}).setdefault(method, []).append(spectrum)
    if not grouped:
        return None
    ranks = sorted(grouped)
    fig = Figure(figsize=(4.2 * len(ranks), 3.6), layout="constrained")
    axes = fig.subplots(1, len(ranks), squeeze=False)[0]
    for ax, rank in zip(axes, ranks):
        for method, spectra in grouped[rank].items():
            mean, std = mean_spectrum(spectra)
            index = np.arange(1, len(mean) + 1)
            shown = mean > 0  # a zero singular value has no place on a log axis
            label = (labels or {}).get(method, method)
            (line,) = ax.plot(index[shown], mean[shown], marker="o", markersize=3, label=f"{label} (n={len(spectra)})")
            if std is not None and shown.any():
                floor = mean[shown].min() * 1e-3  # keep the shaded band on the log axis
                low = np.clip(mean - std, floor, None)
                ax.fill_between(index[shown], low[shown], (mean + std)[shown], color=line.get_color(), alpha=0.2)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="σ = 1 (ΔWΔWᵀ = I)")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"R = {rank}")
        ax.set_xlabel("index i")
        ax.set_ylabel("singular value σ_i of ΔW")
        ax.legend(fontsize=7)
    fig.suptitle("Spectrum of ΔW (mean over modules; mean ± std over seeds)", fontsize=10)
    return fig


def plot_spectra(
    runs: Sequence[tuple[str, int | None, dict]], path_without_ext: str, labels: dict[str, str] | None = None
) -> list[str]:
    """Write spectra_figure(runs) as .png and .svg; returns the files written ([] if no run has a spectrum)."""
    fig = spectra_figure(runs, labels)
    return [] if fig is None else save_figure(fig, path_without_ext, bbox_inches="tight")
