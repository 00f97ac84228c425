"""Timing: whole training steps interleaved across methods, and the rmlora hooks timed alone.

Whole steps are timed on two clocks (wall and process CPU time). The hooks alone and the micro timings use
`clock(device)`: process CPU time on CPU, where other processes on the same cores stretch wall time but not the
work done; wall time after a sync on CUDA.
"""

from __future__ import annotations

import random
import statistics
import time

import torch

from rmlora.bench.arguments import BenchArguments
from rmlora.bench.models import synthetic_lora_model
from rmlora.bench.step import Entry, autocast, train_step
from rmlora.config import RMLoraConfig
from rmlora.core.rm_lora import RMLora


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def clock(device: str):
    return time.perf_counter if device.startswith("cuda") else time.process_time


def median_us(fn, iters: int, device: str) -> float:
    """Median µs of `fn()` over `iters` calls, on `clock(device)`."""
    times, now = [], clock(device)
    for _ in range(iters):
        sync(device)
        t = now()
        fn()
        sync(device)
        times.append(now() - t)
    return statistics.median(times) * 1e6


# -- whole steps ------------------------------------------------------------------------------------------------
def timed_step(entry: Entry, batch: dict, args: BenchArguments) -> tuple[float, float]:
    """(wall s, CPU s) of one training step."""
    sync(args.device)
    w0, c0 = time.perf_counter(), time.process_time()
    train_step(entry, batch, args)
    sync(args.device)
    return time.perf_counter() - w0, time.process_time() - c0


def time_interleaved(entries: list[Entry], batch: dict, args: BenchArguments) -> None:
    """warmup + repeats repetitions; in each, every available method steps once, in a shuffled order."""
    rng = random.Random(args.seed)
    for rep in range(args.warmup + args.repeats):
        order = [e for e in entries if e.available]
        rng.shuffle(order)
        for entry in order:
            try:
                wall, cpu = timed_step(entry, batch, args)
            except Exception as e:  # noqa: BLE001 -- e.g. a baseline that builds but cannot step
                entry.error = f"{type(e).__name__} in a training step: {e}"
                args.log(f"  {entry.name}: unavailable ({entry.error})")
                continue
            if rep >= args.warmup:
                entry.wall.append(wall)
                entry.cpu.append(cpu)
        if rep < args.warmup:
            args.log(f"  warm-up {rep + 1}/{args.warmup} done")
        else:
            times = ", ".join(f"{e.name} {e.wall[-1]:.3f}" for e in entries if e.available and e.wall)
            args.log(f"  repetition {rep + 1 - args.warmup}/{args.repeats} (s): {times}")


# -- the hooks alone ----------------------------------------------------------------------------------------------
def time_hooks(method, optimizer, step: int, iters: int, device: str) -> dict[str, float]:
    """Median µs of penalty (forward + backward), before_optimizer_step and after_optimizer_step.

    Runs on gradients a real backward left in place (the caller keeps them); the optimizer step between
    the hooks is not timed. Steps are numbered from `step` so that every iteration draws new directions.
    """
    parts: dict[str, list[float]] = {"penalty": [], "before": [], "after": []}
    now = clock(device)

    def penalty_forward_backward():
        pen = method.penalty()
        if pen.requires_grad:
            pen.backward()

    for s in range(step, step + iters):
        stages = [
            ("penalty", penalty_forward_backward),
            ("before", lambda s=s: method.before_optimizer_step(optimizer, s)),
            (None, optimizer.step),  # run, not timed
            ("after", lambda s=s: method.after_optimizer_step(optimizer, s)),
        ]
        for name, fn in stages:
            sync(device)
            t = now()
            fn()
            sync(device)
            if name is not None:
                parts[name].append(now() - t)
    out = {k: statistics.median(v) * 1e6 for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def hooks_of(entry: Entry, batch: dict, args: BenchArguments) -> dict[str, float]:
    """The hooks of one method timed alone on its own model (all 0 for plain PEFT LoRA, which has none)."""
    if entry.method is None:
        return {"penalty": 0.0, "before": 0.0, "after": 0.0, "total": 0.0}
    with autocast(args):
        loss = entry.model(**batch).loss
    loss.backward()  # real gradients for the masks to act on
    out = time_hooks(entry.method, entry.optimizer, entry.step, args.hook_iters, args.device)
    entry.step += args.hook_iters
    entry.model.zero_grad(set_to_none=True)
    return out


# -- how the overhead grows ---------------------------------------------------------------------------------------
def hooks_on_synthetic(num_pairs: int, d: int, rank: int, mask_mode: str, device: str, iters: int = 20) -> dict:
    """rm-lora's hooks alone on a synthetic model of `num_pairs` d x d LoRA pairs of rank `rank`."""
    model = synthetic_lora_model(num_pairs, d, d, rank, device)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    rm = RMLora(model, RMLoraConfig(method="rm-lora", mask_mode=mask_mode, r_hat=0.5, reg_form="squared"))
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    opt.step()  # create the optimizer state strict mode snapshots
    time_hooks(rm, opt, 0, 3, device)  # warm-up
    return time_hooks(rm, opt, 3, iters, device)


def overhead_sweep(device: str = "cpu", iters: int = 20) -> list[dict]:
    """rm-lora's hooks (µs per step) across #pairs and R at width 768, and across width at fixed #pairs·R²."""
    configs = [(48, 768, r) for r in (4, 8, 16, 32, 64)]
    configs += [(n, 768, 8) for n in (12, 24, 96, 192)]
    configs += [(48, d, 8) for d in (256, 2048, 4096)]
    rows = []
    for num_pairs, d, rank in configs:
        grad = hooks_on_synthetic(num_pairs, d, rank, "grad", device, iters)
        strict = hooks_on_synthetic(num_pairs, d, rank, "strict", device, iters)
        rows.append(
            {
                "pairs": num_pairs,
                "d": d,
                "R": rank,
                "pairs_R2": num_pairs * rank * rank,
                # Eq. 10's forward + closed-form backward: 4 R² (d_in + d_out) per pair
                "penalty_mflop": 4 * rank * rank * 2 * d * num_pairs / 1e6,
                "lora_params": num_pairs * rank * 2 * d,
                "penalty_us": grad["penalty"],
                "grad_mask_us": grad["before"],
                "strict_before_us": strict["before"],
                "strict_after_us": strict["after"],
                "rm_lora_grad_us": grad["total"],
                "rm_lora_strict_us": strict["total"],
            }
        )
    return rows
