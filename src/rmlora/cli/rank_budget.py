"""`rmlora rank-budget --base BASE --target TARGET`: the LoRA rank a fine-tune needs, from σ(W_target − W_base).

For every weight matrix LoRA would target: the singular values of E = W_target − W_base, the bound term
e(R) = σ_{R+1}(E) of Theorem 3.1 / Eq. 9 for each candidate R, the best relative error ‖E − E_R‖_F / ‖E‖_F
(Eckart–Young) and the smallest R reaching --max_error. With --adapter, how much of its nominal rank R a
trained LoRA adapter used: its ΔW's intrinsic rank r and the gap σ_{r+1}(E) − σ_{R+1}(E).
"""

from __future__ import annotations

import argparse
import os

from rmlora.analysis.rank_budget import DEFAULT_MAX_ERROR, DEFAULT_RANKS, RankBudget, rank_budget
from rmlora.errors import ConfigError
from rmlora.harness.plots.save import save_figure
from rmlora.harness.plots.theory import rank_budget_figure
from rmlora.io.atomic import write_text
from rmlora.lists import split_list

HELP = "σ_{R+1}(W_target − W_base) per layer: the LoRA rank a fine-tune needs (Theorem 3.1, Eq. 9)"

JSON_NAME = "rank_budget.json"
FIGURE_NAME = "rank_budget.png"


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def format_table(budget: RankBudget) -> str:
    ranks = budget.ranks
    err_cols = "".join(f" {'e_F(' + str(R) + ')':>9}" for R in ranks)
    header = (
        f"{'module':<48} {'d_out x d_in':>12} {'‖E‖_F':>9} {'‖E‖/‖W‖':>8} {'σ_1(E)':>9} {'rank':>5} "
        f"{'R@' + format(budget.max_error, 'g'):>6}{err_cols}"
    )
    lines = [
        "e_F(R) = ‖E − E_R‖_F / ‖E‖_F, the best relative error of a rank-R update (Eckart–Young); "
        f"R@{budget.max_error:g} = smallest R with e_F(R) ≤ {budget.max_error:g}",
        header,
        "-" * len(header),
    ]
    for m in budget.modules:
        rel_w = m.norm / m.base_norm if m.base_norm > 0 else float("inf")
        s1 = m.singular_values[0] if m.singular_values else 0.0
        errs = "".join(f" {e:>9.3f}" for e in m.relative_errors)
        lines.append(
            f"{_short(m.module, 48):<48} {f'{m.d_out}x{m.d_in}':>12} {m.norm:>9.3g} {rel_w:>8.3g} {s1:>9.3g} "
            f"{m.numerical_rank:>5} {m.rank_for_error:>6}{errs}"
        )
    s = budget.summary
    lines += ["", f"model summary ({s['num_modules']} matrices, ‖E‖_F over all = {s['total_norm']:.4g}):"]
    sub = (
        f"{'R':>5} {'Σ_l σ_{R+1}(E_l)':>17} {'e_F (model)':>12} {'max e_F':>8} "
        f"{'≤ ' + format(budget.max_error, 'g'):>7} {'LoRA params':>12}"
    )
    lines += [sub, "-" * len(sub)]
    for row in s["per_rank"]:
        lines.append(
            f"{row['rank']:>5} {row['sum_bound_terms']:>17.4g} {row['relative_error']:>12.3f} "
            f"{row['max_relative_error']:>8.3f} "
            f"{row['modules_within_max_error']:>3}/{s['num_modules']:<3} {row['lora_parameters']:>12,}"
        )
    lines.append(
        f"rank for e_F ≤ {budget.max_error:g}: every module needs R ≥ {s['uniform_rank_for_error']} "
        f"(median module: {s['median_rank_for_error']:g})"
    )
    if "adapter" in s:
        lines += ["", format_adapter_table(budget)]
    return "\n".join(lines)


def format_adapter_table(budget: RankBudget) -> str:
    header = (
        f"{'module':<48} {'R':>4} {'r':>4} {'σ_{r+1}(E)':>11} {'σ_{R+1}(E)':>11} {'gap':>9} "
        f"{'e_F(r)':>7} {'e_F(R)':>7} {'‖E−ΔW‖/‖E‖':>12}"
    )
    lines = [
        f"adapter {budget.adapter}: r = intrinsic rank of ΔW, gap = σ_{{r+1}}(E) − σ_{{R+1}}(E) "
        "(the budget left unused)",
        header,
        "-" * len(header),
    ]
    for m in budget.modules:
        a = m.adapter
        lines.append(
            f"{_short(m.module, 48):<48} {a.lora_rank:>4} {a.intrinsic_rank:>4} {a.sigma_r1:>11.4g} "
            f"{a.sigma_R1:>11.4g} "
            f"{a.gap:>9.3g} {a.error_r:>7.3f} {a.error_R:>7.3f} {a.delta_error:>12.3f}"
        )
    s = budget.summary["adapter"]
    lines.append(
        f"mean r {s['mean_intrinsic_rank']:.2f} of R {s['mean_lora_rank']:.2f} "
        f"(budget used {s['mean_budget_used']:.3f}); "
        f"Σσ_{{r+1}} {s['sum_sigma_r1']:.4g} vs Σσ_{{R+1}} {s['sum_sigma_R1']:.4g} (gap {s['sum_gap']:.4g}); "
        f"mean ‖E−ΔW‖/‖E‖ {s['mean_delta_error']:.3f}"
    )
    return "\n".join(lines)


def _ranks(value: str) -> list[int]:
    try:
        return [int(v) for v in split_list(value)]
    except ValueError:
        raise ConfigError(
            f"--ranks must be comma-separated integers, got {value!r}: e.g. --ranks 1,2,4,8,16,32"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmlora rank-budget", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the frozen model: a transformers model folder or hub id")
    parser.add_argument(
        "--target",
        required=True,
        help="the fine-tuned model of the same architecture (e.g. `rmlora train --method full` output)",
    )
    parser.add_argument("--ranks", default=",".join(map(str, DEFAULT_RANKS)), help="candidate LoRA ranks R")
    parser.add_argument(
        "--max_error",
        type=float,
        default=DEFAULT_MAX_ERROR,
        help="relative error ‖E − E_R‖_F / ‖E‖_F whose smallest R is reported per module",
    )
    parser.add_argument(
        "--target_modules",
        default=None,
        help="comma-separated module name suffixes (PEFT's target_modules rule); default every "
        "Linear/Conv1D inside a transformer block",
    )
    parser.add_argument(
        "--adapter",
        default=None,
        help="a PEFT LoRA adapter trained on --base: report its ΔW's intrinsic rank r and σ_{r+1}(E) − σ_{R+1}(E)",
    )
    parser.add_argument(
        "--rtol",
        type=float,
        default=None,
        help="relative tolerance of ΔW's numerical rank (σ_i > rtol·σ_max); default max(d_out, d_in)·eps(float32)",
    )
    parser.add_argument("--output_dir", default=None, help=f"write {JSON_NAME} and the figure {FIGURE_NAME} here")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)

    budget = rank_budget(
        args.base,
        args.target,
        ranks=_ranks(args.ranks),
        max_error=args.max_error,
        target_modules=args.target_modules,
        adapter=args.adapter,
        rtol=args.rtol,
    )
    written = []
    if args.output_dir:
        json_path, fig_path = os.path.join(args.output_dir, JSON_NAME), os.path.join(args.output_dir, FIGURE_NAME)
        write_text(json_path, budget.to_json())
        save_figure(rank_budget_figure(budget), os.path.splitext(fig_path)[0], formats=("png",), dpi=110)
        written = [json_path, fig_path]
    if args.json:
        print(budget.to_json())
    else:
        print(format_table(budget))
        if written:
            print(f"wrote {', '.join(written)}")
    return 0
