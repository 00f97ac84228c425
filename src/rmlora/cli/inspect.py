"""`rmlora inspect ADAPTER_DIR`: rank, orthogonality loss and spectra of a saved LoRA adapter's ΔW."""

from __future__ import annotations

import argparse
import json

from rmlora.analysis.diagnostics import diagnose_adapter

HELP = "rank, orthogonality loss and spectrum of ΔW per module of a saved LoRA adapter"


def format_table(diag) -> str:
    header = (
        f"{'module':<60} {'d_out x d_in':>13} {'R':>4} {'rank':>5} {'orth loss':>11} {'eff rank':>9} {'stable':>7} "
        f"{'σ_max':>9}"
    )
    lines = [header, "-" * len(header)]
    for m in diag.modules:
        name = m.module if len(m.module) <= 60 else "…" + m.module[-59:]
        smax = m.singular_values[0] if m.singular_values else 0.0
        lines.append(
            f"{name:<60} {f'{m.d_out}x{m.d_in}':>13} {m.lora_rank:>4} {m.rank:>5} {m.orthogonality_loss:>11.4g} "
            f"{m.effective_rank:>9.3f} {m.stable_rank:>7.3f} {smax:>9.3g}"
        )
    s = diag.summary
    lines.append("")
    lines.append(
        f"{s['num_modules']} modules: mean rank {s['mean_rank']:.2f} of R {s['mean_lora_rank']:.2f} "
        f"(ratio {s['mean_rank_ratio']:.3f}), mean orthogonality loss {s['mean_orthogonality_loss']:.4g}, "
        f"mean effective rank {s['mean_effective_rank']:.3f}, mean stable rank {s['mean_stable_rank']:.3f}"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rmlora inspect", description=__doc__)
    parser.add_argument("adapter_dir", help="folder with adapter_config.json and adapter_model.safetensors")
    parser.add_argument("--json", action="store_true", help="print one JSON object: {modules: [...], summary: {...}}")
    parser.add_argument(
        "--rtol",
        type=float,
        default=None,
        help="relative tolerance of the numerical rank (σ_i > rtol·σ_max); default max(d_out, d_in)·eps(float32)",
    )
    args = parser.parse_args(argv)
    diag = diagnose_adapter(args.adapter_dir, rtol=args.rtol)
    if args.json:
        print(json.dumps(diag.to_dict(), indent=2))
    else:
        print(format_table(diag))
    return 0
