"""Peak memory of one method: the bytes it holds between steps plus the largest extra allocation during a step.

On CUDA the extra allocation is torch.cuda.max_memory_allocated. On CPU torch keeps no such counter, so the
step runs under torch.profiler with profile_memory and the allocator's events are read back from the exported
Chrome trace, which lists every allocation and free with its time and size; buffers allocated inside oneDNN/MKL
are not seen there.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from rmlora.bench.arguments import BenchArguments
from rmlora.bench.step import Entry, train_step
from rmlora.bench.timing import sync


def unique_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (a storage shared by two tensors counts once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None or not torch.is_tensor(t) or t.device.type == "meta":
            continue
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def persistent_tensors(entry: Entry) -> list[torch.Tensor]:
    """What a method holds between steps: weights, buffers, and the state of every optimizer it owns."""
    tensors = list(entry.model.parameters()) + list(entry.model.buffers())
    optimizers = [entry.optimizer]
    if entry.method is not None:  # e.g. SoRA's gates have an AdamW of their own
        optimizers += [v for v in vars(entry.method).values() if isinstance(v, torch.optim.Optimizer)]
    for opt in optimizers:
        for state in opt.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
    return tensors


@contextlib.contextmanager
def _quiet_stderr():
    """Mute file descriptor 2: the profiler's C++ side logs every start and stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_live_bytes(trace_events: list[dict]) -> int:
    """Largest running total of the CPU allocator's allocations (+) and frees (−) in a Chrome trace, in time order.

    Frees of tensors made before the profiled call are not reported, which can only overstate the peak.
    """
    mem = sorted(
        (e["ts"], e["args"]["Bytes"])
        for e in trace_events
        if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0
    )
    live = peak = 0
    for _, nbytes in mem:
        live += nbytes
        peak = max(peak, live)
    return peak


def cpu_peak_extra_bytes(fn) -> int:
    """Largest total of CPU tensor bytes allocated by `fn()` and not yet freed, at any moment of its run."""
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    return peak_live_bytes(events)


def step_peak_bytes(entry: Entry, batch: dict, args: BenchArguments) -> int:
    """Largest extra allocation during one training step, over what was allocated when it started."""
    if args.device.startswith("cuda"):
        sync(args.device)
        torch.cuda.reset_peak_memory_stats(args.device)
        start = torch.cuda.memory_allocated(args.device)
        train_step(entry, batch, args)
        sync(args.device)
        return torch.cuda.max_memory_allocated(args.device) - start
    return cpu_peak_extra_bytes(lambda: train_step(entry, batch, args))


def peak_bytes(entry: Entry, batch: dict, args: BenchArguments) -> tuple[int, int]:
    """(persistent bytes, extra bytes of one step) of a method; its peak is their sum."""
    gc.collect()
    extra = step_peak_bytes(entry, batch, args)
    return unique_bytes(persistent_tensors(entry)), extra
