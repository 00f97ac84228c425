"""The figures of `rmlora rank-budget` and `rmlora synthetic` (docs/THEORY.md).

Drawn with matplotlib's Figure API (no pyplot state, no backend switch) and written by
rmlora.harness.plots.save.save_figure, like every figure of the project.
"""

from __future__ import annotations

import os

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from rmlora.analysis.rank_budget import RankBudget
from rmlora.analysis.synthetic import SyntheticResult
from rmlora.harness.labels import method_name

SYNTHETIC_COLORS = {"lora": "tab:blue", "r-lora": "tab:orange", "gm-lora": "tab:purple", "rm-lora": "tab:red"}


# -- rank-budget ---------------------------------------------------------------------------------------------------
def rank_budget_figure(budget: RankBudget):
    """Per layer type: the best relative error ‖E − E_R‖_F / ‖E‖_F and σ_{R+1}(E)/σ_1(E) against R."""
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (kind, mods) in enumerate(sorted(budget.by_layer_type().items())):
        color = colors[i % len(colors)]
        k = min(len(m.singular_values) for m in mods)
        R = np.arange(0, k + 1)
        errs = np.stack([m.relative_error_curve()[: k + 1] for m in mods])
        axes[0].plot(R, errs.mean(0), color=color, label=f"{kind} ({len(mods)})")
        axes[0].fill_between(R, errs.min(0), errs.max(0), color=color, alpha=0.15, linewidth=0)
        # σ_{R+1}/σ_1 for R = 0 … k−1 (0-based σ[R] is σ_{R+1})
        ratio = np.stack(
            [np.asarray(m.singular_values[:k]) / m.singular_values[0] for m in mods if m.singular_values[0] > 0]
        )
        axes[1].plot(R[:-1], ratio.mean(0), color=color)
    k_max = max(len(m.singular_values) for m in budget.modules)
    ticks = [0] + [R for R in budget.ranks if R <= k_max] + ([k_max] if k_max not in budget.ranks else [])
    for ax in axes:
        for R in budget.ranks:
            ax.axvline(R, color="0.85", linewidth=0.6, zorder=0)
        # linear from 0 to 1, logarithmic beyond: R = 0 (no adapter) and R up to min(d_out, d_in) on one axis
        ax.set_xscale("symlog", linthresh=1, linscale=0.4)
        ax.set_xlim(0, k_max)
        ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("LoRA rank R")
    axes[0].axhline(budget.max_error, color="0.4", linestyle=":", linewidth=1)
    axes[0].set(ylabel="‖E − E_R‖_F / ‖E‖_F", ylim=(0, 1.02), title="best relative error of a rank-R update")
    axes[1].set(yscale="log", ylabel="σ_{R+1}(E) / σ_1(E)", title="bound term e(R) of Eq. 9")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(
        f"E = W_target − W_base: {os.path.basename(os.path.normpath(budget.target))} vs "
        f"{os.path.basename(os.path.normpath(budget.base))} (mean, min–max over layers)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


# -- synthetic -----------------------------------------------------------------------------------------------------
def _relative_panel(ax, rows: list[dict], methods, R) -> None:
    """(a) everything relative to R = 0 (no adapter, f0)."""
    ax.plot(R, [r["sum_bound_terms_relative"] for r in rows], "k--", marker="s", ms=3, label="Σ_l σ_{R+1}(Ē_l) (Eq. 9)")
    ax.plot(R, [r["eq8_bound_relative"] for r in rows], color="0.5", ls=":", marker="^", ms=3, label="Eq. 8 bound")
    ax.plot(
        R,
        [r["construction_error_relative"] for r in rows],
        color="tab:green",
        marker="o",
        ms=3,
        label="truncated-SVD adapters",
    )
    for m in methods:
        label = f"{method_name(m)} (trained)"
        ax.plot(R, [r[m]["error_relative"] for r in rows], color=SYNTHETIC_COLORS[m], marker="o", ms=3, label=label)
    ax.set(xscale="log", yscale="log", xlabel="LoRA rank R", ylabel="relative to R = 0 (f0)")
    ax.set_title("error and bound terms, relative")
    ax.legend(fontsize=7)
    # at R = D every curve but the trained ones is exactly 0: keep the log axes on the trained errors' scale
    ax.set_ylim(bottom=0.3 * min(r[m]["error_relative"] for r in rows for m in methods))


def _error_panel(ax, rows: list[dict], methods, R) -> None:
    """(b) achieved errors, mean ± sample std over seeds (no bars for one seed)."""
    construction = [r["construction_error"] for r in rows]
    ax.plot(R, construction, color="tab:green", marker="o", ms=3, label="truncated-SVD adapters")
    for m in methods:
        mean = np.array([r[m]["error"] for r in rows])
        stds = [r[m]["error_std"] for r in rows]
        std = None if any(s is None for s in stds) else np.array(stds)
        color = SYNTHETIC_COLORS[m]
        ax.errorbar(R, mean, yerr=std, color=color, marker="o", ms=3, capsize=2, label=method_name(m))
    ax.axhline(rows[0]["f0_error"], color="0.6", linestyle=":", linewidth=1, label="f0 (no adapter)")
    ax.set(xscale="log", yscale="log", xlabel="LoRA rank R", ylabel="E‖f(x) − f̄(x)‖₂", title="achieved error")
    ax.legend(fontsize=7)
    ax.set_ylim(bottom=0.3 * min(r[m]["error"] for r in rows for m in methods))


def _rank_panel(ax, rows: list[dict], methods, R) -> None:
    """(c) intrinsic (numerical) and effective rank of ΔW."""
    ax.plot(R, R, color="0.7", linestyle="--", label="r = R")
    for m in methods:
        color, name = SYNTHETIC_COLORS[m], method_name(m)
        numerical = [r[m]["intrinsic_rank"] for r in rows]
        effective = [r[m]["effective_rank"] for r in rows]
        ax.plot(R, numerical, color=color, marker="o", ms=3, label=f"{name} numerical rank")
        ax.plot(R, effective, color=color, marker="x", ms=4, linestyle=":", label=f"{name} effective rank")
    ax.set(xscale="log", yscale="log", xlabel="LoRA rank R", ylabel="rank of ΔW (mean over layers)")
    ax.set_title("intrinsic rank reached")
    ax.legend(fontsize=7)
    ax.set_yticks(R, [str(r) for r in R])


def synthetic_figure(result: SyntheticResult):
    """(a) everything relative to R = 0 (no adapter); (b) achieved errors; (c) intrinsic rank of ΔW."""
    cfg = result.config
    rows = result.summary()
    R = np.array([row["rank"] for row in rows])
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    _relative_panel(axes[0], rows, cfg.methods, R)
    _error_panel(axes[1], rows, cfg.methods, R)
    _rank_panel(axes[2], rows, cfg.methods, R)
    for ax in axes:
        ax.set_xticks(R, [str(r) for r in R])
        ax.minorticks_off()
    fig.suptitle(
        f"Zeng & Lee setting: D={cfg.width}, L=L̄={cfg.depth}, σ_i(Ē_l) ∝ {cfg.decay:g}^(i−1), {cfg.steps} steps, "
        f"{cfg.seeds} seed(s)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
