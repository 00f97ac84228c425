"""A/B of the rm-lora hooks: this checkout's rmlora against another copy of the package, in one process.

    mkdir -p /tmp/old && git archive a23607a src/rmlora | tar -x -C /tmp/old --strip-components=1
    python bench/hooks_ab.py --other /tmp/old --layers 4

Both RMLora objects drive the same GPT-2-small-shaped PEFT model and optimizer, alternately, step by
step; the medians are of process CPU time (the machine may be shared). The optimizer step between the
hooks is timed too, as a yardstick.
"""

import argparse
import importlib.util
import statistics
import sys
import time

import torch


def load_package(path: str, name: str):
    spec = importlib.util.spec_from_file_location(
        name, f"{path}/rmlora/__init__.py", submodule_search_locations=[f"{path}/rmlora"]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", required=True, help="a folder holding another rmlora package (FOLDER/rmlora)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument(
        "--count_ops",
        action="store_true",
        help="also count the top-level aten operator calls of one step's hooks (a proxy for GPU kernel launches)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    from peft import LoraConfig, get_peft_model

    import rmlora
    from rmlora.bench.benchmark import build_base_model

    impls = {"other": load_package(args.other, "rmlora_other"), "this": rmlora}
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
        times = {k: [] for k in rms}
        for step in range(args.iters + 5):
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
            print(
                f"{mode:<7} {k:<6} {pen:>8.0f} {before:>8.0f} {after:>8.0f} {pen + before + after:>8.0f} {step_s:>9.0f}"
            )
        if args.count_ops:
            step = args.iters + 10
            for k, rm in rms.items():
                ops = [
                    count_ops(lambda: (rm.penalty().backward(), rm.before_optimizer_step(opt, step))),
                    count_ops(lambda: opt.step()),
                    count_ops(lambda: rm.after_optimizer_step(opt, step)),
                ]
                print(
                    f"{mode:<7} {k:<6} top-level aten calls: penalty + before {ops[0]}, after {ops[2]} (opt.step {ops[1]})"
                )
                step += 1
    return 0


def count_ops(fn) -> int:
    """aten operators called by fn() that are not called from inside another aten operator."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sum(
        1
        for e in prof.events()
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )


if __name__ == "__main__":
    sys.exit(main())
