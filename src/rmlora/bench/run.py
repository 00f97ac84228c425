"""The benchmark run: build every method, time them interleaved, measure memory and the hooks, add the optional
sections; returns one JSON-able result dict (printed by rmlora.bench.report, saved by `rmlora bench --output`)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict

import peft
import torch
import transformers

from rmlora.bench.arguments import ANCHOR, SHAPES, BenchArguments
from rmlora.bench.memory import peak_bytes
from rmlora.bench.models import build_base_model, make_batch, pair_shapes
from rmlora.bench.ratios import add_all_ratios
from rmlora.bench.selective import selective_backward_report
from rmlora.bench.step import Entry, build_entry
from rmlora.bench.timing import hooks_of, overhead_sweep, time_interleaved
from rmlora.methods.param_counts import trainable_count


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(args: BenchArguments) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
    }
    if args.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(args.device)
        env["cuda"] = torch.version.cuda
    return env


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def measure(entry: Entry, batch: dict, args: BenchArguments) -> dict:
    """One method's row, before the ratios: medians, peak memory, the hooks alone."""
    if not entry.available:
        return {"method": entry.name, "available": False, "reason": entry.error}
    persistent, extra = peak_bytes(entry, batch, args)
    return {
        "method": entry.name,
        "available": True,
        "median_step_s": statistics.median(entry.wall),
        "median_cpu_s": statistics.median(entry.cpu),
        "peak_mem_bytes": persistent + extra,
        "persistent_bytes": persistent,
        "step_extra_bytes": extra,
        "hooks_us": hooks_of(entry, batch, args),
        "trainable_params": trainable_count(entry.model),
        "step_s": entry.wall,
        "cpu_s": entry.cpu,
    }


def _build(args: BenchArguments, template: torch.nn.Module) -> list[Entry]:
    # every step any method will take, so that AdaLoRA's and SoRA's schedules stay in range
    total_steps = args.warmup + args.repeats + args.hook_iters + 2
    entries = []
    for name in args.method_names():
        entries.append(build_entry(name, template, args, total_steps))
        args.log(f"  built {name}" + ("" if entries[-1].available else f": unavailable ({entries[-1].error})"))
    return entries


def _rows(entries: list[Entry], batch: dict, args: BenchArguments) -> tuple[list[dict], float]:
    """Every method's row with its ratios, and PEFT LoRA's median step on the hooks' clock."""
    rows = []
    for entry in entries:
        rows.append(measure(entry, batch, args))
        args.log(f"  measured memory and hooks of {entry.name}")
    anchor = next(e for e in entries if e.name == ANCHOR)
    if not anchor.available:
        raise RuntimeError(f"plain PEFT LoRA, the anchor, failed: {anchor.error}")
    return rows, add_all_ratios(rows, args.device)


def _selective(args: BenchArguments, anchor_model: torch.nn.Module, anchor_step_s: float) -> dict:
    r_hat = int(args.r_hat) if args.r_hat >= 1 else max(1, round(args.r_hat * args.lora_r))
    tokens = args.batch_size * args.seq_len
    return selective_backward_report(pair_shapes(anchor_model), tokens, args.lora_r, r_hat, args.device, anchor_step_s)


def run_benchmark(args: BenchArguments) -> dict:
    """Build every method, time them interleaved, measure memory and the hooks; returns the result dict."""
    args = args.resolve()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    phases, started, load_start = {}, time.time(), load_average()
    args.log(
        f"rmlora bench: {args.model} x{args.layers} layers, batch {args.batch_size}x{args.seq_len}, "
        f"{len(args.method_names())} methods, {args.warmup}+{args.repeats} repetitions on {args.device}"
    )
    template = build_base_model(args.model, args.layers, args.seed).to(args.device)
    batch = make_batch(SHAPES[args.model].vocab, args.batch_size, args.seq_len, args.device, seed=args.seed + 1)
    entries = _build(args, template)
    phases["build"] = time.time() - started

    def phase(name: str, fn):
        t = time.time()
        out = fn()
        phases[name] = time.time() - t
        return out

    phase("timed_steps", lambda: time_interleaved(entries, batch, args))
    rows, anchor_step_s = phase("memory_and_hooks", lambda: _rows(entries, batch, args))
    result = {
        "benchmark": "step_time",
        "settings": asdict(args),
        "environment": environment(args),
        "load_average_start": load_start,
        "methods": rows,
    }
    if args.sweep:
        args.log("  overhead sweep")
        result["sweep"] = phase("sweep", lambda: overhead_sweep(args.device))
    if args.selective:
        args.log("  selected-directions-only backward")
        anchor_model = next(e.model for e in entries if e.name == ANCHOR)
        result["selective"] = phase("selective", lambda: _selective(args, anchor_model, anchor_step_s))
    result["load_average_end"] = load_average()
    result["phases_s"] = {k: round(v, 1) for k, v in phases.items()}
    result["wall_s"] = round(time.time() - started, 1)
    return result
