"""The tables `rmlora bench` prints from a result dict (a fresh run or a saved --output file)."""

from __future__ import annotations


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _range(pair) -> str:
    return "{:.3f}-{:.3f}".format(*tuple(pair))


def _header(result: dict) -> list[str]:
    s, env = result["settings"], result["environment"]
    where = f" ({env['gpu']}, CUDA {env['cuda']})" if "gpu" in env else f" ({env['cpu']}, {env['cpu_count']} cores)"
    return [
        f"rmlora bench: {s['model']} shape, {s['layers']} layers, batch {s['batch_size']} x {s['seq_len']}, "
        f"LoRA R={s['lora_r']}, r̂={s['r_hat']}, {s['optim']}{', bf16 autocast' if s['bf16'] else ''}, "
        f"{s['warmup']} warm-up + {s['repeats']} timed repetitions (interleaved)",
        f"device {env['device']}{where}, torch threads {env['torch_threads']}, torch {env['torch']}, "
        f"transformers {env['transformers']}, peft {env['peft']}",
        f"load average (1, 5, 15 min) at start {result['load_average_start']}, at end {result['load_average_end']}; "
        f"run took {result['wall_s']} s",
        "",
    ]


def _methods_table(result: dict) -> list[str]:
    header = (
        f"{'method':<16} {'step s':>8} {'ratio':>6} {'95% CI':>13} {'cpu s':>8} {'cpu ratio':>9} {'95% CI':>13} "
        f"{'peak MiB':>9} {'mem ratio':>9} {'hooks µs':>9} {'hooks %':>8} {'trainable':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in result["methods"]:
        if not r["available"]:
            lines.append(f"{r['method']:<16} unavailable: {r['reason']}")
            continue
        lines.append(
            f"{r['method']:<16} {r['median_step_s']:>8.4f} {r['ratio_to_peft_lora']:>6.3f} "
            f"{_range(r['ratio_ci95']):>13} "
            f"{r['median_cpu_s']:>8.4f} {r['cpu_ratio_to_peft_lora']:>9.3f} {_range(r['cpu_ratio_ci95']):>13} "
            f"{_mib(r['peak_mem_bytes']):>9} {r['mem_ratio_to_peft_lora']:>9.4f} {r['hooks_us']['total']:>9.0f} "
            f"{100 * r['hooks_share_of_peft_lora_step']:>7.2f}% {r['trainable_params']:>11,}"
        )
    clock = "wall" if result["environment"]["device"].startswith("cuda") else "CPU"
    return lines + [
        "",
        "ratio: median over repetitions of (step time / PEFT LoRA's step time in the same repetition); 95% CI: "
        "bootstrap interval of that median. hooks: penalty fwd+bwd + before/after the optimizer step, timed alone "
        f"({clock} time), as a % of PEFT LoRA's median step on the same clock.",
        "peak: weights (incl. the shared frozen base) + buffers + optimizer state + largest extra allocation "
        "in a step.",
    ]


def _hooks_table(result: dict) -> list[str]:
    rows = [r for r in result["methods"] if r["available"] and r["hooks_us"]["total"] > 0]
    if not rows:
        return []
    lines = ["", f"{'hooks µs/step':<16} {'penalty':>9} {'before':>9} {'after':>9} {'total':>9}"]
    for r in rows:
        h = r["hooks_us"]
        cells = f"{h['penalty']:>9.0f} {h['before']:>9.0f} {h['after']:>9.0f} {h['total']:>9.0f}"
        lines.append(f"{r['method']:<16} {cells}")
    return lines


def _sweep_table(sweep: list[dict]) -> list[str]:
    lines = [
        "",
        "rm-lora hooks on synthetic models (µs per step; r̂ = R/2; d_in = d_out = d; one shape group)",
        f"{'pairs':>5} {'d':>5} {'R':>3} {'pairs·R²':>9} {'pen MFLOP':>9} {'penalty':>8} {'grad mask':>9} "
        f"{'strict bef':>10} {'strict aft':>10} {'rm grad':>8} {'rm strict':>9}",
    ]
    for r in sweep:
        lines.append(
            f"{r['pairs']:>5} {r['d']:>5} {r['R']:>3} {r['pairs_R2']:>9} {r['penalty_mflop']:>9.1f} "
            f"{r['penalty_us']:>8.0f} {r['grad_mask_us']:>9.0f} {r['strict_before_us']:>10.0f} "
            f"{r['strict_after_us']:>10.0f} {r['rm_lora_grad_us']:>8.0f} {r['rm_lora_strict_us']:>9.0f}"
        )
    return lines


def _selective_table(sel: dict) -> list[str]:
    lines = [
        "",
        "GM-LoRA: one LoRA branch's backward (µs): PEFT's autograd + masking, the closed form over all R "
        "directions, and over the r̂ selected ones only",
        f"{'pairs':>5} {'tokens':>6} {'d_in':>5} {'d_out':>5} {'R':>3} {'r̂':>3} {'autograd':>9} {'all R':>8} "
        f"{'r̂ only':>8} {'saving':>8}",
    ]
    for r in sel["shapes"]:
        lines.append(
            f"{r['pairs']:>5} {r['tokens']:>6} {r['d_in']:>5} {r['d_out']:>5} {r['R']:>3} {r['r_hat']:>3} "
            f"{r['autograd_backward_us']:>9.0f} {r['all_directions_backward_us']:>8.0f} "
            f"{r['selected_backward_us']:>8.0f} {r['saving_us']:>8.0f}"
        )
    lines.append(
        f"per step: LoRA branches' backward {sel['autograd_backward_us_per_step'] / 1e3:.1f} ms with autograd, "
        f"{sel['all_directions_backward_us_per_step'] / 1e3:.1f} ms in closed form; selecting r̂ saves "
        f"{sel['saving_us_per_step'] / 1e3:.1f} ms = {100 * sel['saving_share_of_peft_lora_step']:.2f}% "
        "of PEFT LoRA's step"
    )
    return lines


def format_report(result: dict) -> str:
    lines = _header(result) + _methods_table(result) + _hooks_table(result)
    if "sweep" in result:
        lines += _sweep_table(result["sweep"])
    if "selective" in result:
        lines += _selective_table(result["selective"])
    return "\n".join(lines)
