"""A/B of the rm-lora hooks: this checkout's rmlora against another copy of the package, in one process.

    mkdir -p build/old && git archive a23607a src/rmlora | tar -x -C build/old --strip-components=1
    python bench/hooks_ab.py --other build/old --layers 4

Both RMLora objects drive the same GPT-2-small-shaped PEFT model and optimizer, alternately, step by
step; the medians are of process CPU time (the machine may be shared). The optimizer step between the
hooks is timed too, as a yardstick.
"""

import argparse
import importlib
import statistics
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from torch.profiler import profile

import rmlora
from rmlora.bench.models import build_base_model


def _take_rmlora_modules() -> dict:
    """Remove rmlora and its submodules from sys.modules and return them."""
    taken = {k: m for k, m in sys.modules.items() if k == "rmlora" or k.startswith("rmlora.")}
    for k in taken:
        del sys.modules[k]
    return taken


def load_package(path: str):
    """The rmlora package in path/rmlora, imported as a module tree of its own.

    Its modules import each other as `rmlora.…`, so it is imported with this checkout's rmlora modules set
    aside, and its own are set aside afterwards: its objects keep their own module globals. (An import inside
    one of its functions, run later, would find this checkout's modules.)
    """
    mine = _take_rmlora_modules()
    sys.path.insert(0, path)
    try:
        return importlib.import_module("rmlora")
    finally:
        sys.path.remove(path)
        _take_rmlora_modules()
        sys.modules.update(mine)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", required=True, help="a folder holding another rmlora package (FOLDER/rmlora)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument(
        "--count_ops",
        action="store_true",
        help="also count the top-level aten operator calls of one step's hooks (a proxy for GPU kernel launches)",
    )
    return parser.parse_args()


def time_mode(rms: dict, params, opt, mode: str, iters: int) -> None:
    """Print the median µs of each copy's hooks, stepping the copies alternately on the same model."""
    times = {k: [] for k in rms}
    for step in range(iters + 5):
        for k, rm in rms.items():
            for p in params:
                p.grad = torch.randn_like(p)
            t0 = time.process_time()
            rm.penalty().backward()
            t1 = time.process_time()
            rm.before_optimizer_step(opt, step)
            t2 = time.process_time()
            opt.step()
            t3 = time.process_time()
            rm.after_optimizer_step(opt, step)
            t4 = time.process_time()
            if step >= 5:
                times[k].append((t1 - t0, t2 - t1, t4 - t3, t3 - t2))
    for k, rows in times.items():
        pen, before, after, step_s = (statistics.median(x) * 1e6 for x in zip(*rows))
        print(f"{mode:<7} {k:<6} {pen:>8.0f} {before:>8.0f} {after:>8.0f} {pen + before + after:>8.0f} {step_s:>9.0f}")


def print_op_counts(rms: dict, opt, mode: str, step: int) -> None:
    for k, rm in rms.items():
        ops = [
            count_ops(lambda rm=rm, step=step: (rm.penalty().backward(), rm.before_optimizer_step(opt, step))),
            count_ops(opt.step),
            count_ops(lambda rm=rm, step=step: rm.after_optimizer_step(opt, step)),
        ]
        print(f"{mode:<7} {k:<6} top-level aten calls: penalty + before {ops[0]}, after {ops[2]} (opt.step {ops[1]})")
        step += 1


def main() -> int:
    args = parse_args()
    torch.set_num_threads(1)
    impls = {"other": load_package(args.other), "this": rmlora}
    model = get_peft_model(
        build_base_model("gpt2-small", args.layers),
        LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    print(f"gpt2-small shape, {args.layers} layers, R=8, r̂=4; median µs of process CPU time over {args.iters} steps")
    print(f"{'mode':<7} {'rmlora':<6} {'penalty':>8} {'before':>8} {'after':>8} {'total':>8} {'opt.step':>9}")
    for mode in ("grad", "strict"):
        rms = {k: v.RMLora(model, v.RMLoraConfig(method="rm-lora", mask_mode=mode)) for k, v in impls.items()}
        time_mode(rms, params, opt, mode, args.iters)
        if args.count_ops:
            print_op_counts(rms, opt, mode, args.iters + 10)
    return 0


def count_ops(fn) -> int:
    """aten operators called by fn() that are not called from inside another aten operator."""
    with profile() as prof:
        fn()
    return sum(
        1
        for e in prof.events()
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )


if __name__ == "__main__":
    sys.exit(main())
